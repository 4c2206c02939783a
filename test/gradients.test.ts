// Gradients: the hand-written ones (linear, embedding scatter, target log-prob) against finite differences, and
// the same DPO step on the cpu and wasm backends (the GPU path is the same code on a third backend).
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as tf from '@tensorflow/tfjs'
import { initBackend } from '../src/model/backend.ts'
import { parameterShapes, parseConfig } from '../src/model/config.ts'
import { clearCaches, disposeModel, type Model } from '../src/model/mistral.ts'
import { diskData, initModel, modelFromTensors } from '../src/model/weights.ts'
import type { SeqBatch } from '../src/model/logprobs.ts'
import { packPairs, padBatch, pairSequences, sftBatch, sftScoredTokens } from '../src/preference/batch.ts'
import { dpoBatchLoss, dpoObjective, sftObjective } from '../src/preference/objective.ts'
import { microBatchGrads } from '../src/train/microbatch.ts'
import { Rng } from '../src/rng.ts'
import { blockedHeadLogProbs, chunkedHeadLogProbs, headWeightGrad, linear, targetLogProbs, type HeadBackward } from '../src/model/autograd.ts'
import { maxAbsDiff, SMALL_DPO } from './tfjs-helpers.ts'
import type { PairIds } from '../src/preference/pairs.ts'

const { config, pairs, ref, opts } = SMALL_DPO
const batch = packPairs(pairs, 0, 1)

async function weights(): Promise<Map<string, Float32Array>> {
  const m = initModel(config, Rng.fromKey('grad-test'), 0.3)
  const out = new Map(await Promise.all([...parameterShapes(config).keys()].map(async (n) => [n, await diskData(m, n)] as const)))
  disposeModel(m)
  return out
}
await initBackend('cpu')
const W = await weights()
const build = (w: Map<string, Float32Array>) => modelFromTensors(config, (name) => w.get(name)!.slice())
let chunkTokens = 0 // > 0 forces the chunked LM head
const lossOf = (m: Model, b: SeqBatch = batch) => tf.tidy(() => dpoBatchLoss(m, b, ref, opts, chunkTokens).loss.dataSync()[0]!)
function grads(m: Model, b: SeqBatch = batch): Map<string, Float32Array> {
  const { grads: g, value } = tf.variableGrads(() => dpoBatchLoss(m, b, ref, opts, chunkTokens).loss)
  value.dispose()
  const out = new Map<string, Float32Array>()
  for (const [name, v] of m.params) out.set(name, g[v.name]!.dataSync() as Float32Array)
  tf.dispose(g)
  return out
}
/** Loss and gradients of a fresh model built from W on `backend`; the model is disposed afterwards. */
async function step(backend: string): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
  clearCaches()
  await initBackend(backend)
  const m = build(W)
  const out = { loss: lossOf(m), grads: grads(m) }
  disposeModel(m)
  return out
}

test('cpu: analytic gradients match central finite differences (float64 accumulation not needed at h=1e-2)', async () => {
  await initBackend('cpu')
  const m = build(W)
  const g = grads(m)
  const rng = Rng.fromKey('fd')
  let checked = 0
  for (const [name, v] of m.params) {
    const data = v.dataSync() as Float32Array
    const gn = g.get(name)!
    // the largest-gradient entry and two random entries with a non-zero gradient (many rows of a table are 0)
    const nonzero = [...gn.keys()].filter((i) => Math.abs(gn[i]!) > 1e-4)
    const largest = nonzero.reduce((a, b) => (Math.abs(gn[b]!) > Math.abs(gn[a]!) ? b : a), nonzero[0]!)
    for (const i of [largest, nonzero[rng.int(nonzero.length)]!, nonzero[rng.int(nonzero.length)]!]) {
      const h = 1e-2
      const orig = data[i]!
      const at = (x: number) => {
        const d = data.slice()
        d[i] = x
        v.assign(tf.tensor(d, v.shape))
        return lossOf(m)
      }
      const fd = (at(orig + h) - at(orig - h)) / (2 * h)
      at(orig)
      const an = g.get(name)![i]!
      assert.ok(Math.abs(fd - an) <= 2e-3 + 0.05 * Math.abs(an), `${name}[${i}]: analytic ${an} vs finite difference ${fd}`)
      checked++
    }
  }
  assert.ok(checked >= 3 * 20)
  disposeModel(m)
})

test("tied embeddings: the table's gradient (embedding scatter + the head's blocks through a transpose) matches finite differences", async () => {
  await initBackend('cpu')
  const tied = parseConfig({ ...config.raw, tie_word_embeddings: true })
  const m = initModel(tied, Rng.fromKey('grad-test-tied'), 0.3)
  assert.not.ok(m.params.has('lm_head.weight'))
  const loss = () => tf.tidy(() => dpoBatchLoss(m, batch, ref, opts).loss.dataSync()[0]!)
  const table = m.params.get('model.embed_tokens.weight')!
  const { grads: g, value } = tf.variableGrads(() => dpoBatchLoss(m, batch, ref, opts).loss, [table])
  const gn = g[table.name]!.dataSync() as Float32Array
  tf.dispose([value, ...Object.values(g)])
  const data = table.dataSync() as Float32Array
  const order = [...gn.keys()].sort((a, b) => Math.abs(gn[b]!) - Math.abs(gn[a]!))
  const unused = [...gn.keys()].find((i) => Math.floor(i / 16) === 39)! // token 39 is in no row: only the head's softmax reaches it
  for (const i of [order[0]!, order[1]!, order[50]!, unused]) {
    const at = (x: number) => {
      const d = data.slice()
      d[i] = x
      table.assign(tf.tensor(d, table.shape))
      return loss()
    }
    const fd = (at(data[i]! + 1e-2) - at(data[i]! - 1e-2)) / 2e-2
    at(data[i]!)
    assert.ok(Math.abs(fd - gn[i]!) <= 2e-3 + 0.05 * Math.abs(gn[i]!), `embed_tokens[${i}]: analytic ${gn[i]} vs finite difference ${fd}`)
  }
  assert.ok(Math.abs(gn[unused]!) > 1e-6) // a tied table gets a dense gradient
  disposeModel(m)
})

test('packed pairs (prompt run once) give the loss, log-probs and gradients of the concatenated 2n rows', async () => {
  await initBackend('cpu')
  const m = build(W)
  const concatenated = padBatch(pairSequences(pairs), 0, 1)
  assert.is(batch.tokens, 21) // P + C + R per pair: 10 + 11
  assert.is(concatenated.tokens, 29) // the prompts twice: 8 + 8 + 7 + 6
  const lp = (b: SeqBatch) => tf.tidy(() => [...dpoBatchLoss(m, b, ref, opts).logps.dataSync()])
  const [a, b] = [lp(batch), lp(concatenated)]
  assert.ok(maxAbsDiff(a, b) < 1e-5, `log-probs packed ${a} vs concatenated ${b}`)
  assert.ok(Math.abs(lossOf(m) - lossOf(m, concatenated)) < 1e-6)
  const [ga, gb] = [grads(m), grads(m, concatenated)]
  for (const [name, x] of ga) assert.ok(maxAbsDiff(x, gb.get(name)!) < 1e-5, `${name}: max |packed - concatenated| ${maxAbsDiff(x, gb.get(name)!)}`)
  disposeModel(m)
})

test('SFT under gradient accumulation: micro-batches of 3 and 5 tokens sum to the step token mean, as one micro-batch of both', async () => {
  await initBackend('cpu')
  const m = build(W)
  const sft = sftObjective()
  const [p0, p1] = pairs as [PairIds, PairIds]
  assert.equal([sftScoredTokens(p0), sftScoredTokens(p1)], [3, 5])
  for (const p of [p0, p1, { promptIds: [], chosenIds: [4, 2], rejectedIds: [] }, { promptIds: [], chosenIds: [], rejectedIds: [] }]) assert.is(sftScoredTokens(p), sftBatch([p], 0).scored.index.length)
  const run = async (mbs: PairIds[][], scales: number[]) => {
    const out = await Promise.all(mbs.map((b, a) => microBatchGrads(m, sft, b, undefined, { padId: 0, ga: mbs.length, scale: scales[a]!, dropoutSeed: 0 })))
    const grads = new Map([...out[0]!.grads.keys()].map((name) => [name, out.map((o) => o.grads.get(name)!.dataSync() as Float32Array).reduce((x, y) => x.map((v, i) => v + y[i]!))]))
    for (const o of out) tf.dispose([...o.grads.values()])
    return { grads, loss: out.reduce((a, o) => a + o.stats.loss, 0) / out.length } // a logged step: the mean of its micro-batches
  }
  assert.equal(sft.stepScales([[p0], [p1]]), [8, 8])
  assert.equal(dpoObjective(opts).stepScales([[p0], [p1], [p0]]), [3, 3, 3])
  const whole = await run([[p0, p1]], sft.stepScales([[p0, p1]]))
  const split = await run([[p0], [p1]], sft.stepScales([[p0], [p1]]))
  const perMicroBatch = await run([[p0], [p1]], [3 * 2, 5 * 2]) // each micro-batch's token mean / GA: before num_items_in_batch
  assert.ok(Math.abs(whole.loss - split.loss) < 1e-6, `step loss: one micro-batch ${whole.loss}, two ${split.loss}`)
  assert.ok(Math.abs(whole.loss - perMicroBatch.loss) > 1e-3, `the per-micro-batch mean weights tokens differently: ${whole.loss} vs ${perMicroBatch.loss}`)
  let apart = 0
  for (const [name, g] of whole.grads) {
    const scale = Math.max(...g.map(Math.abs), 1e-6)
    assert.ok(maxAbsDiff(g, split.grads.get(name)!) <= 1e-5 * scale, `${name}: max |one - two micro-batches| ${maxAbsDiff(g, split.grads.get(name)!)}`)
    apart = Math.max(apart, maxAbsDiff(g, perMicroBatch.grads.get(name)!) / scale)
  }
  assert.ok(apart > 1e-2, `per-micro-batch means give other gradients (${apart})`)
  disposeModel(m)
})

// this test caught tfjs 4.22's wasm oneHot(…, 'float32') writing int bits into a float buffer
test('cpu and wasm agree on the loss and every gradient of a DPO step', async () => {
  const { loss: la, grads: ga } = await step('cpu')
  const { loss: lb, grads: gb } = await step('wasm')
  assert.ok(Math.abs(la - lb) < 1e-5, `loss cpu ${la} wasm ${lb}`)
  for (const [name, x] of ga) {
    const y = gb.get(name)!
    const scale = Math.max(...x.map(Math.abs), 1e-6)
    const md = maxAbsDiff(x, y)
    assert.ok(md <= 1e-4 * scale + 1e-7, `${name}: max |cpu - wasm| ${md} (scale ${scale})`)
  }
  clearCaches()
  await initBackend('cpu')
})

test('the LM head in vocabulary blocks gives the log-probs and gradients of one whole-vocabulary head', async () => {
  const [N, D, V] = [6, 5, 23]
  const rng = Rng.fromKey('blocked-head')
  const h = tf.tensor2d(Array.from({ length: N * D }, () => rng.normal()), [N, D])
  const w = tf.tensor2d(Array.from({ length: D * V }, () => rng.normal()), [D, V])
  const targets = [0, 22, 7, 7, 15, 3] // blocks of 5: the first, the last (3 wide), two in one block, none in [10, 15)
  const dy = tf.tensor1d([0.5, -1, 2, 0.25, -0.75, 1])
  const run = (f: (h: tf.Tensor2D, w: tf.Tensor2D) => tf.Tensor1D) => {
    const { value, grads } = tf.valueAndGrads((hh: tf.Tensor, ww: tf.Tensor) => tf.sum(tf.mul(f(hh as tf.Tensor2D, ww as tf.Tensor2D), dy)))([h, w])
    const lp = f(h, w)
    return { lp: lp.dataSync() as Float32Array, value: value.dataSync()[0]!, dh: grads[0]!.dataSync() as Float32Array, dw: grads[1]!.dataSync() as Float32Array }
  }
  const whole = run((hh, ww) => targetLogProbs(linear(hh, ww), tf.tensor1d(targets, 'int32')))
  for (const block of [5, 23, 64]) {
    const b = run((hh, ww) => blockedHeadLogProbs(hh, ww, targets, block))
    assert.ok(maxAbsDiff(b.lp, whole.lp) < 1e-5, `block ${block}: log-probs ${b.lp} vs ${whole.lp}`)
    assert.ok(maxAbsDiff(b.dh, whole.dh) < 1e-5, `block ${block}: dh ${maxAbsDiff(b.dh, whole.dh)}`)
    assert.ok(maxAbsDiff(b.dw, whole.dw) < 1e-5, `block ${block}: dW ${maxAbsDiff(b.dw, whole.dw)}`)
  }
  assert.ok(Math.abs(whole.lp[1]! - (-Math.log(V))) > 0.1) // the weights are not degenerate: log-probs far from uniform
})

test("the LM head's weight gradient handed on (deferred) has autograd's bits, and dh is unchanged", async () => {
  const [N, D, V] = [6, 5, 23]
  const rng = Rng.fromKey('deferred-head')
  const h = tf.tensor2d(Array.from({ length: N * D }, () => rng.normal()), [N, D])
  const w = tf.variable(tf.tensor2d(Array.from({ length: D * V }, () => rng.normal()), [D, V]))
  const targets = [0, 22, 7, 7, 15, 3]
  const dy = tf.tensor1d([0.5, -1, 2, 0.25, -0.75, 1])
  const bits = (t: tf.Tensor) => [...new Uint32Array((t.dataSync() as Float32Array).slice().buffer)]
  const heads = [
    ['blocked', (hh: tf.Tensor2D, defer?: (d: HeadBackward) => void) => blockedHeadLogProbs(hh, w, targets, 5, defer)],
    ['chunked', (hh: tf.Tensor2D, defer?: (d: HeadBackward) => void) => chunkedHeadLogProbs(hh, w, tf.tensor1d(targets, 'int32'), 4, defer)],
  ] as const
  for (const [name, head] of heads) {
    const loss = (defer?: (d: HeadBackward) => void) => () => tf.sum(tf.mul(head(h, defer), dy)) as tf.Scalar
    const inline = tf.variableGrads(loss(), [w]) // dW from autograd
    const dhInline = tf.grad((hh: tf.Tensor) => tf.sum(tf.mul(head(hh as tf.Tensor2D), dy)))(h)
    const handed: HeadBackward[] = []
    const dh = tf.grad((hh: tf.Tensor) => tf.sum(tf.mul(head(hh as tf.Tensor2D, (d) => handed.push(d)), dy)))(h)
    assert.is(handed.length, 1, name)
    assert.is('ready' in handed[0]!, name === 'chunked') // the chunked head computes dW as it goes
    assert.equal(bits(dh), bits(dhInline), `${name}: dh`)
    assert.equal(bits(headWeightGrad(handed[0]!)), bits(inline.grads[w.name]!), `${name}: dW`)
  }
  w.dispose()
})

test('the chunked LM head gives the same log-probs and gradients as the whole head', async () => {
  const { loss: lw, grads: gw } = await step('wasm')
  chunkTokens = 3 // the batch's 13 scored tokens in 5 chunks
  try {
    const { loss: lc, grads: gc } = await step('wasm')
    assert.ok(Math.abs(lc - lw) < 1e-6)
    for (const [name, x] of gw) {
      const md = maxAbsDiff(x, gc.get(name)!)
      assert.ok(md < 1e-5, `${name}: max |whole - chunked| ${md}`)
    }
  } finally {
    chunkTokens = 0
    clearCaches()
    await initBackend('cpu')
  }
})

test.run()
