/**
 * A data-parallel worker (workers.ts): its own tfjs backend and a replica of the model, answering one message at a
 * time — new weights, a micro-batch's gradients, reference log-probs of a chunk of pairs, eval batches. It runs the
 * same functions as the main thread (microbatch.ts, preference/), so its numbers are the main thread's.
 */
import { parentPort } from 'node:worker_threads'
import * as tf from '@tensorflow/tfjs'
import { explainAbort } from '../errors.ts'
import { initBackend, variableOf } from '../model/backend.ts'
import { parseConfig } from '../model/config.ts'
import type { LoraState } from '../model/lora.ts'
import type { Model } from '../model/mistral.ts'
import { dpoObjective, evalBatch, sftObjective, type BatchStats, type Objective } from '../preference/objective.ts'
import { pairLogps, type PairLogps } from '../preference/reference.ts'
import { packedCount, unpackPairs } from './pairpack.ts'
import { readCopies, takeShare, taken, type Update, type WorkerGrads, type WorkerInit, type WorkerRequest } from './workers.ts'
import { OrderedSum, applyUpdate, gradSquares, readWeights, shardOf, writeWeights, type Shard } from './microbatch.ts'
import { Ring, blockingWait } from './ring.ts'
import { Optimizer } from './optim.ts'

let model: Model | undefined
let objective: Objective | undefined
let padId = 0
let opt: Optimizer | undefined
/** all-reduce mode: this step's update, its summed gradients (of this replica's shard) until the norm comes, and the weight slot */
let pending: { update: Update; grads: Map<string, tf.Tensor>; weightSlot: SharedArrayBuffer } | undefined
/** all-reduce mode: the parameters this replica steps (its optimizer shard, workers.ts), and all the others */
let shard: Shard | undefined
/** this replica's index (the main thread is 0) */
let me = 0

function build(init: WorkerInit): void {
  const params = new Map(init.params.map((p) => [p.name, variableOf(tf.tensor(p.data, p.shape, 'float32'), p.trainable)]))
  model = { config: parseConfig(init.config), params }
  if (init.lora) model.lora = { ...init.lora, enabled: true, dropoutSeed: undefined, ordinal: new Map(init.lora.ordinal) } satisfies LoraState
  objective = init.stage === 'dpo' ? dpoObjective(init.dpo!, init.layout) : sftObjective()
  padId = init.padId
  opt = new Optimizer(init.optim)
}

function setWeights(weights: { name: string; data: Float32Array }[] | undefined): void {
  for (const w of weights ?? []) {
    const v = model!.params.get(w.name)!
    const t = tf.tensor(w.data, v.shape, 'float32')
    v.assign(t)
    t.dispose()
  }
}

async function handle(req: WorkerRequest): Promise<{ value: unknown; transfer: ArrayBuffer[] }> {
  switch (req.kind) {
    case 'init': {
      await initBackend(req.init.backend)
      build(req.init)
      shard = shardOf(model!, req.workers, req.me)
      me = req.me
      return { value: true, transfer: [] }
    }
    case 'grads': {
      // all-reduce: this replica's share of the step's micro-batches, and its shard of the sum from the ring
      const sum = new OrderedSum(model!, shard)
      const ring = new Ring(model!, req.ring, me, shard!, blockingWait)
      const computed = await takeShare(model!, objective!, req.jobs, req.next, sum, { padId, ga: req.ga, ring })
      pending = { update: req.update, grads: sum.take(), weightSlot: req.weightSlot }
      return { value: { computed, squares: [...(await gradSquares(pending.grads))], headBlocksTaken: ring.handoff?.taken ?? 0 } satisfies WorkerGrads, transfer: [] }
    }
    case 'update': {
      // the global norm: clip, step this replica's shard, write it to the weight slot
      const { update: { lr, maxNorm }, grads, weightSlot } = pending!
      pending = undefined
      await applyUpdate(model!, opt!, grads, lr, maxNorm, shard!.mine, req.norm)
      await writeWeights(model!, shard!.mine, weightSlot)
      return { value: true, transfer: [] }
    }
    case 'shards':
      readWeights(model!, shard!.others, req.weightSlot)
      return { value: true, transfer: [] }
    case 'moments': {
      const moments = { m: await readCopies(opt!.m), v: await readCopies(opt!.v) }
      return { value: moments, transfer: [...moments.m, ...moments.v].map((w) => w.data.buffer as ArrayBuffer) }
    }
    case 'sync': {
      setWeights(req.weights)
      opt!.dispose()
      for (const [map, ws] of [[opt!.m, req.m], [opt!.v, req.v]] as const) for (const w of ws) map.set(w.name, variableOf(tf.tensor(w.data, model!.params.get(w.name)!.shape, 'float32'), false))
      opt!.step = req.step
      return { value: true, transfer: [] }
    }
    case 'logps': {
      setWeights(req.weights)
      const [bs, count] = [req.batchSize, Math.ceil(packedCount(req.pack) / req.batchSize)]
      const out: [number, PairLogps][] = []
      for (const k of taken(count, req.next)) out.push([k, await pairLogps(model!, unpackPairs(req.pack, k * bs, (k + 1) * bs), bs, req.adapters)])
      return { value: out, transfer: [] }
    }
    case 'eval': {
      setWeights(req.weights)
      const out: [number, BatchStats][] = []
      for (const k of taken(req.refs.length, req.next)) out.push([k, await evalBatch(objective!, model!, unpackPairs(req.pack, req.bounds[k]!, req.bounds[k + 1]!), req.refs[k], padId)])
      return { value: out, transfer: [] }
    }
  }
}

/** Messages are handled one at a time, in the order they came: a handler that awaits a read-back finishes first. */
let queue: Promise<unknown> = Promise.resolve()
parentPort!.on('message', (msg: { id: number; req: WorkerRequest }) => {
  queue = queue.then(() => handle(msg.req)).then(
    ({ value, transfer }) => parentPort!.postMessage({ id: msg.id, value }, transfer),
    (e: Error) => parentPort!.postMessage({ id: msg.id, error: (explainAbort(e) as Error).message?.split('\n')[0] ?? String(e) }),
  )
})
