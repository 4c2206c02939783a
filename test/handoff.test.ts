// The LM head hand-off's boards (src/train/handoff.ts), driven from one thread: which blocks a taker can take and
// when, and that the owner's weight gradient keeps the bits of the one computed in place however many were taken.
// The same protocol between worker threads is tested in workers.test.ts.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as tf from '@tensorflow/tfjs'
import { blockedHeadLogProbs, chunkedHeadLogProbs, headWeightGrad, type HeadBackward } from '../src/model/autograd.ts'
import { Handoff, handoffBuffers } from '../src/train/handoff.ts'
import { Rng } from '../src/rng.ts'
import { maxAbsDiff, useBackend } from './tfjs-helpers.ts'

// in `npm test` every file is imported before any test runs, and later files switch the backend: set up per test
const [N, D, V, BLOCK] = [6, 5, 23, 5] // 5 vocabulary blocks, the last 3 columns wide
const targets = [0, 22, 7, 7, 15, 3]
let h: tf.Tensor2D, w: tf.Variable, dy: tf.Tensor1D, expected: number[]
test.before.each(async () => {
  await useBackend()
  const rng = Rng.fromKey('handoff-board')
  h = tf.tensor2d(Array.from({ length: N * D }, () => rng.normal()), [N, D])
  w = tf.variable(tf.tensor2d(Array.from({ length: D * V }, () => rng.normal()), [D, V]))
  dy = tf.tensor1d([0.5, -1, 2, 0.25, -0.75, 1])
  expected = bits(headWeightGrad(parts()))
})
test.after.each(() => tf.dispose([h, w, dy]))
const bits = (t: tf.Tensor) => [...new Uint32Array((t.dataSync() as Float32Array).slice().buffer)]

/** The parts the blocked head hands on in a backward pass (each call a fresh set: the owner's headGrad disposes them). */
function parts(head = (hh: tf.Tensor2D, defer: (d: HeadBackward) => void) => blockedHeadLogProbs(hh, w as tf.Tensor as tf.Tensor2D, targets, BLOCK, defer)): HeadBackward {
  const handed: HeadBackward[] = []
  tf.grad((hh: tf.Tensor) => tf.sum(tf.mul(head(hh as tf.Tensor2D, (d) => handed.push(d)), dy)))(h).dispose()
  return handed[0]!
}

/** An owner (replica 0) and a taker (replica 1) on the same boards; in one thread nothing is ever left to wait for. */
function boards(maxTokens = N) {
  const b = handoffBuffers(2, D, V, BLOCK, maxTokens)
  const version = new Int32Array(new SharedArrayBuffer(4))
  const wait = () => assert.unreachable('a wait with no other thread')
  return { owner: new Handoff(b, 0, version, wait), taker: new Handoff(b, 1, version, wait), version }
}

test('a taker takes blocks, the last first, from the moment the head hands its parts on; the owner computes the rest, the same bits', async () => {
  const { owner, taker, version } = boards()
  assert.is(await taker.take(), false) // a board not yet opened has no free block
  const d = parts()
  const v = version[0]!
  owner.open(d) // inside the backward pass, as the head hands its parts on
  assert.ok(version[0]! > v, 'opening wakes the waiting replicas')
  for (let k = 0; k < 3; k++) assert.is(await taker.take(), true)
  assert.is(taker.taken, 3)
  assert.equal(bits(await owner.headGrad(d)), expected)
  assert.is(await taker.take(), false) // closed: every block computed
})

test('a taker with time to spare takes every block before the owner reaches its head gradient', async () => {
  const { owner, taker } = boards()
  const d = parts()
  owner.open(d)
  for (let k = 0; k < 5; k++) assert.is(await taker.take(), true)
  assert.is(await taker.take(), false)
  assert.equal(bits(await owner.headGrad(d)), expected)
  assert.is(taker.taken, 5)
  // the next micro-batch on the same board: opened again, shared again
  const again = parts()
  owner.open(again)
  assert.is(await taker.take(), true)
  assert.equal(bits(await owner.headGrad(again)), expected)
  assert.is(taker.taken, 6)
})

test('parts the board cannot hold are computed in place: too many tokens, the chunked head, a board opened only at the head gradient', async () => {
  const small = boards(N - 1)
  const d = parts()
  small.owner.open(d)
  assert.is(await small.taker.take(), false)
  assert.equal(bits(await small.owner.headGrad(d)), expected)
  const { owner, taker } = boards()
  const chunked = parts((hh, defer) => chunkedHeadLogProbs(hh, w as tf.Tensor as tf.Tensor2D, tf.tensor1d(targets, 'int32'), 4, defer))
  assert.ok('ready' in chunked)
  owner.open(chunked)
  assert.is(await taker.take(), false)
  assert.ok(maxAbsDiff((await owner.headGrad(chunked)).dataSync(), new Float32Array(new Uint32Array(expected).buffer)) < 1e-5) // its own order of sums
  // a backend that cannot read inside the backward pass (webgpu): the board opens when the owner reaches the head's dW
  const late = parts()
  assert.equal(bits(await owner.headGrad(late)), expected)
  assert.is(taker.taken, 0)
})

test.run()
