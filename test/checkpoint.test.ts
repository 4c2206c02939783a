// safetensors and HF directories: round trips, rounding, an independent reader, and clear errors.
import { copyFileSync, readFileSync, truncateSync, writeFileSync, existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { floatToBf16, floatToHalf, halfToFloat, readHeader, readTensor, writeSafetensors } from '../src/checkpoint/safetensors.ts'
import { openWeights } from '../src/checkpoint/hf.ts'
import { diskData, initModel, loadModel, savePretrained } from '../src/model/weights.ts'
import { addLora } from '../src/model/lora.ts'
import { Rng } from '../src/rng.ts'
import { resume, saveCheckpoint, type TrainerState } from '../src/train/checkpoint.ts'
import { Optimizer } from '../src/train/optim.ts'
import { disposeModel } from '../src/model/mistral.ts'
import { parameterShapes, parseConfig } from '../src/model/config.ts'
import { FIXTURES, rejects, tmp } from './helpers.ts'
import { useBackend } from './tfjs-helpers.ts'

const tf = await useBackend()
test.before(async () => {
  await useBackend()
})
const LLAMA = join(FIXTURES, 'tiny-llama-random')

test('header is read without the payload; tensors one at a time; BF16 -> F32 exact', () => {
  const h = readHeader(join(LLAMA, 'model.safetensors'))
  assert.is(h.tensors.size, 21)
  const e = h.tensors.get('model.embed_tokens.weight')!
  assert.equal([e.dtype, e.shape], ['BF16', [512, 64]])
  const x = readTensor(h, 'model.embed_tokens.weight')
  assert.is(x.length, 512 * 64)
  // every bf16 value is exactly representable: converting back gives the same bits
  const raw = readFileSync(join(LLAMA, 'model.safetensors')).subarray(e.begin, e.end)
  for (let i = 0; i < 100; i++) assert.is(floatToBf16(x[i]!), raw.readUInt16LE(2 * i))
})

test('bf16 and f16 rounding: round to nearest even, NaN and Inf kept', () => {
  assert.is(floatToBf16(1), 0x3f80)
  assert.is(floatToBf16(1 + 2 ** -8), 0x3f80) // exactly half way, even stays
  assert.is(floatToBf16(1 + 3 * 2 ** -8), 0x3f82) // half way, odd rounds up
  assert.is(floatToBf16(1 + 2 ** -8 + 2 ** -20), 0x3f81) // above half rounds up
  assert.is(floatToBf16(NaN) & 0x7fc0, 0x7fc0)
  assert.is(floatToBf16(-Infinity), 0xff80)
  for (const v of [0, 1, -2.5, 65504, 6.103515625e-5, 5.960464477539063e-8, 0.1]) assert.ok(Math.abs(halfToFloat(floatToHalf(v)) - v) <= Math.abs(v) * 2 ** -11, String(v))
  assert.is(floatToHalf(1e6), 0x7c00)
})

test('save -> load gives identical tensors (bf16 weights stay bit-exact); sharded save works', async () => {
  const model = loadModel(LLAMA)
  const dir = join(tmp(), 'ckpt')
  await savePretrained(dir, model, { dtype: 'BF16', tokenizerDir: LLAMA, maxShardBytes: 200_000 })
  assert.ok(existsSync(join(dir, 'model.safetensors.index.json')), 'sharded at 200 kB')
  const back = loadModel(dir)
  for (const name of parameterShapes(model.config).keys()) assert.equal(await diskData(back, name), await diskData(model, name), name)
  const h = readHeader(join(dir, readdirSync(dir).find((f) => f.startsWith('model-00001'))!))
  assert.equal(h.metadata, { format: 'pt' })
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
  assert.is(cfg.torch_dtype, 'bfloat16')
  assert.is(cfg.num_hidden_layers, 2)
  disposeModel(model)
  disposeModel(back)
})

test('a file we write is read by an independent reader (Python stdlib: struct + json)', async () => {
  const dir = tmp()
  const p = join(dir, 'x.safetensors')
  await writeSafetensors(p, [{ name: 'b', shape: [2, 3], data: Float32Array.from([1, -2, 3.5, 0.1, 1e-3, -7]) }, { name: 'a', shape: [1], data: Float32Array.from([42]) }], 'BF16')
  const py = `
import json, struct, sys
raw = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
h = json.loads(raw[8:8+n])
assert (8 + n) % 8 == 0, 'data aligned'
out = {'meta': h['__metadata__']}
for k, v in h.items():
    if k == '__metadata__': continue
    b, e = v['data_offsets']
    vals = struct.unpack('<%dH' % ((e - b) // 2), raw[8+n+b:8+n+e])
    out[k] = [v['dtype'], v['shape'], [struct.unpack('<f', struct.pack('<I', x << 16))[0] for x in vals]]
print(json.dumps(out))`
  const r = spawnSync('python3', ['-c', py, p], { encoding: 'utf8' })
  assert.is(r.status, 0, r.stderr)
  const got = JSON.parse(r.stdout)
  assert.equal(got.meta, { format: 'pt' })
  assert.equal(got.a, ['BF16', [1], [42]])
  assert.equal(got.b[1], [2, 3])
  const want = [1, -2, 3.5, 0.10009765625, 0.00099945068359375, -7]
  assert.equal(got.b[2], want)
})

test('corrupt, truncated or incomplete checkpoints: one line naming the file and the problem', async () => {
  const dir = tmp()
  const p = join(dir, 'model.safetensors')
  writeFileSync(p, 'not a safetensors file at all, just text')
  await rejects(() => readHeader(p), /model\.safetensors: not a safetensors file or truncated/)
  copyFileSync(join(LLAMA, 'model.safetensors'), p)
  truncateSync(p, 200_000)
  await rejects(() => readHeader(p), /model\.safetensors: truncated: tensor .* ends at byte/)
  const sharded = tmp()
  copyFileSync(join(LLAMA, 'sharded', 'model.safetensors.index.json'), join(sharded, 'model.safetensors.index.json'))
  copyFileSync(join(LLAMA, 'sharded', 'model-00001-of-00002.safetensors'), join(sharded, 'model-00001-of-00002.safetensors'))
  await rejects(() => openWeights(sharded), /lists shard model-00002-of-00002\.safetensors .* does not exist; the download is incomplete/)
  const empty = tmp()
  writeFileSync(join(empty, 'pytorch_model.bin'), '')
  await rejects(() => openWeights(empty), /no model\.safetensors .*convert pytorch \.bin/)
  const wrong = tmp()
  copyFileSync(join(LLAMA, 'model.safetensors'), join(wrong, 'model.safetensors'))
  const cfg = JSON.parse(readFileSync(join(LLAMA, 'config.json'), 'utf8'))
  writeFileSync(join(wrong, 'config.json'), JSON.stringify({ ...cfg, hidden_size: 128 }))
  await rejects(() => loadModel(wrong), /tensor model\.embed_tokens\.weight has shape \[512,64\] but config\.json implies \[512,128\]/)
})

const tinyConfig = parseConfig({ architectures: ['MistralForCausalLM'], vocab_size: 50, hidden_size: 8, intermediate_size: 12, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, rms_norm_eps: 1e-5, rope_theta: 10000, sliding_window: 16 })
const state = (step: number): TrainerState => ({ global_step: step, max_steps: 9, epoch: 0.5, num_train_epochs: 1, logging_steps: 1, eval_steps: 0, save_steps: 1, train_batch_size: 2, log_history: [{ step, loss: 0.5 }], best_metric: null, best_model_checkpoint: null, is_local_process_zero: true, is_world_process_zero: true })
const saveArgs = { alignState: { stage: 'dpo' as const, seed: 1 }, chatTemplate: '{{ messages }}' }
const paramData = (m: { params: Map<string, { dataSync(): unknown }> }) => Object.fromEntries([...m.params].map(([k, v]) => [k, Array.from(v.dataSync() as Float32Array)]))
const moments = (o: Optimizer) => ({ m: Object.fromEntries([...o.m].map(([k, v]) => [k, Array.from(v.dataSync() as Float32Array)])), v: Object.fromEntries([...o.v].map(([k, v]) => [k, Array.from(v.dataSync() as Float32Array)])) })
/** one optimizer step with seeded random gradients, so every moment is non-zero */
function stepOnce(model: ReturnType<typeof initModel>, opt: Optimizer, seed: string): void {
  const rng = Rng.fromKey(seed)
  const params = new Map([...model.params].filter(([, p]) => p.trainable))
  opt.apply(params, new Map([...params].map(([k, p]) => [k, tf.tensor(Array.from({ length: p.size }, () => rng.normal()), p.shape)])), 0.01)
}
const newOpt = () => new Optimizer({ optimizer: 'adamw', beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, rmspropAlpha: 0.99 })

test('saveCheckpoint -> resume restores full weights and optimizer moments bit for bit', async () => {
  const dir = join(tmp(), 'checkpoint-3')
  const [a, optA] = [initModel(tinyConfig, Rng.fromKey('a')), newOpt()]
  stepOnce(a, optA, 'g')
  await saveCheckpoint({ dir, model: a, dtype: 'F32', tokenizerDir: LLAMA, base: 'x', state: state(3), optimizer: optA, ...saveArgs })
  const [b, optB] = [initModel(tinyConfig, Rng.fromKey('b')), newOpt()]
  const st = resume(dir, 'dpo', b, optB).state
  assert.is(st.global_step, 3)
  assert.equal(st.log_history, [{ step: 3, loss: 0.5 }])
  assert.equal(paramData(b), paramData(a))
  assert.equal(moments(optB), moments(optA))
  assert.is(optB.step, 1)
  assert.throws(() => resume(dir, 'sft', b, optB), /a dpo checkpoint cannot resume sft/)
  assert.is(resume(dir, 'dpo', b, optB, 4).note, undefined)
  // an SFT checkpoint saved before align_state.json recorded the loss: resuming it with GA > 1 says so
  const old = join(tmp(), 'checkpoint-3')
  await saveCheckpoint({ dir: old, model: a, dtype: 'F32', tokenizerDir: LLAMA, base: 'x', state: state(3), optimizer: optA, ...saveArgs, alignState: { stage: 'sft', seed: 1 } })
  assert.match(resume(old, 'sft', b, optB, 4).note!, /^--resume .*checkpoint-3: this SFT checkpoint was saved when each micro-batch's loss was its own token mean/)
  assert.is(resume(old, 'sft', b, optB, 1).note, undefined)
})

test('saveCheckpoint -> resume restores LoRA adapters (PEFT layout on disk) and their moments; the base stays', async () => {
  const dir = join(tmp(), 'checkpoint-1')
  const lora = { r: 2, alpha: 4, dropout: 0, targets: ['q_proj', 'down_proj'] }
  const [a, optA] = [initModel(tinyConfig, Rng.fromKey('base')), newOpt()]
  addLora(a, lora, Rng.fromKey('la'))
  stepOnce(a, optA, 'g') // moves lora_B off zero
  await saveCheckpoint({ dir, model: a, dtype: 'F32', tokenizerDir: LLAMA, base: '/models/base', state: state(1), optimizer: optA, ...saveArgs })
  assert.ok(existsSync(join(dir, 'adapter_model.safetensors')) && !existsSync(join(dir, 'model.safetensors')))
  assert.is(JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')).base_model_name_or_path, '/models/base')
  const [b, optB] = [initModel(tinyConfig, Rng.fromKey('base')), newOpt()]
  addLora(b, lora, Rng.fromKey('lb'))
  resume(dir, 'dpo', b, optB)
  assert.equal(paramData(b), paramData(a))
  assert.equal(moments(optB), moments(optA))
  assert.is(optB.m.size, 4) // A and B of two modules: only the adapters train
})

test('atomic writes create the parent directory and leave no temp file behind', async () => {
  const { writeFileAtomic } = await import('../src/files.ts')
  const dir = join(tmp(), 'a', 'b')
  writeFileAtomic(join(dir, 'x.json'), '{}')
  assert.equal(readdirSync(dir), ['x.json'])
})

test.run()
