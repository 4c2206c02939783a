/**
 * Data parallelism over the cores: the main thread is worker 0 and N−1 worker threads (worker.ts) each hold a
 * tfjs backend and a replica of the model. What is spread, and why the numbers never depend on N:
 *   - a training step's GA micro-batches: each replica takes the step's next micro-batch whenever it is free (a
 *     counter in shared memory, `takeJob`; `takeShare`, the same loop on every replica), so a longer micro-batch or
 *     a slower core holds no one back: no replica waits while a micro-batch is left, whatever the spread of lengths
 *     or core speeds. With two or more micro-batches a step, the optimizer is sharded (ZeRO stage 1): replica w
 *     keeps the moments of shard w of the parameters (microbatch.ts `shardsOf`). The gradients are reduce-scattered
 *     through a ring of a few shared slots (ring.ts): each replica writes the other shards' gradients of each
 *     micro-batch it computed, and sums its own shard's over all micro-batches in micro-batch order (microbatch.ts
 *     `OrderedSum`, the additions a single worker makes). A replica left with nothing to compute takes LM head
 *     weight-gradient blocks from one still computing (handoff.ts: the same products, the same bits). Each squares
 *     its shard's sums; the main thread adds every parameter's square in model order into the global norm and
 *     hands it out; each replica clips and steps its shard — the ops one worker would run on those parameters — and
 *     the updated shards pass between replicas through the weight slot. Checkpoints gather the moments. With one
 *     micro-batch a step, only the main thread trains and the weights go out lazily, when a worker is next asked
 *     for something (eval).
 *   - the reference precompute and eval: whole batches, taken the same way from a counter, results in batch order;
 *     the pairs sit once in shared memory (pairpack.ts).
 * A micro-batch or batch computes the same bits on any worker (same backend, same weights, same function), so
 * metrics and checkpoints are bit-identical for any N (test/workers.test.ts).
 * On a GPU backend a worker would be one device (a child process per GPU); here every worker is a CPU core.
 */
import { availableParallelism } from 'node:os'
import { AlignError } from '../errors.ts'
import type { Model } from '../model/mistral.ts'
import type { BatchStats, DpoOptions, Layout, Objective } from '../preference/objective.ts'
import type { PairIds } from '../preference/pairs.ts'
import type { PairLogps } from '../preference/reference.ts'
import * as tf from '@tensorflow/tfjs'
import type { PairPack } from './pairpack.ts'
import type { WorkerPool } from './pool.ts'
import { OrderedSum, microBatchGrads, touchedRows } from './microbatch.ts'
import type { Ring, RingBuffers } from './ring.ts'
import type { OptimConfig } from './optim.ts'

export interface WorkerInit {
  backend: string
  config: Record<string, unknown>
  params: { name: string; shape: number[]; data: Float32Array; trainable: boolean }[]
  lora?: { r: number; alpha: number; dropout: number; targets: string[]; ordinal: [string, number][] }
  stage: 'sft' | 'dpo'
  dpo?: DpoOptions
  /** the DPO batch layout (bench: forced packed or concatenated) */
  layout?: Layout
  padId: number
  /** the optimizer every replica runs in all-reduce mode */
  optim: OptimConfig
}

/** parameters' values by name, as they travel to and from workers */
export type Weights = { name: string; data: Float32Array }[]
/**
 * A step in all-reduce mode: `grads` — the worker takes micro-batches, passes each one's other shards through the
 * ring, sums its own shard of all of them and answers with its sums of squares; `update` brings the global norm, and
 * the worker steps its optimizer shard and writes the shard's new values into `weightSlot`; `shards` then brings it
 * the other replicas'.
 */
export type Update = { lr: number; maxNorm: number }
export type WorkerRequest =
  | { kind: 'init'; init: WorkerInit; me: number; workers: number }
  | { kind: 'grads'; ga: number; update: Update; ring: RingBuffers; weightSlot: SharedArrayBuffer; jobs: Job[]; next: SharedArrayBuffer }
  | { kind: 'update'; norm: number }
  | { kind: 'shards'; weightSlot: SharedArrayBuffer }
  | { kind: 'moments' }
  | { kind: 'sync'; weights: Weights; m: Weights; v: Weights; step: number }
  | { kind: 'logps'; weights?: Weights; pack: PairPack; batchSize: number; adapters: boolean; next: SharedArrayBuffer }
  | { kind: 'eval'; weights?: Weights; pack: PairPack; bounds: number[]; refs: (PairLogps | undefined)[]; next: SharedArrayBuffer }

/** A worker's answer to `grads`: the micro-batches it computed, and the sums of squares of its shard's gradients. */
export interface WorkerGrads {
  computed: { a: number; stats: BatchStats }[]
  squares: [string, number][]
  /** LM head blocks it computed for other replicas (handoff.ts) */
  headBlocksTaken: number
}

/** How many workers `--workers` means: `auto` is the cores Node reports on CPU backends, 1 on device backends. */
export function workerCount(requested: string | number | undefined, backend: { oneWorker?: string }): { n: number; why: string } {
  if (requested !== undefined && requested !== 'auto') {
    const n = Number(requested)
    if (!Number.isInteger(n) || n < 1) throw new AlignError(`--workers ${requested}: a whole number >= 1, or auto`)
    return { n, why: 'requested' }
  }
  if (backend.oneWorker) return { n: 1, why: backend.oneWorker }
  const cores = availableParallelism()
  return { n: cores, why: `auto: ${cores} cores available (os.availableParallelism)` }
}

/** Copies of tensors' data, ours to transfer (on some backends a read returns the backend's storage itself). */
export function readCopies(m: Map<string, tf.Tensor>): Promise<{ name: string; data: Float32Array }[]> {
  return Promise.all([...m].map(async ([name, v]) => ({ name, data: ((await v.data()) as Float32Array).slice() })))
}

/** The replica a worker needs: config, every parameter (memory layout), LoRA state, the objective. */
export async function workerInit(model: Model, backend: string, objective: Objective, dpo: DpoOptions | undefined, padId: number, optim: OptimConfig, layout?: Layout): Promise<WorkerInit> {
  const l = model.lora
  const data = await readCopies(model.params)
  return {
    backend, config: model.config.raw, stage: objective.stage, dpo, padId, layout, optim,
    params: [...model.params].map(([name, v], i) => ({ name, shape: [...v.shape], data: data[i]!.data, trainable: v.trainable })),
    lora: l ? { r: l.r, alpha: l.alpha, dropout: l.dropout, targets: l.targets, ordinal: [...l.ordinal] } : undefined,
  }
}

export interface Job {
  /** the micro-batch's place in the step */
  a: number
  pairs: PairIds[]
  ref?: PairLogps
  /** what its loss is divided by: its share of the step's loss (Objective.stepScales) */
  scale: number
  dropoutSeed: number
}

/**
 * The next of `count` micro-batches (or batches) for the replica asking, from the counter all replicas share
 * (`Atomics.add`: each index is handed out once), in order; undefined once all are taken.
 */
export function takeJob(count: number, next: SharedArrayBuffer): number | undefined {
  const k = Atomics.add(new Int32Array(next), 0, 1)
  return k < count ? k : undefined
}

/** The indices this replica takes (takeJob), one at a time as it asks for the next; `first` given before them. */
export function* taken(count: number, next: SharedArrayBuffer, first?: number): Generator<number> {
  if (first !== undefined) yield first
  for (let k = takeJob(count, next); k !== undefined; k = takeJob(count, next)) yield k
}

/**
 * This replica's part of a step: micro-batches taken from `next` (after `first`, given) until none is left, each
 * one's gradients into `sum` — through the `ring` in all-reduce mode (its other shards to their owners), then the
 * rest of this replica's shard from the ring until the sum is complete. The same on the main thread and in every
 * worker. `sum` is disposed on an error. Returns the stats of the micro-batches computed here.
 */
export async function takeShare(model: Model, objective: Objective, jobs: Job[], next: SharedArrayBuffer, sum: OrderedSum, o: { padId: number; ga: number; ring?: Ring; first?: number }): Promise<{ a: number; stats: BatchStats }[]> {
  const computed: { a: number; stats: BatchStats }[] = []
  try {
    for (const k of taken(jobs.length, next, o.first)) {
      o.ring?.consume(sum)
      const j = jobs[k]!
      // the LM head's dW blocks shared out: others take them as they finish
      const { grads, stats } = await microBatchGrads(model, objective, j.pairs, j.ref, { padId: o.padId, ga: o.ga, scale: j.scale, dropoutSeed: j.dropoutSeed, head: o.ring?.handoff })
      if (o.ring) await o.ring.share(j.a, grads, touchedRows(model, j.pairs, o.padId), sum)
      else sum.add(j.a, grads)
      computed.push({ a: j.a, stats })
    }
    await o.ring?.complete(sum, jobs.length)
    return computed
  } catch (e) {
    sum.dispose()
    throw e
  }
}

/**
 * The summed gradients of one optimizer step: its micro-batches (`jobs`, in micro-batch order), each computed by
 * whichever replica took it (takeJob), added in micro-batch order (microbatch.ts `OrderedSum`), and their stats in
 * that order. With a pool and `update` (all-reduce) the gradients are reduce-scattered through the ring (ring.ts):
 * the sum returned here is of this thread's shard only, and `squares` holds the sums of squares of the others'
 * (both for `pool.update`); without, this thread computes them all and `squares` is empty. `headBlocksTaken`: LM
 * head blocks a replica computed for another (handoff.ts).
 */
export async function stepGradients(model: Model, objective: Objective, pool: WorkerPool | undefined, jobs: Job[], o: { padId: number; ga: number; update?: Update }): Promise<{ grads: Map<string, tf.Tensor>; stats: BatchStats[]; squares: Map<string, number>; headBlocksTaken: number }> {
  // micro-batch 0 is this thread's: it starts at once, while the requests reach the workers
  const next = new SharedArrayBuffer(4)
  new Int32Array(next)[0] = 1
  const remote = pool && o.update && jobs.length > 1 ? await pool.grads(o.ga, jobs, next, o.update) : undefined
  const sum = new OrderedSum(model, remote && pool!.shard)
  const here = await takeShare(model, objective, jobs, next, sum, { padId: o.padId, ga: o.ga, ring: remote?.ring, first: 0 })
  const theirs = remote ? await remote.results.catch((e: Error) => (sum.dispose(), Promise.reject(e))) : { computed: [], squares: new Map<string, number>(), headBlocksTaken: 0 }
  const stats = new Map([...here, ...theirs.computed].map((r) => [r.a, r.stats]))
  const headBlocksTaken = theirs.headBlocksTaken + (remote?.ring.handoff?.taken ?? 0)
  return { grads: sum.take(), stats: jobs.map((j) => stats.get(j.a)!), squares: theirs.squares, headBlocksTaken }
}
