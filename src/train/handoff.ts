/**
 * The LM head's weight gradient, shared out (the all-reduce step of workers.ts): a replica that has finished its
 * share of the step computes vocabulary blocks of another's dW = hᵀ·g instead of waiting for it. On this 2-core VM
 * one replica often finishes 0.1–0.7 s before the other (which core is slower changes from minute to minute), with
 * real data's spread of lengths two micro-batches differ in work anyway, and the head's dW is ~0.3 s of a tiny-bench
 * micro-batch. Written by hand: no library does this; it is Atomics over
 * shared memory, like ring.ts, whose version counter and wait it shares.
 *
 * The head's backward runs first in the backward pass; its dW is left out of autograd (logprobs.ts
 * `deferringHeadGrad`) and computed last. So the owner puts its parts on a board as soon as the head's backward has
 * made them, hᵀ and every block's g (`open`, inside the backward pass: 8–13 ms to copy tiny-bench's 530 × 32,000 floats of g),
 * and a replica with nothing left to do can take blocks while the owner is still in the rest of its backward pass.
 * Per replica, a board: a state per block, 0 (free) once the board is open; the owner claims free blocks from the
 * first (1), a taker from the last (2, then 4 once its product is in the board's gradient buffer), each by
 * compareExchange, so a block is computed once. The owner, out of free blocks, waits for those taken to be 4 and
 * reads them. A closed board has no free block, and the owner writes the next micro-batch's parts only then: no
 * taker reads a board while it changes.
 *
 * The bits are the owner's: a block taken elsewhere is the same product (autograd.ts `headBlockGrad`) of copies of
 * the same hᵀ and g_b on the same backend, and lands in its own columns. Where the backend cannot read inside the
 * backward pass (backend.ts `readIntoSync`), the board opens after it, when the owner reaches the head's dW.
 *
 * Control (Int32, shared), per replica: [tokens N, a state per block].
 */
import * as tf from '@tensorflow/tfjs'
import { headBlockGrad, headWeightGrad, type HeadBackward } from '../model/autograd.ts'
import { readInto, readIntoSync, tensorCopy } from '../model/backend.ts'
import type { Wait } from './ring.ts'

/** The boards' shared memory, made by the pool (sized for the longest micro-batch it has seen) and sent to every worker. */
export interface HandoffBuffers {
  ctrl: SharedArrayBuffer
  /** per replica: hᵀ [D, maxTokens], every block's g [N, block] one after another (maxTokens × V), dW [D, V] */
  hT: SharedArrayBuffer[]
  g: SharedArrayBuffer[]
  dw: SharedArrayBuffer[]
  replicas: number
  hidden: number
  vocab: number
  block: number
  maxTokens: number
}

const TOKENS = 0
const STATE = 1
const [FREE, OWNER, TAKEN, DONE] = [0, 1, 2, 4]

/** How much longer than the longest micro-batch so far the pool makes the boards, so that slightly longer ones fit. */
export const HANDOFF_ROOM = 1.25

/** The floats of one replica's board (its control words aside): hᵀ [D, maxTokens], g [maxTokens, V], dW [D, V]. */
const boardFloats = (hidden: number, vocab: number, maxTokens: number) => ({ hT: hidden * maxTokens, g: maxTokens * vocab, dw: hidden * vocab })

/** The shared memory of one replica's board, in bytes (without its control words). */
export const boardBytes = (hidden: number, vocab: number, maxTokens: number) => 4 * Object.values(boardFloats(hidden, vocab, maxTokens)).reduce((a, b) => a + b)

/** Control words per board: the token count and a state per block. */
const boardWords = (vocab: number, block: number) => STATE + Math.ceil(vocab / block)

export function handoffBuffers(replicas: number, hidden: number, vocab: number, block: number, maxTokens: number): HandoffBuffers {
  const floats = boardFloats(hidden, vocab, maxTokens)
  const each = (n: number) => Array.from({ length: replicas }, () => new SharedArrayBuffer(n * 4))
  const ctrl = new Int32Array(new SharedArrayBuffer(replicas * boardWords(vocab, block) * 4))
  ctrl.fill(OWNER) // closed: no block free (the token counts are written before a board opens)
  return { ctrl: ctrl.buffer as SharedArrayBuffer, hT: each(floats.hT), g: each(floats.g), dw: each(floats.dw), replicas, hidden, vocab, block, maxTokens }
}

/** One replica's view of every board: its own (as owner) and the others' (to take from). */
export class Handoff {
  /** blocks this replica computed for others (a view is made per step, with its Ring) */
  taken = 0
  private readonly blocks: number
  /** the parts this replica's board was opened with, until its headGrad */
  private opened: HeadBackward | undefined

  /** `version`: the ring's control (its [0] is bumped on every change, and waited on) */
  constructor(private readonly b: HandoffBuffers, private readonly me: number, private readonly version: Int32Array, private readonly wait: Wait) {
    this.blocks = Math.ceil(b.vocab / b.block)
  }

  /** The owner's side, inside the backward pass as the head hands its parts on: open the board, if they fit and the backend reads here. */
  open(d: HeadBackward): void {
    if (this.fits(d) && this.copies(d).every(([t, to]) => readIntoSync(t, to))) this.publish(d)
  }

  /** The owner's side, after the rest of the backward pass: the head's weight gradient [D, V], the blocks taken by others read back. */
  async headGrad(d: HeadBackward): Promise<tf.Tensor> {
    if (!this.fits(d)) return headWeightGrad(d)
    if (this.opened !== d) {
      for (const [t, to] of this.copies(d)) await readInto(t, to)
      this.publish(d)
    }
    this.opened = undefined
    const c = this.board(this.me)
    const dw: tf.Tensor[] = []
    for (let i = 0; i < this.blocks; i++) if (Atomics.compareExchange(c, STATE + i, FREE, OWNER) === FREE) dw[i] = headBlockGrad(d.hT, d.g[i]!)
    for (;;) {
      const v = Atomics.load(this.version, 0)
      if (!Array.from({ length: this.blocks }, (_, i) => Atomics.load(c, STATE + i)).includes(TAKEN)) break
      await this.wait(this.version, v)
    }
    for (let i = 0; i < this.blocks; i++) dw[i] ??= tensorCopy(this.dwView(this.me, i), [this.b.hidden, this.width(i)])
    const dW = tf.concat(dw, 1)
    tf.dispose([d.hT, ...d.g, ...dw])
    return dW
  }

  /** The taker's side, for a replica waiting for the others: compute one free block of another board, the last first. Whether it did. */
  async take(): Promise<boolean> {
    for (let r = 0; r < this.b.replicas; r++) {
      if (r === this.me) continue
      const c = this.board(r)
      for (let i = this.blocks - 1; i >= 0; i--) {
        if (Atomics.load(c, STATE + i) === FREE && Atomics.compareExchange(c, STATE + i, FREE, TAKEN) === FREE) return (await this.compute(r, c, i), true)
      }
    }
    return false
  }

  /** Blocked-head parts that fit the board (the chunked head's dW comes `ready`). */
  private fits(d: HeadBackward): d is Extract<HeadBackward, { g: tf.Tensor2D[] }> {
    return !('ready' in d) && d.hT.shape[1] <= this.b.maxTokens && d.g.length === this.blocks
  }

  /** Each part and its place on this replica's board: hᵀ, then every block's g. */
  private copies(d: Extract<HeadBackward, { g: tf.Tensor2D[] }>): [tf.Tensor, Float32Array][] {
    const N = d.hT.shape[1]
    return [[d.hT, this.hTView(this.me, N)], ...d.g.map((g, i): [tf.Tensor, Float32Array] => [g, this.gView(this.me, i, N)])]
  }

  /** The parts are on the board: free its blocks. */
  private publish(d: Extract<HeadBackward, { g: tf.Tensor2D[] }>): void {
    const c = this.board(this.me)
    Atomics.store(c, TOKENS, d.hT.shape[1])
    for (let i = 0; i < this.blocks; i++) Atomics.store(c, STATE + i, FREE)
    this.opened = d
    this.bump()
  }

  /** Compute block i of board r, taken, into r's gradient buffer. */
  private async compute(r: number, c: Int32Array, i: number): Promise<void> {
    const N = Atomics.load(c, TOKENS)
    const g = tensorCopy(this.gView(r, i, N), [N, this.width(i)]) as tf.Tensor2D
    const hT = tensorCopy(this.hTView(r, N), [this.b.hidden, N]) as tf.Tensor2D
    const dw = headBlockGrad(hT, g)
    await readInto(dw, this.dwView(r, i))
    tf.dispose([g, hT, dw])
    Atomics.store(c, STATE + i, DONE)
    this.taken++
    this.bump()
  }

  private board(r: number): Int32Array {
    const n = boardWords(this.b.vocab, this.b.block)
    return new Int32Array(this.b.ctrl, r * n * 4, n)
  }

  private width(i: number): number {
    return Math.min(this.b.block, this.b.vocab - i * this.b.block)
  }

  /** hᵀ [D, N] in replica r's board */
  private hTView(r: number, N: number): Float32Array {
    return new Float32Array(this.b.hT[r]!, 0, this.b.hidden * N)
  }

  /** block i's g [N, width] in replica r's board: after the i full blocks before it */
  private gView(r: number, i: number, N: number): Float32Array {
    return new Float32Array(this.b.g[r]!, N * i * this.b.block * 4, N * this.width(i))
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
