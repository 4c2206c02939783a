/**
 * The LM head's weight gradient, shared out at the end of a micro-batch (the all-reduce step of workers.ts): a
 * replica that has finished its share of the step takes vocabulary blocks of dW = hᵀ·g from one still computing,
 * instead of waiting for it. On this 2-core VM one replica often finishes 0.1–0.7 s before the other (which core is
 * slower changes from minute to minute), and the head's dW is ~0.3 s of a tiny-bench micro-batch, computed last
 * (logprobs.ts `deferringHeadGrad`). Written by hand: no library does this; it is Atomics over shared memory, like
 * ring.ts, whose version counter and wait it shares.
 *
 * The bits are the owner's: a block taken elsewhere is the same product (autograd.ts `headBlockGrad`) of copies of
 * the same hᵀ and g_b on the same backend, and lands in its own columns. Per replica, a board:
 *   the owner opens it with hᵀ and its states all 0 (open), and computes blocks from the first, marking each 1;
 *   a replica with nothing left to do sets `hungry` to its index + 1 on every other board, open or not yet (so
 *   that the owner can give from its first block on), and withdraws from one that is open with fewer than two blocks
 *   left, and from all once its step's sum is complete; between two blocks the owner, when at least two
 *   are still open, gives it the last: state 2, g_b copied into the hand-off buffer, `given` = the block;
 *   the taker copies g_b and hᵀ out (freeing the buffer, and asking for another if two are still open), computes
 *   the block, writes it into the board's gradient buffer and marks it 4;
 *   the owner, once no block is open, waits for those given to be 4, reads them, and closes the board.
 * Giving races with a taker withdrawing: the owner first swaps `hungry` for its negative (compareExchange), which a
 * withdrawal (the same from the taker's side) cannot then undo. A taker whose sum is complete has nothing given to
 * it: every owner's micro-batch came after its head's blocks were all done.
 *
 * Control (Int32, shared), per replica: [open, tokens N, given (−1: none), given to, hungry, a state per block].
 */
import * as tf from '@tensorflow/tfjs'
import { headBlockGrad, headWeightGrad, type HeadBackward } from '../model/autograd.ts'
import { readInto, tensorCopy } from '../model/backend.ts'
import type { Wait } from './ring.ts'

/** The boards' shared memory, made by the pool (sized for the longest micro-batch it has seen) and sent to every worker. */
export interface HandoffBuffers {
  ctrl: SharedArrayBuffer
  /** per replica: hᵀ [D, maxTokens], the hand-off buffer for one g_b [maxTokens, block], dW [D, V] */
  hT: SharedArrayBuffer[]
  g: SharedArrayBuffer[]
  dw: SharedArrayBuffer[]
  replicas: number
  hidden: number
  vocab: number
  block: number
  maxTokens: number
}

const [OPEN, TOKENS, GIVEN, GIVEN_TO, HUNGRY, STATE] = [0, 1, 2, 3, 4, 5]
const [FREE, OWNER, GIVEN_AWAY, DONE] = [0, 1, 2, 4]

/** How much longer than the longest micro-batch so far the pool makes the boards, so that slightly longer ones fit. */
export const HANDOFF_ROOM = 1.25

/** The floats of one replica's board (its control words aside): hᵀ [D, maxTokens], one g_b [maxTokens, block], dW [D, V]. */
const boardFloats = (hidden: number, vocab: number, block: number, maxTokens: number) => ({ hT: hidden * maxTokens, g: maxTokens * block, dw: hidden * vocab })

/** The shared memory of one replica's board, in bytes (without its control words). */
export const boardBytes = (hidden: number, vocab: number, block: number, maxTokens: number) => 4 * Object.values(boardFloats(hidden, vocab, block, maxTokens)).reduce((a, b) => a + b)

/** Control words per board: the fixed ones and a state per block. */
const boardWords = (vocab: number, block: number) => STATE + Math.ceil(vocab / block)

export function handoffBuffers(replicas: number, hidden: number, vocab: number, block: number, maxTokens: number): HandoffBuffers {
  const floats = boardFloats(hidden, vocab, block, maxTokens)
  const each = (n: number) => Array.from({ length: replicas }, () => new SharedArrayBuffer(n * 4))
  const ctrl = new SharedArrayBuffer(replicas * boardWords(vocab, block) * 4)
  for (let r = 0; r < replicas; r++) new Int32Array(ctrl)[r * boardWords(vocab, block) + GIVEN] = -1 // closed, nothing given
  return { ctrl, hT: each(floats.hT), g: each(floats.g), dw: each(floats.dw), replicas, hidden, vocab, block, maxTokens }
}

/** One replica's view of every board: its own (as owner) and the others' (to take from). */
export class Handoff {
  /** blocks this replica computed for others (a view is made per step, with its Ring) */
  taken = 0
  private readonly blocks: number

  /** `version`: the ring's control (its [0] is bumped on every change, and waited on) */
  constructor(private readonly b: HandoffBuffers, private readonly me: number, private readonly version: Int32Array, private readonly wait: Wait) {
    this.blocks = Math.ceil(b.vocab / b.block)
  }

  /** The owner's side: the head's weight gradient [D, V] of this replica's micro-batch, blocks given to takers as they ask. */
  async headGrad(d: HeadBackward): Promise<tf.Tensor> {
    const N = 'ready' in d ? 0 : d.hT.shape[1]
    if ('ready' in d || N > this.b.maxTokens || d.g.length !== this.blocks) return headWeightGrad(d)
    const c = this.board(this.me)
    await readInto(d.hT, new Float32Array(this.b.hT[this.me]!, 0, this.b.hidden * N))
    Atomics.store(c, TOKENS, N)
    Atomics.store(c, GIVEN, -1)
    for (let i = 0; i < this.blocks; i++) Atomics.store(c, STATE + i, FREE)
    Atomics.store(c, OPEN, 1)
    this.bump()
    const dw: tf.Tensor[] = []
    for (let i = 0; i < this.blocks; i++) {
      await this.give(d, c)
      if (Atomics.load(c, STATE + i) !== FREE) continue // given away
      Atomics.store(c, STATE + i, OWNER)
      dw[i] = headBlockGrad(d.hT, d.g[i]!)
    }
    for (;;) {
      const v = Atomics.load(this.version, 0)
      if (!Array.from({ length: this.blocks }, (_, i) => Atomics.load(c, STATE + i)).includes(GIVEN_AWAY)) break
      await this.wait(this.version, v)
    }
    Atomics.store(c, OPEN, 0)
    for (let i = 0; i < this.blocks; i++) dw[i] ??= tensorCopy(this.dwView(this.me, i), [this.b.hidden, this.width(i)])
    const dW = tf.concat(dw, 1)
    tf.dispose([d.hT, ...d.g, ...dw])
    return dW
  }

  /**
   * The taker's side, for a replica waiting for the others: compute a block given to it, or ask every board for one
   * (withdrawing from an open one with fewer than two left). Whether it computed a block.
   */
  async take(): Promise<boolean> {
    for (let r = 0; r < this.b.replicas; r++) {
      if (r === this.me) continue
      const c = this.board(r)
      if (Atomics.load(c, OPEN) === 1 && Atomics.load(c, GIVEN) >= 0 && Atomics.load(c, GIVEN_TO) === this.me) return (await this.compute(r, c), true)
      const hungry = Atomics.load(c, HUNGRY)
      if (hungry === this.me + 1 && !this.wanted(c)) Atomics.compareExchange(c, HUNGRY, hungry, 0) // fails if a block is on its way
      else if (hungry === 0 && this.wanted(c)) Atomics.compareExchange(c, HUNGRY, 0, this.me + 1)
    }
    return false
  }

  /** The taker's side, once its step's sum is complete: withdraw from every board (nothing can be on its way then). */
  leave(): void {
    for (let r = 0; r < this.b.replicas; r++) if (r !== this.me) Atomics.compareExchange(this.board(r), HUNGRY, this.me + 1, 0)
  }

  /** Between two of the owner's blocks: give the last open one to a taker that asked, if two are open. */
  private async give(d: Extract<HeadBackward, { g: tf.Tensor2D[] }>, c: Int32Array): Promise<void> {
    const hungry = Atomics.load(c, HUNGRY)
    if (hungry <= 0 || Atomics.load(c, GIVEN) >= 0 || !this.twoOpen(c)) return
    if (Atomics.compareExchange(c, HUNGRY, hungry, -hungry) !== hungry) return // it withdrew
    const i = this.lastFree(c)
    Atomics.store(c, STATE + i, GIVEN_AWAY)
    await readInto(d.g[i]!, new Float32Array(this.b.g[this.me]!, 0, d.g[i]!.size))
    Atomics.store(c, GIVEN_TO, hungry - 1)
    Atomics.store(c, GIVEN, i)
    Atomics.store(c, HUNGRY, 0)
    this.bump()
  }

  /** Compute the block board r gave this replica, into r's gradient buffer. */
  private async compute(r: number, c: Int32Array): Promise<void> {
    const [i, N] = [Atomics.load(c, GIVEN), Atomics.load(c, TOKENS)]
    const g = tensorCopy(new Float32Array(this.b.g[r]!, 0, N * this.width(i)), [N, this.width(i)]) as tf.Tensor2D
    const hT = tensorCopy(new Float32Array(this.b.hT[r]!, 0, this.b.hidden * N), [this.b.hidden, N]) as tf.Tensor2D
    Atomics.store(c, GIVEN, -1) // the hand-off buffer is free: ask for the next block while this one runs
    if (this.wanted(c)) Atomics.compareExchange(c, HUNGRY, 0, this.me + 1)
    const dw = headBlockGrad(hT, g)
    await readInto(dw, this.dwView(r, i))
    tf.dispose([g, hT, dw])
    Atomics.store(c, STATE + i, DONE)
    this.taken++
    this.bump()
  }

  /** A board to ask: not open yet, or with two blocks or more still open. */
  private wanted(c: Int32Array): boolean {
    return Atomics.load(c, OPEN) !== 1 || this.twoOpen(c)
  }

  /** Two blocks or more still open: the owner keeps one to compute while a taker computes another. */
  private twoOpen(c: Int32Array): boolean {
    let free = 0
    for (let i = 0; i < this.blocks; i++) if (Atomics.load(c, STATE + i) === FREE) free++
    return free >= 2
  }

  private lastFree(c: Int32Array): number {
    for (let i = this.blocks - 1; i >= 0; i--) if (Atomics.load(c, STATE + i) === FREE) return i
    throw new Error('handoff: no open block')
  }

  private board(r: number): Int32Array {
    const n = boardWords(this.b.vocab, this.b.block)
    return new Int32Array(this.b.ctrl, r * n * 4, n)
  }

  private width(i: number): number {
    return Math.min(this.b.block, this.b.vocab - i * this.b.block)
  }

  /** block i's place in replica r's gradient buffer: [D, width] at D · (its first column) */
  private dwView(r: number, i: number): Float32Array {
    return new Float32Array(this.b.dw[r]!, this.b.hidden * i * this.b.block * 4, this.b.hidden * this.width(i))
  }

  private bump(): void {
    Atomics.add(this.version, 0, 1)
    Atomics.notify(this.version, 0)
  }
}
