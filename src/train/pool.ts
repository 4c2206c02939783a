/**
 * The worker threads beside the main one (workers.ts says what is spread over them and why the numbers never depend
 * on how many): starting them with a replica each, the requests and their answers, the shared slots gradients and
 * updated weights pass through (ring.ts), the all-reduce of a step (`grads` → `update` → `shards`), the optimizer's
 * shards for a checkpoint or a resume, batches taken from a counter (reference log-probs, eval), and a worker's
 * death as one line.
 */
import { Worker } from 'node:worker_threads'
import { AlignError } from '../errors.ts'
import type { Model } from '../model/mistral.ts'
import { evalBatch, type BatchStats, type Objective } from '../preference/objective.ts'
import type { PairIds } from '../preference/pairs.ts'
import { pairLogps, type PairLogps } from '../preference/reference.ts'
import * as tf from '@tensorflow/tfjs'
import { variableOf } from '../model/backend.ts'
import { packPairs } from './pairpack.ts'
import { applyUpdate, gradSquares, normOf, readWeights, shardOf, slotFloats, trainableParams, writeWeights, type Shard } from './microbatch.ts'
import { Ring, ringBuffers, ringSlots, type RingBuffers, type Wait } from './ring.ts'
import { HANDOFF_ROOM, handoffBuffers } from './handoff.ts'
import { HEAD_VOCAB_BLOCK, headDeferrable } from '../model/logprobs.ts'
import { Optimizer } from './optim.ts'
import { readCopies, taken, type Job, type Update, type Weights, type WorkerGrads, type WorkerInit, type WorkerRequest } from './workers.ts'

// a worker thread runs TypeScript through tsx, registered inside it (loader hooks do not reach worker threads)
const BOOT = `import('tsx/esm/api').then((api) => { api.register(); return import(${JSON.stringify(new URL('./worker.ts', import.meta.url).href)}) })`

export class WorkerPool {
  private readonly pending = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void; worker: number }>()
  private nextId = 0
  /** per worker: the trainable weights changed since it last received them */
  private stale: boolean[] = []
  /** per worker: why it is gone (it exited or failed), once it is */
  private readonly dead: (string | undefined)[] = []

  /** all-reduce mode: the optimizer shard this thread (replica 0) steps, and the parameters the workers step */
  readonly shard: Shard

  private constructor(private readonly threads: Worker[], private readonly model: Model, private readonly maxRingSlots = Infinity, private readonly handoff = true) {
    this.stale = threads.map(() => false)
    this.shard = shardOf(model, threads.length + 1, 0)
    threads.forEach((w, i) => {
      const fail = (why: string) => {
        this.dead[i] ??= `worker ${i + 1} of ${threads.length + 1} ${why}; the run stops (the last checkpoint is intact)`
        for (const [id, p] of this.pending) if (p.worker === i) (this.pending.delete(id), p.reject(new AlignError(this.dead[i]!)))
      }
      w.on('message', (m: { id: number; value?: unknown; error?: string }) => {
        const p = this.pending.get(m.id)
        if (!p) return
        this.pending.delete(m.id)
        if (m.error !== undefined) p.reject(new AlignError(`worker ${i + 1}: ${m.error}`))
        else p.resolve(m.value)
      })
      w.on('error', (e) => fail(`failed: ${e.message.split('\n')[0]}`))
      w.on('exit', (code) => fail(`exited (code ${code}: out of memory or killed)`))
    })
  }

  /**
   * Start n−1 threads beside the main one, each with a replica of `model`; undefined when n is 1. `ringSlots`: at
   * most this many (tests); `handoff: false`: no LM head blocks computed for another replica (bench --compare-handoff).
   */
  static async start(n: number, model: Model, makeInit: () => Promise<WorkerInit>, o: { ringSlots?: number; handoff?: boolean } = {}): Promise<WorkerPool | undefined> {
    if (n <= 1) return undefined
    const init = await makeInit()
    const pool = new WorkerPool(Array.from({ length: n - 1 }, () => new Worker(BOOT, { eval: true })), model, o.ringSlots, o.handoff)
    await Promise.all(pool.threads.map((_, i) => pool.call(i, { kind: 'init', init, me: i + 1, workers: n })))
    return pool
  }

  /** workers including the main thread */
  get size(): number {
    return this.threads.length + 1
  }

  private call<T>(worker: number, req: WorkerRequest): Promise<T> {
    if (this.dead[worker]) return Promise.reject(new AlignError(this.dead[worker])) // posting to it would never be answered
    const id = this.nextId++
    // weights are fresh copies made for this worker: transferred, not cloned (cloning 76 MB takes ~0.4 s)
    const transfer = [
      ...('weights' in req && req.weights ? req.weights : []),
      ...(req.kind === 'sync' ? [...req.m, ...req.v] : []),
    ].map((w) => w.data.buffer as ArrayBuffer)
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, worker })
      this.threads[worker]!.postMessage({ id, req }, transfer)
    })
  }

  /** Mark the trainable weights changed (after an update or a resume): the next request carries them. */
  weightsChanged(): void {
    this.stale.fill(true)
  }

  /** The weights to send with a request to each worker (a copy of its own): only those it has not seen. */
  private weightsFor(): Promise<(Weights | undefined)[]> {
    return Promise.all(this.stale.map((stale, i) => {
      if (!stale) return undefined
      this.stale[i] = false
      return readCopies(new Map(trainableParams(this.model)))
    }))
  }

  /** updates the workers are applying (all-reduce mode): awaited before the next request, so errors surface */
  private updating: Promise<unknown>[] = []

  /**
   * All-reduce mode: the ring (ring.ts) and the weight slot, shared buffers made once and reused — filling fresh
   * memory costs more than the copy itself (backend.ts `readInto`). One weight slot is enough: a worker reads it
   * (`shards`) before it answers the next step's `grads`, and the next step's shards are written only after those
   * answers; the ring's slots are all free again when a step's sums are complete.
   */
  private ringBuffers: RingBuffers | undefined
  private weightSlot: SharedArrayBuffer | undefined
  /** the step under way: why a request failed */
  private failed: Error | undefined

  /**
   * A step's micro-batches for the workers to take their share of (all-reduce mode): every worker is asked, with all
   * the jobs and the step's counter `next` (takeJob), computes micro-batches until none is left, passes each one's
   * other shards through the ring and sums its own shard of all of them. Resolves once the requests are posted, with
   * this thread's view of the `ring` (the caller takes micro-batches too, and reads its shard from the ring) and
   * the `results` to await — the micro-batches the workers computed, each with its worker, and the sums of squares
   * of their shards' gradients (for `update`).
   */
  async grads(ga: number, jobs: Job[], next: SharedArrayBuffer, update: Update): Promise<{ results: Promise<{ computed: { a: number; stats: BatchStats; worker: number }[]; squares: Map<string, number>; headBlocksTaken: number }>; ring: Ring }> {
    // a worker handles its messages in order, so earlier updates are done before this runs; they are awaited
    // only so that their errors surface here
    const earlier = Promise.all(this.updating.splice(0))
    const k = Math.min(ringSlots(ga, this.size), this.maxRingSlots)
    if ((this.ringBuffers?.slots.length ?? 0) < k) this.ringBuffers = { ...ringBuffers(this.model, this.size, k), handoff: this.ringBuffers?.handoff }
    if (this.handoff && headDeferrable(this.model)) {
      const tokens = Math.max(...jobs.map((j) => j.pairs.reduce((n, p) => n + p.chosenIds.length + p.rejectedIds.length, 0))) // ≥ the scored tokens
      const c = this.model.config
      if ((this.ringBuffers!.handoff?.maxTokens ?? 0) < tokens) this.ringBuffers!.handoff = handoffBuffers(this.size, c.hiddenSize, c.vocabSize, HEAD_VOCAB_BLOCK, Math.ceil(tokens * HANDOFF_ROOM))
    }
    const [ring, weightSlot] = [this.ringBuffers!, (this.weightSlot ??= new SharedArrayBuffer(slotFloats(this.model) * 4))]
    this.failed = undefined
    const calls = this.threads.map((_, i) => this.call<WorkerGrads>(i, { kind: 'grads', ga, update, ring, weightSlot, jobs, next }))
    const results = Promise.all([earlier, ...calls]).then(([, ...r]) => ({
      computed: (r as WorkerGrads[]).flatMap((g, i) => g.computed.map((c) => ({ ...c, worker: i + 1 }))),
      squares: new Map((r as WorkerGrads[]).flatMap((g) => g.squares)),
      headBlocksTaken: (r as WorkerGrads[]).reduce((n, g) => n + g.headBlocksTaken, 0),
    }))
    results.catch((e: Error) => void (this.failed ??= e))
    return { results: handledLater(results), ring: new Ring(this.model, ring, 0, this.shard, this.ringWait) }
  }

  /** This thread waits for the ring without blocking: it must hear a worker fail or die. */
  private readonly ringWait: Wait = async (ctrl, v) => {
    const r = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number, ms: number): { async: boolean; value: Promise<string> | string } }).waitAsync(ctrl, 0, v, 50)
    if (r.async) {
      const alive = setTimeout(() => {}, 100) // waitAsync alone keeps no event loop running
      await r.value
      clearTimeout(alive)
    } else await new Promise((resolve) => setImmediate(resolve)) // the version moved: still let the event loop run (signals, a worker's exit)
    const dead = this.dead.find((d) => d !== undefined)
    if (dead) throw new AlignError(dead)
    if (this.failed) throw this.failed
  }

  /**
   * All-reduce mode, the update of a step whose shard-0 gradients `stepGradients` summed: the global norm from
   * every shard's sums of squares (`theirs`: the workers', sent with their micro-batches), sent to the workers;
   * this thread steps shard 0 and writes it into the weight slot; once every worker has stepped and written its
   * shard, this thread reads theirs and each worker is told to read the others'. Returns the norm before clipping.
   */
  async update(opt: Optimizer, grads: Map<string, tf.Tensor>, theirs: ReadonlyMap<string, number>, lr: number, maxNorm: number): Promise<number> {
    const slot = this.weightSlot!
    const squares = await gradSquares(grads)
    for (const [name, sq] of theirs) squares.set(name, sq)
    const norm = normOf(this.model, squares)
    this.threads.forEach((_, i) => this.updating.push(this.call(i, { kind: 'update', norm })))
    await applyUpdate(this.model, opt, grads, lr, maxNorm, this.shard.mine, norm)
    await writeWeights(this.model, this.shard.mine, slot)
    await Promise.all(this.updating.splice(0)) // every worker has stepped its shard (a worker's reply comes after)
    readWeights(this.model, this.shard.others, slot)
    this.threads.forEach((_, i) => this.updating.push(this.call(i, { kind: 'shards', weightSlot: slot })))
    return norm
  }

  /**
   * All-reduce mode: the optimizer as one replica would hold it, for a checkpoint — the step, this thread's
   * moments and copies of the workers', in the model's parameter order. `release` frees the copies.
   */
  async gatherOptimizer(opt: Optimizer): Promise<{ opt: Optimizer; release: () => void }> {
    await Promise.all(this.updating.splice(0))
    const theirs = await Promise.all(this.threads.map((_, i) => this.call<{ m: Weights; v: Weights }>(i, { kind: 'moments' })))
    const all = new Optimizer(opt.config)
    all.step = opt.step
    const copies: tf.Variable[] = []
    for (const [mine, kind, into] of [[opt.m, 'm', all.m], [opt.v, 'v', all.v]] as const) {
      const received = new Map(theirs.flatMap((t) => t[kind]).map((w) => [w.name, w.data]))
      for (const [name, p] of trainableParams(this.model)) {
        const data = received.get(name)
        if (mine.has(name)) into.set(name, mine.get(name)!)
        else if (data) {
          const copy = variableOf(tf.tensor(data, p.shape, 'float32'), false)
          copies.push(copy)
          into.set(name, copy)
        }
      }
    }
    return { opt: all, release: () => tf.dispose(copies) }
  }

  /**
   * All-reduce mode, after a resume: every replica gets the weights and the moments of its shard; this thread
   * then keeps only shard 0's.
   */
  async sync(opt: Optimizer): Promise<void> {
    const only = (m: Map<string, tf.Variable>, shard: ReadonlySet<string>) => readCopies(new Map([...m].filter(([name]) => shard.has(name))))
    await Promise.all(this.threads.map(async (_, i) => {
      const theirs = shardOf(this.model, this.size, i + 1).mine
      return this.call(i, { kind: 'sync', weights: await readCopies(new Map(trainableParams(this.model))), m: await only(opt.m, theirs), v: await only(opt.v, theirs), step: opt.step }) // a fresh copy per worker: each is transferred
    }))
    for (const map of [opt.m, opt.v]) {
      for (const name of this.shard.others) {
        map.get(name)?.dispose()
        map.delete(name)
      }
    }
  }

  /**
   * Batches [0, count), taken by every replica from one counter (takeJob) — a longer batch or a slower core holds no
   * one back — in batch order. `request` asks a worker (with the weights it lacks), `local` runs one here.
   */
  private async pulled<T>(count: number, request: (next: SharedArrayBuffer, weights: Weights | undefined) => WorkerRequest, local: (k: number) => Promise<T>): Promise<T[]> {
    const earlier = handledLater(Promise.all(this.updating.splice(0)))
    const next = new SharedArrayBuffer(4)
    const weights = await this.weightsFor()
    const remote = handledLater(Promise.all(this.threads.map((_, i) => this.call<[number, T][]>(i, request(next, weights[i])))))
    const out: T[] = []
    for (const k of taken(count, next)) out[k] = await local(k)
    await earlier
    for (const r of await remote) for (const [k, v] of r) out[k] = v
    return out
  }

  /** Summed completion log-probs of `pairs` (the reference precompute), batches spread over all workers. */
  async logps(pairs: PairIds[], batchSize: number, adapters: boolean, onBatch?: (done: number) => void): Promise<PairLogps> {
    const pack = packPairs(pairs)
    const parts = await this.pulled(Math.ceil(pairs.length / batchSize), (next, weights) => ({ kind: 'logps', weights, pack, batchSize, adapters, next }), (k) => {
      onBatch?.(k * batchSize) // batches before k are taken, most of them done
      return pairLogps(this.model, pairs.slice(k * batchSize, (k + 1) * batchSize), batchSize, adapters)
    })
    return { chosen: parts.flatMap((p) => p.chosen), rejected: parts.flatMap((p) => p.rejected) }
  }

  /** Eval batches spread over all workers, the stats in batch order. */
  async eval(objective: Objective, batches: { pairs: PairIds[]; ref?: PairLogps }[], padId: number): Promise<BatchStats[]> {
    const pack = packPairs(batches.flatMap((b) => b.pairs))
    const bounds = [0]
    for (const b of batches) bounds.push(bounds.at(-1)! + b.pairs.length) // batch k: pairs [bounds[k], bounds[k + 1])
    const refs = batches.map((b) => b.ref)
    return this.pulled(batches.length, (next, weights) => ({ kind: 'eval', weights, pack, bounds, refs, next }), (k) => evalBatch(objective, this.model, batches[k]!.pairs, batches[k]!.ref, padId))
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.updating.splice(0)) // the last step's updates: let them finish (or fail) first
    const threads = [...this.threads]
    this.threads.length = 0
    await Promise.all(threads.map((w) => w.terminate()))
  }
}

/**
 * A promise awaited later, after other work: marked handled now, so that a worker dying meanwhile does not end the
 * process as an unhandled rejection; the `await` still throws its one-line error.
 */
function handledLater<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {})
  return p
}
