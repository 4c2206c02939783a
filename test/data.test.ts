// Batch order: epochs are seeded permutations; group_by_length (HF's LengthGroupedSampler) cuts padding.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { epochBatches, lengthGroupedOrder, paddingFraction } from '../src/train/data.ts'
import { Rng } from '../src/rng.ts'

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

test.run()
