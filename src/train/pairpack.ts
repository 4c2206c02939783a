/**
 * A pair set in shared memory, for the workers (workers.ts) to read batches from without a copy each: the reference
 * precompute and eval hand every replica the whole set, and each takes whichever batches it gets to first. A posted
 * array of pairs would be cloned per worker (8 bytes a token as JS numbers); this is 4 bytes a token, once.
 * Layout (int32): [n, starts[0..3n], tokens...] — pair i's prompt, chosen and rejected ids are the token runs
 * [starts[3i], starts[3i+1]), [starts[3i+1], starts[3i+2]), [starts[3i+2], starts[3i+3]).
 */
import type { PairIds } from '../preference/pairs.ts'

export type PairPack = SharedArrayBuffer

/** Where the tokens start: after n and the 3n + 1 run starts. */
const headOf = (n: number) => 2 + 3 * n

export function packPairs(pairs: readonly PairIds[]): PairPack {
  const n = pairs.length
  const tokens = pairs.reduce((a, p) => a + p.promptIds.length + p.chosenIds.length + p.rejectedIds.length, 0)
  const head = headOf(n)
  const out = new Int32Array(new SharedArrayBuffer((head + tokens) * 4))
  out[0] = n
  let at = 0
  pairs.forEach((p, i) => {
    for (const [j, ids] of [p.promptIds, p.chosenIds, p.rejectedIds].entries()) {
      out[1 + 3 * i + j] = at
      out.set(ids, head + at)
      at += ids.length
    }
  })
  out[1 + 3 * n] = at
  return out.buffer as SharedArrayBuffer
}

export const packedCount = (pack: PairPack): number => new Int32Array(pack)[0]!

/** Pairs [start, end) of a pack, as plain arrays (what the model code takes). */
export function unpackPairs(pack: PairPack, start: number, end: number): PairIds[] {
  const v = new Int32Array(pack)
  const n = v[0]!
  const head = headOf(n)
  const run = (s: number) => Array.from(v.subarray(head + v[1 + s]!, head + v[2 + s]!))
  return Array.from({ length: Math.max(0, Math.min(end, n) - start) }, (_, i) => ({ promptIds: run(3 * (start + i)), chosenIds: run(3 * (start + i) + 1), rejectedIds: run(3 * (start + i) + 2) }))
}
