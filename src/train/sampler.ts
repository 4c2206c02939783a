/**
 * The order training sees the pairs in. Micro-batches form one stream across epochs: epoch e is a permutation of
 * the pairs seeded by (seed, e), cut into micro-batches, so micro-batch k of the stream is a pure function of
 * (seed, k) and a resumed run sees exactly the batches an uninterrupted one would.
 */
import { Rng } from '../rng.ts'

/** Micro-batches of indices for one epoch: the (seeded) order cut into groups of `size`, the last one partial. */
export function epochBatches(order: number[], size: number): number[][] {
  const out: number[][] = []
  for (let i = 0; i < order.length; i += size) out.push(order.slice(i, i + size))
  return out
}

/**
 * HF's LengthGroupedSampler (TrainingArguments.group_by_length): cut a shuffled order into megabatches of
 * 50 micro-batches, sort each by length (longest first), so a micro-batch holds pairs of similar length and
 * padding shrinks; the longest micro-batch goes first, so an out-of-memory shows at step 1.
 */
export function lengthGroupedOrder(order: number[], lengths: number[], batchSize: number): number[] {
  const mega = 50 * batchSize
  const out: number[] = []
  for (let i = 0; i < order.length; i += mega) out.push(...order.slice(i, i + mega).sort((a, b) => lengths[b]! - lengths[a]! || a - b))
  const longest = out.reduce((best, idx, k) => (lengths[idx]! > lengths[out[best]!]! ? k : best), 0)
  const first = Math.floor(longest / batchSize) * batchSize
  if (first > 0) {
    const head = out.slice(0, batchSize)
    const swap = out.slice(first, first + batchSize)
    if (swap.length === batchSize) {
      out.splice(0, batchSize, ...swap)
      out.splice(first, batchSize, ...head)
    }
  }
  return out
}

/** Padding share of a set of micro-batches: padded tokens / all tokens, rows padded to their batch's longest. */
export function paddingFraction(batches: number[][], rowLengths: (i: number) => number[]): number {
  let real = 0
  let total = 0
  for (const b of batches) {
    const rows = b.flatMap(rowLengths)
    real += rows.reduce((a, x) => a + x, 0)
    total += rows.length * Math.max(...rows)
  }
  return total ? 1 - real / total : 0
}

/** Micro-batch k of the stream over `lengths.length` pairs (lengths are used only with group_by_length). */
export function microBatchStream(o: { seed: number; batchSize: number; groupByLength: boolean; lengths: number[] }): (k: number) => number[] {
  const perEpoch = Math.ceil(o.lengths.length / o.batchSize)
  const epochs = new Map<number, number[][]>()
  return (k) => {
    const e = Math.floor(k / perEpoch)
    if (!epochs.has(e)) {
      let order = Rng.fromKey(`${o.seed}:epoch:${e}`).shuffle([...o.lengths.keys()])
      if (o.groupByLength) order = lengthGroupedOrder(order, o.lengths, o.batchSize)
      epochs.set(e, epochBatches(order, o.batchSize))
    }
    return epochs.get(e)![k % perEpoch]!
  }
}
