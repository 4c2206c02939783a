// The webgpu backend (tfjs-backend-webgpu over Dawn), wherever an adapter exists — a GPU, or Mesa's llvmpipe on
// CI (.ci/run installs it): the forward goldens, finite-difference gradients, one DPO step against wasm, the
// head past 2^24 logits, the binding limit as an error, and `align eval` / `align train` through the CLI.
// Without an adapter every test is skipped and the file says why (a line .ci/run repeats in its summary);
// ALIGN_REQUIRE_WEBGPU=1 turns that into a failure.
import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as tf from '@tensorflow/tfjs'
import { readHeader, readTensor } from '../src/checkpoint/safetensors.ts'
import { initBackend, type BackendInfo } from '../src/model/backend.ts'
import { parseConfig, type ModelConfig } from '../src/model/config.ts'
import { targetLogProbs } from '../src/model/autograd.ts'
import { headChunkTokens, type SeqBatch } from '../src/model/logprobs.ts'
import { clearCaches, disposeModel, forward, hidden } from '../src/model/mistral.ts'
import { diskData, initModel, loadModel, modelFromTensors } from '../src/model/weights.ts'
import { packPairs } from '../src/preference/batch.ts'
import { dpoBatchLoss } from '../src/preference/objective.ts'
import { Rng } from '../src/rng.ts'
import { FIXTURES, ROOT, rejects, tmp } from './helpers.ts'
import { maxAbsDiff, SMALL_DPO, TINY_CONFIG, tinyRun } from './tfjs-helpers.ts'

let info: BackendInfo | undefined
let why = ''
try {
  info = await initBackend('webgpu')
} catch (e) {
  why = (e as Error).message
}
process.stdout.write(info ? `webgpu: ran on ${info.adapter!.description || info.adapter!.device} (${info.adapter!.software ? 'software' : 'hardware'})\n` : `webgpu: NOT RUN: ${why}\n`)
if (!info && process.env.ALIGN_REQUIRE_WEBGPU === '1') test('a webgpu adapter (ALIGN_REQUIRE_WEBGPU=1)', () => assert.unreachable(why))
const gpu = info ? test : test.skip

/** Tensor data, read the only way webgpu can (dataSync throws there). */
async function read(t: tf.Tensor): Promise<Float32Array> {
  const d = (await t.data()) as Float32Array
  t.dispose()
  return d
}

const LLAMA = join(FIXTURES, 'tiny-llama-random')
const MISTRAL = join(FIXTURES, 'tiny-mistral-random')

gpu('forward goldens: tiny Llama layers and logits, tiny Mistral (sliding window) logits', async () => {
  await initBackend('webgpu')
  const model = loadModel(LLAMA)
  const meta = JSON.parse(readFileSync(join(LLAMA, 'expected', 'meta.json'), 'utf8'))
  const golden = readHeader(join(LLAMA, 'expected', 'activations.safetensors'))
  const ids = tf.tensor2d(meta.input_ids, [1, meta.input_ids.length], 'int32')
  const layers: tf.Tensor[] = []
  const logits = tf.tidy(() => {
    hidden(model, ids, undefined, (_, x) => layers.push(tf.keep(x)))
    return forward(model, ids)
  })
  const got = await Promise.all(layers.map(read))
  assert.is(maxAbsDiff(got[0]!, readTensor(golden, 'embeddings')), 0)
  for (const l of [0, 1]) assert.ok(maxAbsDiff(got[l + 1]!, readTensor(golden, `layers.${l}`)) < 5e-6, `layers.${l}`)
  const d = maxAbsDiff(await read(logits), readTensor(golden, 'logits'))
  assert.ok(d < 4e-5, `max |Δlogit| ${d}`) // the cpu bound (model.test.ts)
  disposeModel(model)

  const mistral = loadModel(join(MISTRAL, 'policy'))
  const dpo = JSON.parse(readFileSync(join(MISTRAL, 'expected', 'dpo.json'), 'utf8'))
  const out = tf.tidy(() => forward(mistral, tf.tensor2d(dpo.logits_input_ids, [1, 24], 'int32')))
  const dm = maxAbsDiff(await read(out), readTensor(readHeader(join(MISTRAL, 'expected', 'logits.safetensors')), 'logits'))
  assert.ok(dm < 1e-5, `max |Δlogit| ${dm}`)
  disposeModel(mistral)
})

// the small DPO problem of gradients.test.ts
const { config, pairs, ref, opts } = SMALL_DPO
const batch = packPairs(pairs, 0, 1)
/** HF-layout weights made on cpu, so every backend builds the same model from them. */
async function hfWeights(c: ModelConfig, key: string): Promise<Map<string, Float32Array>> {
  await initBackend('cpu')
  const m = initModel(c, Rng.fromKey(key), 0.3)
  const w = new Map(await Promise.all([...m.params.keys()].map(async (n) => [n, await diskData(m, n)] as const)))
  disposeModel(m)
  return w
}
const W = await hfWeights(config, 'grad-test')
const build = (c = config, w = W) => modelFromTensors(c, (name) => w.get(name)!.slice())

async function lossAndGrads(backend: string, b: SeqBatch = batch): Promise<{ loss: number; logps: Float32Array; grads: Map<string, Float32Array> }> {
  await initBackend(backend)
  const m = build()
  const trainable = [...m.params.values()]
  let logps: tf.Tensor | undefined
  const { value, grads } = tf.variableGrads(() => {
    const r = dpoBatchLoss(m, b, ref, opts)
    logps = tf.keep(r.logps)
    return r.loss
  }, trainable)
  const out = { loss: (await read(value))[0]!, logps: await read(logps!), grads: new Map<string, Float32Array>() }
  for (const [n, v] of m.params) out.grads.set(n, await read(grads[v.name]!))
  disposeModel(m)
  clearCaches()
  return out
}

gpu('analytic gradients match central finite differences on webgpu', async () => {
  const { grads } = await lossAndGrads('webgpu')
  await initBackend('webgpu')
  const m = build()
  const lossAt = async () => (await read(tf.tidy(() => dpoBatchLoss(m, batch, ref, opts).loss)))[0]!
  let checked = 0
  for (const [name, v] of m.params) {
    const data = ((await v.data()) as Float32Array).slice()
    const g = grads.get(name)!
    const largest = [...g.keys()].reduce((a, b) => (Math.abs(g[b]!) > Math.abs(g[a]!) ? b : a), 0)
    const h = 1e-2
    const at = async (x: number) => {
      const d = data.slice()
      d[largest] = x
      v.assign(tf.tensor(d, v.shape))
      return lossAt()
    }
    const fd = ((await at(data[largest]! + h)) - (await at(data[largest]! - h))) / (2 * h)
    v.assign(tf.tensor(data, v.shape))
    const an = g[largest]!
    assert.ok(Math.abs(fd - an) <= 2e-3 + 0.05 * Math.abs(an), `${name}[${largest}]: analytic ${an} vs finite difference ${fd}`)
    checked++
  }
  assert.is(checked, m.params.size)
  disposeModel(m)
  clearCaches()
})

gpu('one DPO step: loss, log-probs and every gradient equal wasm within float tolerance', async () => {
  const a = await lossAndGrads('wasm')
  const b = await lossAndGrads('webgpu')
  assert.ok(Math.abs(a.loss - b.loss) < 1e-5, `loss wasm ${a.loss} webgpu ${b.loss}`)
  assert.ok(maxAbsDiff(a.logps, b.logps) < 1e-4, `log-probs ${a.logps} vs ${b.logps}`)
  for (const [name, x] of a.grads) {
    const scale = Math.max(...x.map(Math.abs), 1e-6)
    const md = maxAbsDiff(x, b.grads.get(name)!)
    assert.ok(md <= 1e-4 * scale + 1e-7, `${name}: max |wasm - webgpu| ${md} (scale ${scale})`)
  }
})

gpu('the LM head over more than 2^24 logits runs in chunks and matches wasm (a flat index past 2^24 reads wrong through f32)', async () => {
  await initBackend('webgpu')
  const V = 32000
  assert.ok(headChunkTokens(V) * V <= 2 ** 24, `chunk ${headChunkTokens(V)} tokens`)
  const big = parseConfig({ ...TINY_CONFIG, num_hidden_layers: 1 })
  const rng = Rng.fromKey('long')
  const long = Array.from({ length: 2 }, () => ({ promptIds: [1, 3, 5], chosenIds: Array.from({ length: 300 }, () => 3 + rng.int(V - 3)), rejectedIds: Array.from({ length: 300 }, () => 3 + rng.int(V - 3)) }))
  const longBatch = packPairs(long, 0, 1) // 1200 scored tokens: 38.4M logits
  const weights = await hfWeights(big, 'big')
  const logpsOn = async (backend: string) => {
    await initBackend(backend)
    const m = build(big, weights)
    const lp = await read(tf.tidy(() => dpoBatchLoss(m, longBatch, { chosen: [0, 0], rejected: [0, 0] }, opts).logps))
    disposeModel(m)
    clearCaches()
    return lp
  }
  const [w, g] = [await logpsOn('wasm'), await logpsOn('webgpu')]
  assert.ok(maxAbsDiff(w, g) < 2e-3, `summed log-probs (~ -3000) wasm ${w} webgpu ${g}`)
  // one pair's 600 tokens forced into one chunk: the head runs in vocabulary blocks of [600, 4096], whose positions
  // stay below 2^24, and gives the chunked numbers; one [600, 32000] block of logits would pick targets past 2^24
  // (77 MB: it binds), refused rather than read wrong
  const m = build(big, weights)
  const one = { chosen: [0], rejected: [0] }
  const [chunked, forced] = [await read(tf.tidy(() => dpoBatchLoss(m, packPairs(long.slice(0, 1), 0, 1), one, opts).logps)), await read(tf.tidy(() => dpoBatchLoss(m, packPairs(long.slice(0, 1), 0, 1), one, opts, 4096).logps))]
  assert.ok(maxAbsDiff(chunked, forced) < 2e-3, `summed log-probs chunked ${chunked} forced into one chunk ${forced}`)
  await rejects(async () => tf.tidy(() => targetLogProbs(tf.zeros([600, 32000]), tf.zeros([600], 'int32'))), /a \[600, 32000\] block of logits has positions past 16777216, which this backend cannot index exactly/)
  disposeModel(m)
  clearCaches()
})

gpu('a tensor over the adapter binding limit is an error, never zeros; a model that cannot fit is refused before loading', async () => {
  await initBackend('webgpu')
  const floats = info!.limits.maxTensorBytes / 4 + 256
  await rejects(async () => {
    const t = tf.add(tf.zeros([floats]), 1)
    await read(t)
  }, /webgpu: a \d+ MiB tensor is over this adapter's \d+ MiB binding limit \(maxStorageBufferBindingSize\), where it would silently read as zeros/)
  const hidden = 4 * Math.ceil(floats / 128000) // an embedding one binding cannot hold (2 heads of even size)
  await rejects(async () => initModel(parseConfig({ ...TINY_CONFIG, hidden_size: hidden, head_dim: hidden / 2 }), Rng.fromKey('x')), /model\.embed_tokens\.weight \[32000,\d+\] is \d+ MiB in fp32, over the largest tensor this backend binds/)
})

gpu('AddN over more inputs than a shader may bind sums them all (the global grad norm adds 40+ tensors); a device error fails the next read', async () => {
  await initBackend('webgpu')
  const xs = Array.from({ length: 41 }, (_, i) => tf.fill([3], i + 0.5))
  const total = tf.addN(xs)
  assert.equal(Array.from(await read(total)), [840.5, 840.5, 840.5]) // Σ (i + 0.5), i < 41
  tf.dispose(xs)
  const device = (tf.backend() as unknown as { device: { onuncapturederror(ev: { error: { message: string } }): void } }).device
  device.onuncapturederror({ error: { message: 'Invalid BindGroup' } }) // what Dawn reports for a rejected kernel
  await rejects(() => read(tf.scalar(1)), /webgpu: the device rejected a kernel \(Invalid BindGroup\); its results would read as zeros/)
  assert.equal(Array.from(await read(tf.scalar(2))), [2]) // reported once
})

const cli = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: ROOT, encoding: 'utf8' })

gpu('auto takes webgpu for a hardware adapter only; align info shows the adapter and its limits', () => {
  const r = cli('info', '--json')
  assert.is(r.status, 0, r.stderr)
  const auto = JSON.parse(r.stdout)
  assert.equal(auto.adapter.description, info!.adapter!.description)
  if (info!.adapter!.software) {
    assert.not.equal(auto.active, 'webgpu')
    assert.match(auto.skipped.find((s: { name: string }) => s.name === 'webgpu').why, /only a software adapter \(.+\), slower than wasm: auto skips it, --backend webgpu uses it/)
  } else assert.is(auto.active, 'webgpu')
  const forced = JSON.parse(cli('info', '--json', '--backend', 'webgpu').stdout)
  assert.is(forced.active, 'webgpu')
  assert.equal(forced.limits, { maxTensorBytes: info!.adapter!.maxStorageBufferBindingSize, maxIndex: 2 ** 24 })
  assert.equal(forced.workers, { n: 1, why: 'auto: the webgpu backend runs one process per device' })
})

gpu('align eval --backend webgpu matches the tiny-mistral golden', () => {
  const golden = JSON.parse(readFileSync(join(MISTRAL, 'expected', 'dpo.json'), 'utf8'))
  const file = join(tmp(), 'pairs.jsonl')
  writeFileSync(file, golden.pairs.map((p: Record<string, number[]>) => JSON.stringify({ prompt_ids: p.prompt_ids, chosen_ids: p.chosen_ids, rejected_ids: p.rejected_ids })).join('\n') + '\n')
  const r = cli('eval', '--policy', join(MISTRAL, 'policy'), '--reference', join(MISTRAL, 'reference'), '--pairs', file, '--json', '--backend', 'webgpu')
  assert.is(r.status, 0, r.stderr)
  const m = JSON.parse(r.stdout)
  const g = golden.metrics.sigmoid
  assert.ok(Math.abs(m.loss - g.loss) < 1e-4, `loss ${m.loss} vs ${g.loss}`)
  assert.is(m['rewards/accuracies'], g['rewards/accuracies'])
  assert.ok(Math.abs(m['rewards/margins'] - g['rewards/margins']) < 1e-4)
})

gpu('align train --backend webgpu logs the losses wasm logs, within 1e-3; a batch too large for a binding is refused up front', async () => {
  await initBackend('wasm')
  const { work, base } = await tinyRun()
  const losses = (backend: string) => {
    const out = join(work, backend)
    const r = cli('train', '--recipe', 'tiny', '--backend', backend, '--workers', '1', ...base(out, 'dpo.reference_mode=frozen', 'dpo.save_steps=0'))
    assert.is(r.status, 0, r.stderr)
    const rows = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l))
    return rows.flatMap((x) => (x.loss !== undefined ? [x.loss] : x.eval_loss !== undefined ? [x.eval_loss] : []))
  }
  const [w, g] = [losses('wasm'), losses('webgpu')]
  assert.is(w.length, g.length)
  assert.ok(w.length >= 5) // 4 steps and an eval
  assert.ok(maxAbsDiff(w, g) < 1e-3, `wasm ${w}\nwebgpu ${g}`)
  // a batch whose activations could not be one binding is refused before step 1 (here: by --dry-run), not read as zeros
  const pairs = Math.ceil(info!.limits.maxTensorBytes / (4 * 32 * 2 * 1024)) + 1 // 2 rows of 1024 tokens a pair, width 32 (TINY_CONFIG's MLP)
  const big = cli('train', '--recipe', 'tiny', '--backend', 'webgpu', '--dry-run', ...base(join(work, 'big'), `dpo.per_device_train_batch_size=${pairs}`, 'dpo.max_length=1024'))
  assert.is(big.status, 1)
  assert.match(big.stderr, new RegExp(`a micro-batch's activation \\[${2 * 1024 * pairs} tokens, 32\\] is \\d+ MiB in fp32, over the largest tensor this backend binds \\(\\d+ MiB, align info\\); lower dpo\\.per_device_train_batch_size`))
})

test.run()
