// AdamW / RMSprop against hand-derived PyTorch steps; HF schedules; global-norm clipping; tfevents bytes.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { Optimizer, clipScale, lrLambda, warmupSteps } from '../src/train/optim.ts'
import { applyUpdate, gradSquares, normOf, shardsOf } from '../src/train/microbatch.ts'
import type { Model } from '../src/model/mistral.ts'
import { crc32c, encodeEvent, maskCrc, readEvents, record } from '../src/train/tfevents.ts'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { FIXTURES } from './helpers.ts'
import { maxAbsDiff, useBackend } from './tfjs-helpers.ts'

const tf = await useBackend()
test.before(async () => {
  await useBackend()
})
const close = (a: number, b: number, tol = 1e-6) => assert.ok(Math.abs(a - b) <= tol, `${a} vs ${b}`)

test('AdamW, first two steps by hand (torch.optim.AdamW semantics)', () => {
  // p=1, lr=0.1, wd=0.01, β=(0.9,0.999), ε=1e-8
  // step 1, g=0.5: p ← 1·(1−0.1·0.01)=0.999; m=0.05, v=0.00025; m̂=0.5, v̂=0.25 → p ← 0.999 − 0.1·0.5/(0.5+1e-8) = 0.899
  // step 2, g=−0.3: p ← 0.899·0.999=0.898101; m=0.045−0.03=0.015, v=0.00024975+0.00009=0.00033975;
  //   m̂=0.015/0.19=0.0789474, v̂=0.00033975/0.001999=0.1699600 → √=0.4122620 → p ← 0.898101 − 0.1·0.191500 = 0.8789511
  const p = tf.variable(tf.scalar(1))
  const opt = new Optimizer({ optimizer: 'adamw', beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, rmspropAlpha: 0.99 })
  const params = new Map([['w', p]])
  opt.apply(params, new Map([['w', tf.scalar(0.5)]]), 0.1)
  close(p.dataSync()[0]!, 0.899)
  opt.apply(params, new Map([['w', tf.scalar(-0.3)]]), 0.1)
  close(p.dataSync()[0]!, 0.8789511, 2e-6)
  assert.is(opt.step, 2)
})

test('RMSprop, one step by hand (torch defaults α=0.99)', () => {
  // v = 0.01·0.25 = 0.0025 → p ← 1 − 0.1·0.5/(0.05+1e-8) = 0
  const p = tf.variable(tf.scalar(1))
  const opt = new Optimizer({ optimizer: 'rmsprop', beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, rmspropAlpha: 0.99 })
  opt.apply(new Map([['w', p]]), new Map([['w', tf.scalar(0.5)]]), 0.1)
  close(p.dataSync()[0]!, 0, 1e-6)
})

// torch.optim itself, three steps with weight decay and a changing lr (test/fixtures/optim/make_golden.py)
const golden = JSON.parse(readFileSync(join(FIXTURES, 'optim', 'golden.json'), 'utf8'))
for (const kind of ['adamw', 'rmsprop'] as const) {
  test(`${kind}: three steps equal torch.optim (${golden.source.split(' (')[0]}) within float32 rounding`, () => {
    const g = golden[kind]
    const p = tf.variable(tf.tensor2d(golden.p0))
    const opt = new Optimizer({ optimizer: kind, beta1: g.betas?.[0] ?? 0.9, beta2: g.betas?.[1] ?? 0.999, eps: g.eps, weightDecay: g.weight_decay, rmspropAlpha: g.alpha ?? 0.99 })
    golden.grads.forEach((grad: number[][], i: number) => {
      opt.apply(new Map([['w', p]]), new Map([['w', tf.tensor2d(grad)]]), golden.lrs[i])
      const d = maxAbsDiff(p.dataSync(), g.params_after_each_step[i].flat())
      assert.ok(d < 2e-7, `step ${i + 1}: max |align - torch| ${d}`)
    })
    const state = kind === 'adamw' ? { exp_avg: opt.m, exp_avg_sq: opt.v } : { square_avg: opt.v }
    for (const [k, map] of Object.entries(state)) assert.ok(maxAbsDiff(map.get('w')!.dataSync(), g.state[k].flat()) < 1e-8 + 1e-6 * Math.max(...g.state[k].flat().map(Math.abs)), k)
  })
}

test('schedules match transformers get_*_schedule_with_warmup', () => {
  assert.is(warmupSteps(0.1, 95), 10) // ceil(9.5)
  assert.is(lrLambda('linear', 0, 100, 10), 0)
  assert.is(lrLambda('linear', 5, 100, 10), 0.5)
  assert.is(lrLambda('linear', 10, 100, 10), 1)
  close(lrLambda('linear', 55, 100, 10), 0.5)
  assert.is(lrLambda('linear', 100, 100, 10), 0)
  close(lrLambda('cosine', 55, 100, 10), 0.5)
  close(lrLambda('cosine', 10, 100, 10), 1)
  assert.is(lrLambda('constant', 70, 100, 10), 1)
})

test('global-norm clipping: norm before clipping, scaled to max_norm; a shard steps with the norm of all', async () => {
  close(clipScale(5, 1)!, 1 / (5 + 1e-6))
  assert.is(clipScale(0.3, 1), undefined) // below max_norm
  assert.is(clipScale(5, 0), undefined) // max_norm 0: no clipping
  // two AdamW steps (the second depends on the gradients' scale) of all parameters, and of shard {b} alone
  const model = (): Model => ({ config: {} as Model['config'], params: new Map([['a', tf.variable(tf.tensor1d([1, 2]))], ['b', tf.variable(tf.tensor1d([3]))]]) })
  const [all, part, scattered] = [model(), model(), model()]
  close(normOf(all, await gradSquares(new Map([['a', tf.tensor1d([3, 0])], ['b', tf.tensor1d([4])]]))), 5)
  const adamw = () => new Optimizer({ optimizer: 'adamw', beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, rmspropAlpha: 0.99 })
  const [optAll, optPart, optScattered] = [adamw(), adamw(), adamw()]
  for (const [ga, gb] of [[[3, 0], [4]], [[-1, 2], [0.5]]]) {
    const grads = () => new Map([['a', tf.tensor1d(ga!)], ['b', tf.tensor1d(gb!)]])
    const g = grads()
    const norm = await applyUpdate(all, optAll, g, 0.1, 1)
    assert.is(await applyUpdate(part, optPart, grads(), 0.1, 1, new Set(['b'])), norm)
    assert.ok(g.get('a')!.isDisposed) // the gradients are consumed
    // reduce-scattered (workers.ts): each replica squares its own shard's gradients, the norm adds them in model order
    const [ofA, ofB] = [await gradSquares(new Map([['a', tf.tensor1d(ga!)]])), await gradSquares(new Map([['b', tf.tensor1d(gb!)]]))]
    assert.is(normOf(all, new Map([...ofB, ...ofA])), norm) // bit for bit (that the order is the model's: the next test)
    await applyUpdate(scattered, optScattered, new Map([['b', tf.tensor1d(gb!)]]), 0.1, 1, new Set(['b']), norm)
  }
  assert.equal([...scattered.params.get('b')!.dataSync()], [...all.params.get('b')!.dataSync()])
  assert.equal([...part.params.get('a')!.dataSync()], [1, 2]) // not in the shard: untouched, no moments
  assert.equal([...optPart.m.keys()], ['b'])
  assert.equal([...part.params.get('b')!.dataSync()], [...all.params.get('b')!.dataSync()]) // bit for bit
  assert.equal(shardsOf(all, 2).map((s) => [...s]), [['a'], ['b']]) // a's middle (1 of 3) in the first half
  assert.equal(shardsOf(all, 1).map((s) => [...s]), [['a', 'b']])
})

test('global norm: the squares are added in model order, whatever order the replicas sent them in', () => {
  const model: Model = { config: {} as Model['config'], params: new Map(['a', 'b', 'c'].map((n) => [n, tf.variable(tf.scalar(0))])) }
  const [a, b, c] = [3 * 2 ** 52, 1, 1] // float64: (a + b) + c rounds each 1 away, (c + b) + a keeps their 2
  assert.not.equal(Math.sqrt(a + b + c), Math.sqrt(c + b + a)) // the fixture can tell the two orders apart
  assert.is(normOf(model, new Map([['c', c], ['b', b], ['a', a]])), Math.sqrt(a + b + c))
  assert.throws(() => normOf(model, new Map([['a', a], ['b', b]])), /no sum of squares for c/)
  tf.dispose([...model.params.values()])
})

test('tfevents: CRC32C test vector, masked CRCs, and scalar events read back', () => {
  assert.is(crc32c(Buffer.from('123456789')), 0xe3069283)
  assert.is(maskCrc(0), 0xa282ead8)
  const buf = Buffer.concat([record(encodeEvent(1700000000.5, 0)), record(encodeEvent(1700000001, 7, 'train/loss', 0.5)), record(encodeEvent(1700000002, 300, 'eval/rewards/accuracies', 0.75))])
  assert.equal(readEvents(buf), [{ step: 7, tag: 'train/loss', value: 0.5 }, { step: 300, tag: 'eval/rewards/accuracies', value: 0.75 }])
  // the file-version event, byte for byte: wall_time f64, step 0, file_version "brain.Event:2"
  const head = encodeEvent(1, 0)
  assert.equal([...head.slice(0, 1)], [0x09])
  assert.is(Buffer.from(head.slice(13)).toString(), 'brain.Event:2')
  const corrupt = Buffer.from(buf)
  corrupt[buf.length - 6]! ^= 1
  assert.throws(() => readEvents(corrupt), /bad data crc/)
})

test.run()
