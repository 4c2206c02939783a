// Batch order: epochs are seeded permutations; group_by_length (HF's LengthGroupedSampler) cuts padding; the
// layout of a batch of pairs (packed or concatenated) is the one with fewer decoder FLOPs.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { epochBatches, lengthGroupedOrder, paddingFraction } from '../src/train/sampler.ts'
import { Rng } from '../src/rng.ts'
import { PRESETS, parseConfig } from '../src/model/config.ts'
import { decoderFlops, packPairs, pairBatch, padBatch, pairSequences } from '../src/preference/batch.ts'
import type { SeqBatch } from '../src/model/logprobs.ts'

test('group_by_length keeps every pair once, puts the longest batch first, and pads less', () => {
  const rng = Rng.fromKey('lengths')
  const lengths = Array.from({ length: 1000 }, () => 20 + rng.int(500))
  const order = Rng.fromKey('order').shuffle([...lengths.keys()])
  const grouped = lengthGroupedOrder(order, lengths, 8)
  assert.equal([...grouped].sort((a, b) => a - b), [...lengths.keys()])
  assert.is(Math.max(...lengths), Math.max(...grouped.slice(0, 8).map((i) => lengths[i]!)))
  const pad = (o: number[]) => paddingFraction(epochBatches(o, 8), (i) => [lengths[i]!])
  assert.ok(pad(order) > 0.3, `random order pads ${pad(order)}`)
  assert.ok(pad(grouped) < 0.05, `grouped order pads ${pad(grouped)}`)
})

test('epoch batches: the last one partial, nothing dropped', () => {
  assert.equal(epochBatches([4, 2, 0, 1, 3], 2), [[4, 2], [0, 1], [3]])
})

test('pairs are packed when the prompt saved outweighs the longer rows, concatenated otherwise', () => {
  const c = parseConfig(PRESETS['tiny-bench']!, 'tiny-bench')
  const flops = (b: SeqBatch) => decoderFlops(b.B, b.T, c)
  const ids = (n: number, from: number) => Array.from({ length: n }, (_, i) => from + i)
  const pairs = (P: number, C: number) => [0, 1].map((k) => ({ promptIds: ids(P, 10 + k), chosenIds: ids(C, 500), rejectedIds: ids(C - 8, 900) }))
  const long = pairs(128, 128) // the bench set: prompts as long as completions
  assert.ok(flops(packPairs(long, 0)) < 0.85 * flops(padBatch(pairSequences(long), 0)))
  assert.ok(pairBatch(long, 0, c).packing)
  const short = pairs(4, 200) // short prompts: packing would only lengthen the rows
  assert.ok(flops(packPairs(short, 0)) > flops(padBatch(pairSequences(short), 0)))
  assert.is(pairBatch(short, 0, c).packing, undefined)
  assert.is(pairBatch(short, 0, c).rows, 4)
})

test.run()
