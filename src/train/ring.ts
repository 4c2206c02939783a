/**
 * The gradient ring of a step's reduce-scatter (workers.ts): a few shared slots, reused within a step, through which
 * each micro-batch's gradients reach the replicas that own the other shards — so the shared memory stays at a few
 * slots whatever the gradient accumulation (one slot per micro-batch held 2·(GA+1) sets: ~48 GB for zephyr-lora's
 * GA 16 on 2 workers). Written by hand: no library does this, and it is ~100 lines over Atomics.
 *
 * A replica that computed micro-batch a claims a free slot, writes the other shards' gradients into it (the
 * embedding as its touched rows, listed after the floats), and publishes it, flagged for every other replica. Each
 * replica reads its shard of every slot flagged for it as soon as it can — between its micro-batches, while it waits
 * for a slot, and after its last one until its sum is complete — into its OrderedSum, which adds in micro-batch
 * order (an early one waits there as tensors of the shard). The last reader frees the slot. A replica waiting for a
 * slot reads meanwhile, so two replicas waiting on each other's slots free them: no deadlock.
 *
 * Control (Int32, shared): [0] a version, bumped (and waiters woken) on every publish and free; then per slot
 * [state: 0 free, −1 being written, k > 0: k readers left; micro-batch; embedding rows (−1: dense); a flag per
 * replica: 1 while it has this slot to read].
 */
import type * as tf from '@tensorflow/tfjs'
import type { Model } from '../model/mistral.ts'
import { readGrads, slotFloats, writeGrads, type OrderedSum, type Shard } from './microbatch.ts'
import { Handoff, type HandoffBuffers } from './handoff.ts'

/** The ring's shared memory, made once by the pool and sent to every worker. */
export interface RingBuffers {
  ctrl: SharedArrayBuffer
  slots: SharedArrayBuffer[]
  /** the replicas it serves (the control has a flag per replica and slot) */
  replicas: number
  /** the boards on which the LM head's weight gradient is shared out (handoff.ts), when it is deferred */
  handoff?: HandoffBuffers
}

/** How many slots: two per replica (one being written, one being read), never more than a step's micro-batches. */
export const ringSlots = (ga: number, n: number) => Math.min(ga, 2 * n)

/** A ring of `k` slots for `n` replicas of `model`: each holds every trainable gradient, and room for the embedding's rows. */
export function ringBuffers(model: Model, n: number, k: number): RingBuffers {
  const bytes = (slotFloats(model) + model.config.vocabSize) * 4
  return { ctrl: new SharedArrayBuffer((1 + k * (3 + n)) * 4), slots: Array.from({ length: k }, () => new SharedArrayBuffer(bytes)), replicas: n }
}

/** Block until the version moves from `v` (or a short time passes: the caller looks again). */
export type Wait = (ctrl: Int32Array, v: number) => void | Promise<void>

/** Worker threads block (Atomics.wait); the main thread must not, so that it hears a worker die. */
export const blockingWait: Wait = (ctrl, v) => void Atomics.wait(ctrl, 0, v, 100)

/** One replica's view of the ring. */
export class Ring {
  private readonly ctrl: Int32Array
  private readonly n: number
  /** where a slot's embedding rows start, in bytes: after the floats */
  private readonly rowsAt: number
  /** the boards on which a micro-batch's LM head weight gradient is shared out (handoff.ts), on the ring's version */
  readonly handoff: Handoff | undefined

  constructor(private readonly model: Model, private readonly buffers: RingBuffers, private readonly me: number, private readonly shard: Shard, private readonly wait: Wait) {
    this.ctrl = new Int32Array(buffers.ctrl)
    this.n = buffers.replicas
    this.rowsAt = slotFloats(model) * 4
    this.handoff = buffers.handoff && new Handoff(buffers.handoff, me, this.ctrl, wait)
  }

  /**
   * Micro-batch `a`, computed here: the other shards' gradients into a slot for their owners, this shard's into
   * `sum` (the rest disposed).
   */
  async share(a: number, grads: Map<string, tf.Tensor>, rows: Int32Array | undefined, sum: OrderedSum): Promise<void> {
    const s = await this.claim(sum)
    const slot = this.buffers.slots[s]!
    await writeGrads(this.model, grads, rows, slot, this.shard.others)
    const base = this.base(s)
    this.ctrl[base + 1] = a
    this.ctrl[base + 2] = rows ? rows.length : -1
    if (rows) new Int32Array(slot, this.rowsAt, rows.length).set(rows)
    for (let r = 0; r < this.n; r++) this.ctrl[base + 3 + r] = r === this.me ? 0 : 1
    Atomics.store(this.ctrl, base, this.n - 1) // published: the stores above are seen before it
    this.bump()
    sum.add(a, grads)
  }

  /** Read this replica's shard of every slot flagged for it into `sum`; how many it read. */
  consume(sum: OrderedSum): number {
    let read = 0
    for (let s = 0; s < this.buffers.slots.length; s++) {
      const base = this.base(s)
      if (Atomics.load(this.ctrl, base) <= 0 || Atomics.load(this.ctrl, base + 3 + this.me) !== 1) continue
      const slot = this.buffers.slots[s]!
      const count = this.ctrl[base + 2]!
      const rows = count < 0 ? undefined : new Int32Array(slot, this.rowsAt, count).slice()
      sum.add(this.ctrl[base + 1]!, readGrads(this.model, slot, rows, this.shard.mine))
      this.ctrl[base + 3 + this.me] = 0
      if (Atomics.sub(this.ctrl, base, 1) === 1) this.bump() // the last reader frees it
      read++
    }
    return read
  }

  /** Read until `sum` holds all `ga` micro-batches of the step, taking LM head blocks from the others meanwhile (handoff.ts). */
  async complete(sum: OrderedSum, ga: number): Promise<void> {
    for (;;) {
      const v = Atomics.load(this.ctrl, 0)
      this.consume(sum)
      if (sum.added >= ga) return
      if (await this.handoff?.take()) continue
      await this.wait(this.ctrl, v)
    }
  }

  /** A free slot, reading meanwhile. */
  private async claim(sum: OrderedSum): Promise<number> {
    for (;;) {
      const v = Atomics.load(this.ctrl, 0)
      for (let s = 0; s < this.buffers.slots.length; s++) if (Atomics.compareExchange(this.ctrl, this.base(s), 0, -1) === 0) return s
      if (!this.consume(sum)) await this.wait(this.ctrl, v)
    }
  }

  private base(s: number): number {
    return 1 + s * (3 + this.n)
  }

  private bump(): void {
    Atomics.add(this.ctrl, 0, 1)
    Atomics.notify(this.ctrl, 0)
  }
}
