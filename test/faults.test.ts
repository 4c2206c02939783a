// What survives what: the real CLI in child processes under SIGKILL, a second run into a used output_dir, two
// concurrent runs and divergence; the reference cache keyed by the tokenization; and corrupt files and flags,
// each of which must end in one line and a non-zero exit, never a stack, a hang or a silently wrong number.
import { spawn, spawnSync } from 'node:child_process'
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { readHeader, readTensor } from '../src/checkpoint/safetensors.ts'
import { openWeights } from '../src/checkpoint/hf.ts'
import { loadRecipe } from '../src/recipe.ts'
import { initModel, loadModel, loadWeightsInto, savePretrained } from '../src/model/weights.ts'
import { parseConfig } from '../src/model/config.ts'
import { Rng } from '../src/rng.ts'
import { checkTemplate, loadTokenizer } from '../src/model/tokenizer.ts'
import { evaluatePairs } from '../src/commands/eval.ts'
import { sample } from '../src/commands/sample.ts'
import { TRAIN_SCHEMA } from '../src/train/schema.ts'
import { train } from '../src/train/loop.ts'
import { explainAbort } from '../src/errors.ts'
import { FIXTURES, ROOT, rejects, tmp } from './helpers.ts'
import { TINY_CONFIG, tinyRun, useBackend } from './tfjs-helpers.ts'

test.before(async () => {
  await useBackend('wasm')
})
await useBackend('wasm')
const { work, policyDir, dataDir, base } = await tinyRun()
const recipe = (...o: string[]) => loadRecipe('tiny', TRAIN_SCHEMA, o)
const CLI = ['--import', 'tsx', join(ROOT, 'src', 'cli.ts')]
const cli = (args: string[]) => spawnSync(process.execPath, [...CLI, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 })
const cliTrain = (out: string, ...more: string[]) => ['train', '--recipe', 'tiny', '--backend', 'wasm', ...base(out, ...more)]
/** one line on stderr, naming what is wrong, and a failing exit: never a stack */
function oneLine(r: { status: number | null; stderr: string }, pattern: RegExp): void {
  assert.is.not(r.status, 0, r.stderr)
  const lines = r.stderr.trim().split('\n').filter((l) => l.startsWith('align: '))
  assert.is(lines.length, 1, r.stderr)
  assert.match(lines[0]!, pattern)
  assert.not.match(r.stderr, /\n\s+at /, 'no stack trace')
}
const files = (dir: string) => readdirSync(dir).sort().map((f) => [f, statSync(join(dir, f)).mtimeMs])

test('SIGKILL mid-run: every checkpoint-N left is complete, dead temp dirs are cleaned, resume ends bit-exact', async () => {
  const full = join(work, 'kill-full')
  assert.is(cli(cliTrain(full, 'dpo.max_steps=6', 'dpo.save_steps=1', 'dpo.eval_steps=0')).status, 0)
  const out = join(work, 'kill')
  const child = spawn(process.execPath, [...CLI, ...cliTrain(out, 'dpo.max_steps=6', 'dpo.save_steps=1', 'dpo.eval_steps=0')], { cwd: ROOT, stdio: 'ignore' })
  for (let i = 0; i < 1200 && !existsSync(join(out, 'checkpoint-2')); i++) await new Promise((r) => setTimeout(r, 25))
  child.kill('SIGKILL')
  await new Promise((r) => child.on('exit', r))
  mkdirSync(join(out, '.checkpoint-9.tmp-999999'), { recursive: true }) // what a save killed mid-write leaves
  for (const c of readdirSync(out).filter((f) => /^checkpoint-\d+$/.test(f))) {
    for (const f of ['trainer_state.json', 'model.safetensors', 'optimizer.safetensors']) assert.ok(existsSync(join(out, c, f)), `${c}/${f}`)
  }
  const r = cli([...cliTrain(out, 'dpo.max_steps=6', 'dpo.save_steps=1', 'dpo.eval_steps=0'), '--resume', 'latest'])
  assert.is(r.status, 0, r.stderr)
  assert.match(r.stderr, /removed \.checkpoint-9\.tmp-999999, left by a save that was killed/)
  assert.not.ok(readdirSync(out).some((f) => f.includes('.tmp-')))
  assert.ok(readFileSync(join(out, 'model.safetensors')).equals(readFileSync(join(full, 'model.safetensors'))), 'final weights bit-exact')
})

test('a fresh run into a used output_dir is refused with its files untouched; overwrite_output_dir replaces it', () => {
  const out = join(work, 'kill-full')
  const before = files(out)
  oneLine(cli(cliTrain(out, 'dpo.max_steps=6')), /already holds a run \(checkpoint-5, checkpoint-6, model\.safetensors, .*--resume latest.*overwrite_output_dir=true/)
  assert.equal(files(out), before)
  const r = cli(cliTrain(out, 'dpo.max_steps=1', 'dpo.overwrite_output_dir=true'))
  assert.is(r.status, 0, r.stderr)
  assert.equal(readdirSync(out).filter((f) => f.startsWith('checkpoint-')), ['checkpoint-1'])
  assert.is(readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').filter((l) => l.includes('"loss"')).length, 1)
})

test('two runs on one output_dir at once: exactly one is refused, naming the other', async () => {
  const out = join(work, 'twice')
  // long runs, so that the winner still holds the directory whenever the loser gets to it (a short run could end
  // first and leave a finished run, refused with another message); the winner is stopped with Ctrl-C after it
  const runs = [0, 1].map(() => {
    const child = spawn(process.execPath, [...CLI, ...cliTrain(out, 'dpo.max_steps=100000', 'dpo.save_steps=0', 'dpo.eval_steps=0')], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (d) => (stderr += d))
    return { child, done: new Promise<{ code: number | null; stderr: string }>((res) => child.on('exit', (code) => res({ code, stderr }))) }
  })
  const neither = new Promise<{ code: string; stderr: string; i: number }>((res) => setTimeout(() => res({ code: 'none refused within 120 s', stderr: '', i: -1 }), 120_000).unref())
  const loser = await Promise.race([...runs.map((r, i) => r.done.then((x) => ({ ...x, i }))), neither])
  if (loser.i < 0) for (const r of runs) r.child.kill('SIGKILL')
  assert.is(loser.code, 1, loser.stderr)
  assert.match(loser.stderr, /being written by another align run \(pid \d+/)
  const winner = runs[1 - loser.i]!
  const metrics = join(out, 'metrics.jsonl') // Ctrl-C once it trains (before the loop a signal exits at once, saving nothing)
  for (let i = 0; i < 600 && !(existsSync(metrics) && readFileSync(metrics, 'utf8').trim().length > 0); i++) await new Promise((r) => setTimeout(r, 100))
  winner.child.kill('SIGINT')
  const w = await winner.done
  assert.is(w.code, 130, w.stderr)
  assert.not.ok(existsSync(join(out, '.align.lock')), 'the lock is released')
})

test('divergence: a non-zero exit and every saved tensor finite (weights and optimizer moments)', () => {
  const out = join(work, 'diverge')
  oneLine(cli(cliTrain(out, 'dpo.learning_rate=1e38', 'dpo.warmup_ratio=0', 'dpo.save_steps=1', 'dpo.max_grad_norm=0', 'dpo.max_steps=6')), /(loss|grad_norm) is (NaN|-?Infinity) at step \d+|hold NaN\/Inf after step \d+/)
  for (const c of readdirSync(out).filter((f) => f.startsWith('checkpoint-'))) {
    for (const f of ['model.safetensors', 'optimizer.safetensors']) {
      const h = readHeader(join(out, c, f))
      for (const name of h.tensors.keys()) assert.ok(readTensor(h, name).every(Number.isFinite), `${c}/${f} ${name}`)
    }
  }
  oneLine(cli(cliTrain(join(work, 'beta2'), 'dpo.adam_beta2=1')), /dpo\.adam_beta2: expected a number < 1, got 1/)
  oneLine(cli(cliTrain(join(work, 'eps'), 'dpo.adam_epsilon=0')), /dpo\.adam_epsilon: expected a number > 0/)
})

test('the reference cache is keyed by the tokenization: a new chat template gives step-1 loss ln 2', async () => {
  const tokDir = join(work, 'tok-other-template')
  cpSync(policyDir, tokDir, { recursive: true })
  const cfg = JSON.parse(readFileSync(join(tokDir, 'tokenizer_config.json'), 'utf8'))
  writeFileSync(join(tokDir, 'tokenizer_config.json'), JSON.stringify({ ...cfg, chat_template: "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}" }))
  for (const [name, tok] of [['a', policyDir], ['b', tokDir]] as const) {
    const r = await train({ stage: 'dpo', recipe: recipe(...base(join(work, `cache-${name}`), `model.tokenizer=${tok}`, 'dpo.max_steps=1')), quiet: true })
    assert.ok(Math.abs(r.logHistory[0]!.loss! - Math.LN2) < 1e-6, `${name}: step-1 loss ${r.logHistory[0]!.loss}`)
  }
})

test('corrupt checkpoints: one clear error each, nothing read as weights', async () => {
  const st = (header: unknown, data = Buffer.alloc(0)) => {
    const dir = tmp()
    const json = Buffer.from(JSON.stringify(header))
    const len = Buffer.alloc(8)
    len.writeBigUInt64LE(BigInt(json.length))
    writeFileSync(join(dir, 'model.safetensors'), Buffer.concat([len, json, data]))
    return join(dir, 'model.safetensors')
  }
  await rejects(() => readHeader(st(null)), /corrupt safetensors header \(not a JSON object\)/)
  await rejects(() => readHeader(st({ w: null })), /tensor w has header entry null/)
  await rejects(() => readHeader(st({ w: { dtype: 'F32', shape: 4, data_offsets: [0, 16] } }, Buffer.alloc(16))), /tensor w has shape 4, not a list/)
  await rejects(() => readHeader(st({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, Buffer.alloc(12))), /tensor b starts at data offset 4 but the previous tensor ends at 8 .*overlap/)
  await rejects(() => readHeader(st({ a: { dtype: 'F32', shape: [2], data_offsets: [-8, 0] } }, Buffer.alloc(8))), /data_offsets \[-8,0\]/)
  await rejects(() => readHeader(st({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, Buffer.alloc(12))), /8 bytes after the last tensor belong to none/)
  // a config with fewer layers than the weights: the extra tensors are an error, never silently ignored
  const fewer = tmp()
  copyFileSync(join(policyDir, 'model.safetensors'), join(fewer, 'model.safetensors'))
  writeFileSync(join(fewer, 'config.json'), JSON.stringify({ ...JSON.parse(readFileSync(join(FIXTURES, 'tiny-llama-random', 'config.json'), 'utf8')) }))
  copyFileSync(join(FIXTURES, 'tiny-llama-random', 'model.safetensors'), join(fewer, 'model.safetensors'))
  const cfg = JSON.parse(readFileSync(join(fewer, 'config.json'), 'utf8'))
  writeFileSync(join(fewer, 'config.json'), JSON.stringify({ ...cfg, num_hidden_layers: 1 }))
  await rejects(() => loadModel(fewer), /checkpoint has tensor model\.layers\.1\..* that config\.json does not describe \(it says 1 layers/)
  // and on resume: a 1-layer run's checkpoint directory holding 2 layers
  const one = initModel(parseConfig({ ...cfg, num_hidden_layers: 1 }), Rng.fromKey('one'))
  await rejects(() => loadWeightsInto(one, join(FIXTURES, 'tiny-llama-random')), /tensor model\.layers\.1\..* that config\.json does not describe/)
  // shard names must stay inside the checkpoint directory
  const shard = tmp()
  writeFileSync(join(shard, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { 'model.norm.weight': '../elsewhere/model.safetensors' } }))
  await rejects(() => openWeights(shard), /maps model\.norm\.weight to "\.\.\/elsewhere\/model\.safetensors"; shard names must be files inside/)
  // a tokenizer.json that is not one
  const badTok = tmp()
  writeFileSync(join(badTok, 'tokenizer.json'), JSON.stringify({ model: { type: 'nonsense' } }))
  await rejects(() => loadTokenizer(badTok), /tokenizer\.json: not a tokenizer @huggingface\/tokenizers can load/)
  // a chat template that loops without bound is stopped, not run until memory runs out
  const loop = tmp()
  cpSync(join(ROOT, 'data', 'tokenizer'), loop, { recursive: true })
  const tc = JSON.parse(readFileSync(join(loop, 'tokenizer_config.json'), 'utf8'))
  writeFileSync(join(loop, 'tokenizer_config.json'), JSON.stringify({ ...tc, chat_template: '{% for i in range(1000000000) %}x{% endfor %}' }))
  const t0 = performance.now()
  await rejects(() => checkTemplate(loadTokenizer(loop), 1000), /chat_template did not finish rendering a 4-message conversation in 1 s/)
  assert.ok(performance.now() - t0 < 5000)
  writeFileSync(join(loop, 'tokenizer_config.json'), JSON.stringify({ ...tc, chat_template: '{{ messages | nosuchfilter }}' }))
  await rejects(() => checkTemplate(loadTokenizer(loop)), /chat_template failed to render/)
})

test('a wasm abort (its 4 GiB heap full) reads as one line with the fix; other errors pass through', async () => {
  // what tfjs-backend-wasm throws when malloc cannot grow the heap (seen with bench dpo --batch-pairs 8 --workers 1)
  await rejects(() => { throw explainAbort(new WebAssembly.RuntimeError('Aborted(). Build with -sASSERTIONS for more info.')) }, /the wasm backend aborted \(Aborted\(\)\): its heap, which stops at 4 GiB, is almost certainly full; lower per_device_train_batch_size or max_length/)
  const other = new TypeError('x is undefined')
  assert.is(explainAbort(other), other)
})

test('bad flags and inputs of eval, sample, train --dry-run and binarize: one line, non-zero exit, no hang', async () => {
  const ev = { policy: policyDir, reference: policyDir, pairs: join(dataDir, 'test_prefs.jsonl'), beta: 0.1, loss: 'sigmoid' as const, labelSmoothing: 0, maxLength: 48, maxPromptLength: 24, batchSize: 4, backend: 'wasm' }
  await rejects(() => evaluatePairs({ ...ev, batchSize: 0 }), /--batch-size 0: needs a whole number >= 1/)
  await rejects(() => evaluatePairs({ ...ev, maxLength: 0 }), /--max-length 0/)
  await rejects(() => evaluatePairs({ ...ev, maxPromptLength: 48 }), /--max-prompt-length 48: needs a whole number from 1 to --max-length - 1 \(47\)/)
  const smp = { dir: policyDir, prompt: 'hi', maxNewTokens: 2, temperature: 0, topP: 1, seed: 0, raw: false, backend: 'wasm' }
  await rejects(() => sample({ ...smp, temperature: -1 }), /--temperature -1: needs a number >= 0/)
  await rejects(() => sample({ ...smp, topP: 0 }), /--top-p 0: needs a number in \(0, 1\]/)
  // a tokenizer larger than the model's vocabulary, in eval too (not only in train)
  const small = join(tmp(), 'small-vocab')
  await savePretrained(small, initModel(parseConfig({ ...TINY_CONFIG, vocab_size: 1000 }), Rng.fromKey('v')), { dtype: 'F32', tokenizerDir: policyDir })
  await rejects(() => evaluatePairs({ ...ev, policy: small, reference: small }), /has 32000 tokens but the model's vocab_size is 1000/)
  // NaN weights: eval fails naming the cause instead of printing null metrics
  const nan = tmp()
  cpSync(policyDir, nan, { recursive: true })
  const h = readHeader(join(nan, 'model.safetensors'))
  const t = h.tensors.get('model.norm.weight')!
  const buf = readFileSync(join(nan, 'model.safetensors'))
  buf.writeFloatLE(NaN, t.begin)
  writeFileSync(join(nan, 'model.safetensors'), buf)
  await rejects(() => evaluatePairs({ ...ev, policy: nan }), /is NaN: the log-probs are not finite, so a checkpoint holds NaN\/Inf weights/)
  // a truncated pairs parquet in train --dry-run, and binarize --out that is a file: CLI, one line
  const trunc = tmp()
  const pq = readFileSync(join(FIXTURES, 'ultrafeedback', 'head200.zstd.parquet'))
  writeFileSync(join(trunc, 'train_prefs.parquet'), pq.subarray(0, 5000))
  writeFileSync(join(trunc, 'test_prefs.parquet'), pq.subarray(0, 5000))
  oneLine(cli(['train', '--recipe', 'tiny', '--backend', 'wasm', '--dry-run', ...base(join(work, 'dry-trunc'), `data.pairs=${trunc}`)]), /train_prefs\.parquet/)
  const file = join(tmp(), 'a-file')
  writeFileSync(file, 'x')
  oneLine(cli(['binarize', '--input', join(FIXTURES, 'ultrafeedback', 'head200.zstd.parquet'), '--out', file]), /--out .*a-file is a file/)
})

test.run()
