/**
 * A training step in parts, the same in the main thread and in every worker (workers.ts), so a micro-batch gives the
 * same bits wherever it runs:
 *   microBatchGrads   one micro-batch's gradients: its share of the step's loss (Objective.stepScales),
 *                     differentiated with respect to the trainable parameters, LoRA dropout seeded by the
 *                     micro-batch's place in the stream
 *   OrderedSum        the step's sum, added in micro-batch order (of every parameter, or of one replica's shard);
 *                     early micro-batches wait in it
 *   gradSquares, normOf   the global norm from per-parameter sums of squares, wherever each was computed
 *   applyUpdate       clip, then the optimizer's step (of all parameters, or of one replica's shard)
 *   writeGrads / readGrads   a micro-batch's gradients (or some parameters' of them) through a shared slot (ring.ts)
 *   shardsOf, shardOf, writeWeights / readWeights   the optimizer's shards, and updated weights through a slot
 */
import * as tf from '@tensorflow/tfjs'
import { headWeightGrad, type HeadBackward } from '../model/autograd.ts'
import { withAdapters } from '../model/lora.ts'
import { HEAD, deferringHeadGrad, headDeferrable } from '../model/logprobs.ts'
import type { Model } from '../model/mistral.ts'
import type { BatchStats, Objective } from '../preference/objective.ts'
import type { PairIds } from '../preference/pairs.ts'
import type { PairLogps } from '../preference/reference.ts'
import { readInto, tensorCopy } from '../model/backend.ts'
import { Optimizer, clipScale } from './optim.ts'

export const trainableParams = (model: Model): [string, tf.Variable][] => [...model.params].filter(([, p]) => p.trainable)

/** LoRA dropout seed of micro-batch k of the stream (the same on every worker and after a resume). */
export const dropoutSeed = (seed: number, k: number) => seed * 1_000_003 + k

/**
 * Where a deferred LM head weight gradient goes: `open` gets its parts as the head's backward hands them on (inside
 * the backward pass), `headGrad` computes it after the rest of the backward pass (handoff.ts: the parts shared out).
 */
export interface HeadGrad {
  open(d: HeadBackward): void
  headGrad(d: HeadBackward): Promise<tf.Tensor>
}

/**
 * One micro-batch's gradients of every trainable parameter, and its stats. An untied, trained LM head's weight
 * gradient is computed last, after the rest of the backward pass (logprobs.ts `deferringHeadGrad`): here by default,
 * or by `head`, with a replica that finished its share first taking part of it (handoff.ts) — the same bits.
 */
export async function microBatchGrads(model: Model, objective: Objective, pairs: PairIds[], ref: PairLogps | undefined, o: { padId: number; ga: number; scale: number; dropoutSeed: number; head?: HeadGrad }): Promise<{ grads: Map<string, tf.Tensor>; stats: BatchStats }> {
  const trainable = trainableParams(model)
  const deferred = headDeferrable(model)
  const heads: HeadBackward[] = []
  let stats: (() => Promise<Omit<BatchStats, 'loss'>>) | undefined
  const { value, grads } = withAdapters(model, true, () => deferringHeadGrad((d) => (heads.push(d), o.head?.open(d)), () => tf.variableGrads(() => {
    const r = objective.step(model, pairs, ref, o.padId, o.scale)
    stats = r.stats
    return r.loss
  }, trainable.filter(([name]) => !deferred || name !== HEAD).map(([, p]) => p))), o.dropoutSeed)
  if (deferred && heads.length !== 1) throw new Error(`microBatchGrads: ${heads.length} LM head passes in one micro-batch; one is handled`)
  const [lossData, batchStats] = await Promise.all([value.data(), stats!()]) // one wait for the device
  value.dispose()
  const out = new Map(trainable.map(([name, p]) => [name, grads[p.name]!]))
  if (deferred) out.set(HEAD, await (o.head ? o.head.headGrad(heads[0]!) : headWeightGrad(heads[0]!)))
  return { grads: out, stats: { ...batchStats, loss: lossData[0]! * o.ga } }
}

type Grads = Map<string, tf.Tensor>

/**
 * The sum of a step's micro-batch gradients, added in micro-batch order whatever order they come in: the additions
 * a single worker makes (parameter by parameter, in the model's order), so every replica and every worker count
 * gets the same bits. With `shard`, only those parameters are summed (a replica's optimizer shard: a
 * reduce-scatter, ring.ts) and the rest of each added set is disposed. A micro-batch is added once all before it
 * are in; one that comes early waits here, as tensors (of the shard). Added tensors are disposed.
 */
export class OrderedSum {
  private acc: Grads | undefined
  private readonly early = new Map<number, Grads>()
  private readonly names: string[]
  /** how many micro-batches are in the sum */
  added = 0

  /** `shard`: this replica's (shardOf), whose parameters it sums; all of them without */
  constructor(model: Model, shard?: Shard) {
    this.names = trainableParams(model).map(([name]) => name).filter((name) => !shard || shard.mine.has(name))
  }

  /** Add micro-batch `a`'s gradients (this takes them over). */
  add(a: number, grads: Grads): void {
    this.early.set(a, this.kept(grads))
    for (let next = this.early.get(this.added); next; next = this.early.get(this.added)) {
      this.early.delete(this.added++)
      const acc = this.acc
      if (!acc) {
        this.acc = next
        continue
      }
      for (const name of this.names) {
        const [prev, add] = [acc.get(name)!, next.get(name)!]
        acc.set(name, tf.add(prev, add))
        tf.dispose([prev, add])
      }
    }
  }

  /** micro-batches that came early and wait to be added */
  get waiting(): number {
    return this.early.size
  }

  /** The sum of micro-batches [0, added); the caller owns it. */
  take(): Grads {
    if (!this.acc || this.early.size) throw new Error(`OrderedSum: micro-batch ${this.added} missing`)
    const acc = this.acc
    this.acc = undefined
    return acc
  }

  dispose(): void {
    for (const m of [this.acc, ...this.early.values()]) if (m) tf.dispose([...m.values()])
    this.acc = undefined
    this.early.clear()
  }

  /** The parameters summed here; the rest disposed. */
  private kept(grads: Grads): Grads {
    const kept = new Map(this.names.map((name) => [name, grads.get(name)!]))
    tf.dispose([...grads].filter(([name]) => !kept.has(name)).map(([, g]) => g))
    return kept
  }
}

/** Each gradient's sum of squares (float32, as the backend computes it; one read for all), by parameter name. */
export async function gradSquares(grads: Map<string, tf.Tensor>): Promise<Map<string, number>> {
  if (!grads.size) return new Map()
  const sq = tf.tidy(() => tf.stack([...grads.values()].map((g) => tf.sum(tf.square(g)))))
  const values = (await sq.data()) as Float32Array
  sq.dispose()
  return new Map([...grads.keys()].map((name, i) => [name, values[i]!]))
}

/**
 * The global gradient norm (torch's clip_grad_norm_ total_norm) from every trainable parameter's sum of squares,
 * added in float64 in the model's order: the same bits whichever replica computed each sum (workers.ts: each
 * replica squares its own shard), so for any number of workers.
 */
export function normOf(model: Model, squares: ReadonlyMap<string, number>): number {
  let total = 0
  for (const [name] of trainableParams(model)) {
    const s = squares.get(name)
    if (s === undefined) throw new Error(`normOf: no sum of squares for ${name}`)
    total += s
  }
  return Math.sqrt(total)
}

/**
 * One optimizer update from summed gradients: the global norm over all of them, the clip (torch's
 * clip_grad_norm_), then the optimizer's step at `lr` — of every trainable parameter, or of those in `shard` only
 * (workers.ts: each replica steps its own shard, and holds only the shard's gradients; it is then given the
 * `norm`, from every shard's sums of squares). A non-finite norm applies nothing (the main thread stops the run
 * there). The gradients are disposed. Returns the norm before clipping.
 */
export async function applyUpdate(model: Model, opt: Optimizer, grads: Map<string, tf.Tensor>, lr: number, maxNorm: number, shard?: ReadonlySet<string>, norm?: number): Promise<number> {
  norm ??= normOf(model, await gradSquares(grads))
  if (Number.isFinite(norm)) {
    const scale = clipScale(norm, maxNorm)
    const params = new Map(trainableParams(model).filter(([name]) => !shard || shard.has(name)))
    const clipped = scale === undefined ? grads : new Map([...params.keys()].map((name) => [name, tf.mul(grads.get(name)!, scale)]))
    opt.apply(params, clipped, lr)
    if (clipped !== grads) tf.dispose([...clipped.values()])
  }
  tf.dispose([...grads.values()])
  return norm
}

const EMBED = 'model.embed_tokens.weight'

/**
 * The embedding rows a micro-batch's gradient can touch: its token ids and the pad id. The embedding gradient is
 * a scatter of those ids (autograd.ts `gatherRows`), so every other row is exactly zero and need not be sent —
 * unless the table is tied to the LM head, whose gradient is dense.
 */
export function touchedRows(model: Model, pairs: PairIds[], padId: number): Int32Array | undefined {
  if (model.config.tieWordEmbeddings || !model.params.get(EMBED)?.trainable) return undefined
  const ids = new Set<number>([padId])
  for (const p of pairs) for (const xs of [p.promptIds, p.chosenIds, p.rejectedIds]) for (const t of xs) ids.add(t)
  return Int32Array.from([...ids].sort((a, b) => a - b))
}

/**
 * A gradient slot: one micro-batch's gradients as they pass between replicas, in memory every worker maps (a
 * SharedArrayBuffer the pool makes once and reuses, ring.ts). The trainable parameters sit back to back in the
 * model's order; the embedding's holds only the touched rows, listed in `rows` (ring.ts stores them after the floats).
 */
export const slotFloats = (model: Model) => trainableParams(model).reduce((n, [, p]) => n + p.size, 0)

/**
 * Write a micro-batch's gradients into `slot` — of the parameters in `names` (default: all), each at its place —
 * the embedding's as `rows` only (touchedRows; undefined: dense).
 */
export async function writeGrads(model: Model, grads: Map<string, tf.Tensor>, rows: Int32Array | undefined, slot: SharedArrayBuffer, names?: ReadonlySet<string>): Promise<void> {
  for (const [name, p, at] of slotPlaces(model)) {
    if (names && !names.has(name)) continue
    const g = grads.get(name)!
    if (name === EMBED && rows) {
      const picked = tf.tidy(() => tf.gather(g, tf.tensor1d(rows, 'int32'))) // [rows, hidden]
      await readInto(picked, new Float32Array(slot, at * 4, picked.size))
      picked.dispose()
    } else {
      await readInto(g, new Float32Array(slot, at * 4, p.size))
    }
  }
}

/**
 * The gradients in `slot` of the parameters in `names` (default: all) as tensors of their own (the slot is reused),
 * sparse rows scattered back into zeros (bit-identical to the dense tensor).
 */
export function readGrads(model: Model, slot: SharedArrayBuffer, rows: Int32Array | undefined, names?: ReadonlySet<string>): Map<string, tf.Tensor> {
  return new Map(slotPlaces(model).filter(([name]) => !names || names.has(name)).map(([name, p, at]) => {
    const sparse = name === EMBED && rows
    const data = new Float32Array(slot, at * 4, sparse ? rows.length * p.shape[1]! : p.size)
    if (!sparse) return [name, tensorCopy(data, p.shape)]
    return [name, tf.tidy(() => tf.scatterND(tf.tensor2d(rows, [rows.length, 1], 'int32'), tensorCopy(data, [rows.length, p.shape[1]!]), p.shape))]
  }))
}

/**
 * The optimizer's shards (ZeRO stage 1): the trainable parameters cut, in model order, into `n` runs of about equal
 * size (a parameter goes to the run its middle falls in). Replica w steps shard w only and keeps moments for it.
 */
export function shardsOf(model: Model, n: number): Set<string>[] {
  const params = trainableParams(model)
  const total = params.reduce((a, [, p]) => a + p.size, 0)
  const shards = Array.from({ length: n }, () => new Set<string>())
  let before = 0
  for (const [name, p] of params) {
    shards[Math.min(n - 1, Math.floor(((before + p.size / 2) * n) / total))]!.add(name)
    before += p.size
  }
  return shards
}

/** Replica w's optimizer shard: its parameters, and every other trainable one (what the other replicas step). */
export interface Shard {
  mine: ReadonlySet<string>
  others: ReadonlySet<string>
}

/** Replica w's shard of n. */
export function shardOf(model: Model, n: number, w: number): Shard {
  const mine = shardsOf(model, n)[w]!
  return { mine, others: new Set(trainableParams(model).map(([name]) => name).filter((name) => !mine.has(name))) }
}

/** Where each trainable parameter sits in a slot (in floats): back to back in the model's order. */
function slotPlaces(model: Model): [string, tf.Variable, number][] {
  let at = 0
  return trainableParams(model).map(([name, p]) => {
    const place: [string, tf.Variable, number] = [name, p, at]
    at += p.size
    return place
  })
}

/** Write the values of the parameters in `names` into `slot`, each at its place (dense). */
export async function writeWeights(model: Model, names: ReadonlySet<string>, slot: SharedArrayBuffer): Promise<void> {
  for (const [name, p, at] of slotPlaces(model)) if (names.has(name)) await readInto(p, new Float32Array(slot, at * 4, p.size))
}

/** Set the parameters in `names` to the values in `slot` (written by writeWeights). */
export function readWeights(model: Model, names: ReadonlySet<string>, slot: SharedArrayBuffer): void {
  for (const [name, p, at] of slotPlaces(model)) {
    if (!names.has(name)) continue
    const t = tensorCopy(new Float32Array(slot, at * 4, p.size), p.shape)
    p.assign(t)
    t.dispose()
  }
}
