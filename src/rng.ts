/**
 * Seeded PRNG owned by align (xoshiro128**, seeded from the sha256 of a string key).
 *
 * Hand-written on purpose: tfjs has no global seed, and we need independent streams derived from a key
 * (`seed:prompt_id` for the rejected draw of one row, `seed:split` for the test split, `seed:epoch:e` for the
 * batch order), so a draw never depends on which draws came before it and a resumed run needs no saved RNG
 * state. 30 lines; the npm alternatives (seedrandom) do not derive streams from keys.
 */
import { createHash } from 'node:crypto'

export type RngState = [number, number, number, number]

export class Rng {
  private s: Uint32Array

  constructor(state: RngState) {
    this.s = Uint32Array.from(state)
    if (this.s.every((x) => x === 0)) this.s[0] = 1 // the all-zero state is a fixed point
  }

  /** A stream keyed by any string: the first 16 bytes of sha256(key). */
  static fromKey(key: string): Rng {
    const h = createHash('sha256').update(key).digest()
    return new Rng([h.readUInt32LE(0), h.readUInt32LE(4), h.readUInt32LE(8), h.readUInt32LE(12)])
  }

  /** Next uint32 (xoshiro128**). */
  nextU32(): number {
    const s = this.s
    let [s0, s1, s2, s3] = [s[0]!, s[1]!, s[2]!, s[3]!]
    const result = Math.imul(rotl(Math.imul(s1, 5) >>> 0, 7), 9) >>> 0
    const t = (s1 << 9) >>> 0
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = rotl(s3 >>> 0, 11)
    s[0] = s0
    s[1] = s1
    s[2] = s2
    s[3] = s3
    return result
  }

  /** Uniform float in [0, 1) with 53 random bits. */
  random(): number {
    const hi = this.nextU32() >>> 5 // 27 bits
    const lo = this.nextU32() >>> 6 // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.random() * n)
  }

  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.random()
    const v = this.random()
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v)
  }

  /** Fisher-Yates shuffle in place. */
  shuffle<T>(xs: T[]): T[] {
    for (let i = xs.length - 1; i > 0; i--) {
      const j = this.int(i + 1)
      ;[xs[i], xs[j]] = [xs[j]!, xs[i]!]
    }
    return xs
  }

  /** k distinct indices from [0, n), sorted ascending (Floyd's algorithm: O(k) memory). */
  sample(n: number, k: number): number[] {
    const chosen = new Set<number>()
    for (let j = n - k; j < n; j++) {
      const t = this.int(j + 1)
      chosen.add(chosen.has(t) ? j : t)
    }
    return [...chosen].sort((a, b) => a - b)
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0
}
