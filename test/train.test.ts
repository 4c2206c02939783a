// `align sft` / `align train` end to end on a 1-layer Mistral-like model (real tokenizer, vocab 32000):
// metrics with TRL names, HF-layout checkpoints, resume equal to an uninterrupted run, NaN stop, dry-run plan.
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { loadRecipe } from '../src/recipe.ts'
import { loadModel } from '../src/model/weights.ts'
import { TRAIN_SCHEMA } from '../src/train/schema.ts'
import { train } from '../src/train/loop.ts'
import { STEP_LOSS, resumeLossNote } from '../src/train/checkpoint.ts'
import { readEvents } from '../src/train/tfevents.ts'
import { readHeader } from '../src/checkpoint/safetensors.ts'
import { ROOT, rejects } from './helpers.ts'
import { tinyRun, useBackend } from './tfjs-helpers.ts'

// wasm: the fast CPU backend (cpu and wasm agree on gradients: gradients.test.ts)
test.before(async () => {
  await useBackend(process.env.ALIGN_TEST_BACKEND ?? 'wasm')
})
await useBackend('wasm')
const { work, policyDir, base } = await tinyRun()
const recipe = (...o: string[]) => loadRecipe('tiny', TRAIN_SCHEMA, o)
const losses = (h: Record<string, number>[]) => h.filter((r) => r.loss !== undefined).map((r) => [r.step, r.loss])

test('DPO: TRL metric names in metrics.jsonl, trainer_state.json and TensorBoard; HF-layout checkpoints', async () => {
  const out = join(work, 'runA')
  const r = await train({ stage: 'dpo', recipe: recipe(...base(out)), quiet: true })
  const rows = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  const trainRow = rows.find((x) => x.step === 2 && x.loss !== undefined)
  for (const k of ['loss', 'rewards/chosen', 'rewards/rejected', 'rewards/accuracies', 'rewards/margins', 'logps/chosen', 'logps/rejected', 'logits/chosen', 'logits/rejected', 'learning_rate', 'grad_norm', 'epoch', 'tokens_per_second']) assert.ok(k in trainRow, k)
  const evalRow = rows.find((x) => x.step === 4 && x.eval_loss !== undefined)
  for (const k of ['eval_loss', 'eval_rewards/accuracies', 'eval_rewards/margins', 'eval_logps/chosen', 'eval_runtime']) assert.ok(k in evalRow, k)
  // step 1 is warmup (lr 0): the policy still equals the reference, every reward is 0 and the loss is ln 2
  const first = rows[0]
  assert.is(first.learning_rate, 0)
  assert.ok(Math.abs(first.loss - Math.LN2) < 1e-5 && Math.abs(first['rewards/margins']) < 1e-5)
  // checkpoints: the last save_total_limit=2 kept, each an HF dir with optimizer state; the final weights at output_dir load
  assert.equal(readdirSync(out).filter((f) => f.startsWith('checkpoint-')).sort(), ['checkpoint-2', 'checkpoint-4'])
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'trainer_state.json', 'optimizer.safetensors', 'optimizer.json', 'recipe.resolved.json']) assert.ok(existsSync(join(out, 'checkpoint-4', f)), f)
  const state = JSON.parse(readFileSync(join(out, 'checkpoint-4', 'trainer_state.json'), 'utf8'))
  assert.is(state.global_step, 4)
  assert.equal(state.log_history, rows.slice(0, -1))
  // the last row is HF's summary: train_loss = the mean step loss of the run
  const summary = rows[rows.length - 1]
  const stepLosses = rows.filter((x) => x.loss !== undefined && x.step > 0).map((x) => x.loss)
  assert.ok(Math.abs(summary.train_loss - stepLosses.reduce((a: number, b: number) => a + b, 0) / stepLosses.length) < 1e-9)
  assert.ok(summary.train_runtime > 0 && summary.train_samples_per_second > 0)
  assert.equal(JSON.parse(readFileSync(join(out, 'trainer_state.json'), 'utf8')).log_history, rows)
  assert.is(r.finalDir, out)
  loadModel(r.finalDir!)
  // what transformers and the handbook leave at output_dir (TrainerState's fields only: TrainerState(**json) loads it)
  const TRAINER_STATE_FIELDS = ['epoch', 'global_step', 'max_steps', 'logging_steps', 'eval_steps', 'save_steps', 'train_batch_size', 'num_train_epochs', 'num_input_tokens_seen', 'total_flos', 'log_history', 'best_metric', 'best_global_step', 'best_model_checkpoint', 'is_local_process_zero', 'is_world_process_zero', 'is_hyper_param_search', 'trial_name', 'trial_params', 'stateful_callbacks']
  for (const d of [out, join(out, 'checkpoint-4')]) for (const k of Object.keys(JSON.parse(readFileSync(join(d, 'trainer_state.json'), 'utf8')))) assert.ok(TRAINER_STATE_FIELDS.includes(k), `${d}: ${k}`)
  assert.equal(JSON.parse(readFileSync(join(out, 'align_state.json'), 'utf8')), { stage: 'dpo', seed: 42, loss: 'pairs of the step' })
  const read = (f: string) => JSON.parse(readFileSync(join(out, f), 'utf8'))
  assert.is(read('train_results.json').train_loss, summary.train_loss)
  assert.is(read('eval_results.json').eval_loss, rows.filter((x) => x.eval_loss !== undefined).at(-1).eval_loss)
  assert.equal(read('all_results.json'), { ...read('train_results.json'), ...read('eval_results.json') })
  const tokCfg = read('tokenizer_config.json')
  assert.match(tokCfg.chat_template, /<\|assistant\|>/) // the Zephyr template the run used, written out for apply_chat_template
  const prov = read('align_provenance.json')
  assert.equal([prov.stage, prov.backend, prov.data.train.pairs, prov.policy.spec], ['dpo', 'wasm', 12, policyDir])
  assert.match(prov.data.train.sha256, /^[0-9a-f]{64}$/)
  const card = readFileSync(join(out, 'README.md'), 'utf8')
  assert.match(card, /^---\nbase_model: /)
  assert.match(card, /\| beta \| 0\.1 \|/)
  assert.match(card, /\| train_loss \| /)
  const ev = readEvents(readFileSync(join(out, 'runs', readdirSync(join(out, 'runs'))[0]!)))
  assert.ok(ev.some((e) => e.tag === 'train/rewards/accuracies' && e.step === 2))
  assert.ok(ev.some((e) => e.tag === 'eval/loss' && e.step === 4))
})

test('resume: stop after 2 steps, --resume latest, and the losses equal the uninterrupted run', async () => {
  const a = await train({ stage: 'dpo', recipe: recipe(...base(join(work, 'full'))), quiet: true })
  const out = join(work, 'interrupted')
  await train({ stage: 'dpo', recipe: recipe(...base(out)), quiet: true, stopAfter: 2 })
  assert.ok(existsSync(join(out, 'checkpoint-2')))
  const b = await train({ stage: 'dpo', recipe: recipe(...base(out)), quiet: true, resume: 'latest' })
  assert.equal(losses(b.logHistory), losses(a.logHistory))
  assert.is(losses(a.logHistory).length, 4)
})

test('resuming SFT from a checkpoint saved before the step\'s token mean says so (with GA > 1 only)', () => {
  const old = { stage: 'sft', seed: 42 } as const
  assert.match(resumeLossNote('run/checkpoint-4', old, 4)!, /^--resume run\/checkpoint-4: this SFT checkpoint was saved when each micro-batch's loss was its own token mean over gradient_accumulation_steps; the steps from here divide the step's token NLL sum by its scored tokens \(HF Trainer's num_items_in_batch\)/)
  assert.is(resumeLossNote('d', old, 1), undefined) // one micro-batch a step: the same loss either way
  assert.is(resumeLossNote('d', { ...old, loss: STEP_LOSS.sft }, 4), undefined)
  assert.is(resumeLossNote('d', { stage: 'dpo', seed: 42 }, 4), undefined) // DPO's never changed
})

test('SFT: loss on assistant tokens decreases; DPO loss goes below ln 2 on the pairs it trains on', async () => {
  const s = await train({ stage: 'sft', recipe: recipe(...base(join(work, 'sft'), 'sft.max_steps=6', 'sft.learning_rate=3e-2')), quiet: true })
  const l = losses(s.logHistory).map((x) => x[1]!)
  assert.ok(l[l.length - 1]! < l[0]!, `sft loss ${l}`)
  const d = await train({ stage: 'dpo', recipe: recipe(...base(join(work, 'overfit'), 'data.max_train_pairs=4', 'dpo.max_steps=12', 'dpo.learning_rate=3e-2', 'dpo.eval_steps=0', 'dpo.save_steps=0')), quiet: true })
  const dl = losses(d.logHistory).map((x) => x[1]!)
  assert.ok(dl[dl.length - 1]! < Math.LN2 - 0.05, `dpo loss ${dl}`)
})

test('LoRA: PEFT adapter layout, base frozen, starts at the reference (loss ln 2), resume exact with dropout', async () => {
  const lora = ['lora.enabled=true', 'lora.r=4', 'lora.alpha=8', 'lora.dropout=0.1', 'lora.target_modules=q_proj,v_proj,down_proj', 'dpo.learning_rate=5e-2']
  const a = await train({ stage: 'dpo', recipe: recipe(...base(join(work, 'lora'), ...lora)), quiet: true })
  const fin = a.finalDir!
  assert.ok(existsSync(join(fin, 'adapter_model.safetensors')) && existsSync(join(fin, 'adapter_config.json')))
  assert.not.ok(existsSync(join(fin, 'model.safetensors')))
  const cfg = JSON.parse(readFileSync(join(fin, 'adapter_config.json'), 'utf8'))
  assert.equal([cfg.peft_type, cfg.r, cfg.lora_alpha, cfg.target_modules, cfg.base_model_name_or_path], ['LORA', 4, 8, ['q_proj', 'v_proj', 'down_proj'], policyDir])
  const h = readHeader(join(fin, 'adapter_model.safetensors'))
  assert.equal([...h.tensors.keys()].sort(), ['base_model.model.model.layers.0.mlp.down_proj.lora_A.weight', 'base_model.model.model.layers.0.mlp.down_proj.lora_B.weight', 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', 'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight', 'base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight', 'base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight'])
  assert.equal(h.tensors.get('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight')!.shape, [4, 16]) // [r, in]
  assert.equal(h.tensors.get('base_model.model.model.layers.0.mlp.down_proj.lora_B.weight')!.shape, [16, 4]) // [out, r]
  assert.ok(Math.abs(a.logHistory[0]!.loss! - Math.LN2) < 1e-5)
  const l = losses(a.logHistory)
  assert.ok(new Set(l.map((x) => x[1])).size > 1, 'the adapters learn')
  const out = join(work, 'lora-resume')
  await train({ stage: 'dpo', recipe: recipe(...base(out, ...lora)), quiet: true, stopAfter: 2 })
  const b = await train({ stage: 'dpo', recipe: recipe(...base(out, ...lora)), quiet: true, resume: 'latest' })
  assert.equal(losses(b.logHistory), l)
})

test('a NaN/Inf loss stops the run, names the step and keeps the last good checkpoint', async () => {
  const out = join(work, 'nan')
  await rejects(() => train({ stage: 'dpo', recipe: recipe(...base(out, 'dpo.learning_rate=1e30', 'dpo.warmup_ratio=0', 'dpo.save_steps=1', 'dpo.max_grad_norm=0')), quiet: true }), /loss is (NaN|-?Infinity) at step \d+; stopped/, /last good checkpoint/)
  assert.ok(readdirSync(out).some((f) => f.startsWith('checkpoint-')))
})

test('dry run: step counts and a memory plan — 7B zephyr-lora fits an 80 GB GPU, full zephyr does not', async () => {
  const r = await train({ stage: 'dpo', recipe: recipe(...base(join(work, 'dry'), 'model.policy=preset:mistral-7b', 'dpo.max_length=1024', 'dpo.per_device_train_batch_size=1')), quiet: true, dryRun: true })
  assert.match(r.plan!, /7241\.7M parameters/)
  assert.match(r.plan!, /^train \(.*\): 12 pairs, \d+ tokens, prompts truncated \d+/m)
  assert.match(r.plan!, /^resolved: \{"model":\{"policy":"preset:mistral-7b"/m)
  assert.match(r.plan!, /^full\*.* no$/m)
  assert.match(r.plan!, /^lora .* yes$/m)
  assert.not.ok(existsSync(join(work, 'dry')))
  // two workers, GA 2 (all-reduce): each replica sums and steps half of the gradients and optimizer state; the shared
  // slots are the ring's (two per worker, at most GA), a weight slot and a hand-off board per replica for the LM head
  const w2 = await train({ stage: 'dpo', recipe: recipe(...base(join(work, 'dry'), 'model.policy=preset:mistral-7b', 'dpo.max_length=1024', 'dpo.per_device_train_batch_size=1')), quiet: true, dryRun: true, workers: 2 })
  const [, main, other, slots, total] = (w2.plan!.match(/^workers: 2 \(requested\) · main ([\d.]+) GB · each other worker ([\d.]+) GB \(a replica summing and stepping 1\/2 of the gradients and optimizer state\) · slots ([\d.]+) GB \(shared: 2 gradient slots, a weight slot and a board per worker for the LM head blocks they share out\) · total ([\d.]+) GB$/m) ?? []).map(Number)
  // (GA 2 gradient slots + 1 weight slot) · 7241.7M trainable · 4 bytes, and 2 boards of 4 bytes · (hidden 4096 ·
  // vocab 32000 for dW, 2560 tokens (2 rows of 1024, a quarter more) · (hidden 4096 for hᵀ + vocab 32000 for g))
  assert.is(slots, 88.69)
  // zephyr's GA 16, or 64: still 4 gradient slots (one slot per micro-batch was 2 · 17 of them, 985 GB at GA 16)
  for (const ga of [16, 64]) {
    const plan = (await train({ stage: 'dpo', recipe: recipe(...base(join(work, 'dry'), 'model.policy=preset:mistral-7b', 'dpo.max_length=1024', 'dpo.per_device_train_batch_size=1', `dpo.gradient_accumulation_steps=${ga}`)), quiet: true, dryRun: true, workers: 2 })).plan!
    assert.match(plan, / · slots 146\.62 GB \(shared: 4 gradient slots, a weight slot and a board per worker for the LM head blocks they share out\) · /)
  }
  const one = Number(r.plan!.match(/^workers: 1 \(.*\) · ([\d.]+) GB$/m)![1])
  // half of AdamW's 2 × 28.97 GB of moments and half of the 28.97 GB gradient sum live on the other worker; each
  // replica may hold its half of one micro-batch that came early (14.48 GB)
  assert.ok(Math.abs(one - main! - 28.97) < 0.02, `${one} − ${main}`)
  assert.is(other, main) // precomputed reference: nothing only the main thread holds
  assert.ok(Math.abs(main! + other! + slots! - total!) < 0.02, `${main} + ${other} + ${slots} != ${total}`)
  // without --dry-run a 7B preset (random weights) is refused before anything is allocated
  await rejects(() => train({ stage: 'dpo', recipe: recipe(...base(join(work, 'dry7b'), 'model.policy=preset:mistral-7b')), quiet: true }), /would train 7\.2B random weights; point model\.policy at an SFT checkpoint/)
})

test('Ctrl-C finishes the current step, saves checkpoint-<step> and exits 130', async () => {
  const out = join(work, 'sigint')
  const args = ['--import', 'tsx', join(ROOT, 'src', 'cli.ts'), 'train', '--recipe', 'tiny', '--backend', 'wasm', ...base(out, 'dpo.max_steps=500', 'dpo.save_steps=0', 'dpo.eval_steps=0')]
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  const metrics = join(out, 'metrics.jsonl')
  for (let i = 0; i < 600 && !(existsSync(metrics) && readFileSync(metrics, 'utf8').trim().length > 0); i++) await new Promise((r) => setTimeout(r, 100))
  child.kill('SIGINT')
  const code = await new Promise<number | null>((r) => child.on('exit', r))
  assert.is(code, 130, stderr)
  const ckpts = readdirSync(out).filter((f) => /^checkpoint-\d+$/.test(f))
  assert.is(ckpts.length, 1, stderr)
  assert.ok(Number(ckpts[0]!.split('-')[1]) < 500)
  assert.not.ok(existsSync(join(out, 'model.safetensors')), 'no final weights after an interrupt')
})

test('Ctrl-C during setup (workers starting, reference log-probs) exits 130 at once with one line; the lock is released', async () => {
  const out = join(work, 'sigint-setup')
  const args = ['--import', 'tsx', join(ROOT, 'src', 'cli.ts'), 'train', '--recipe', 'tiny', '--backend', 'wasm', '--workers', '2', ...base(out, 'dpo.max_steps=500')]
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  for (let i = 0; i < 600 && !/^workers: 2 \(/m.test(stderr); i++) await new Promise((r) => setTimeout(r, 20)) // logged just before the workers start
  child.kill('SIGINT')
  const code = await new Promise<number | null>((r) => child.on('exit', r))
  assert.is(code, 130, stderr)
  assert.match(stderr, /^align: SIGINT during setup, before the first step: stopped; nothing was trained, so nothing was saved$/m)
  assert.equal(readdirSync(out).filter((f) => f === '.align.lock' || f === 'metrics.jsonl' || f.startsWith('checkpoint-')), [])
})

test('a tokenizer larger than the model vocabulary is a clear error, before any weight is loaded', async () => {
  const dir = join(work, 'small-vocab')
  const { mkdirSync, writeFileSync } = await import('node:fs')
  mkdirSync(dir, { recursive: true })
  const cfg = JSON.parse(readFileSync(join(policyDir, 'config.json'), 'utf8'))
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, vocab_size: 1000 }))
  await rejects(() => train({ stage: 'dpo', recipe: recipe(...base(join(work, 'sv'), `model.policy=${dir}`, `model.tokenizer=${join(ROOT, 'data', 'tokenizer')}`)), quiet: true, dryRun: true }), /tokenizer .* has 32000 tokens but the model's vocab_size is 1000/)
})

test.run()
