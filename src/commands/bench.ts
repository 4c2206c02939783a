/**
 * `align bench dpo`: the speed of one DPO optimizer step on pre-tokenized pairs — forward + backward of the
 * policy on a batch of `batchPairs` pairs + the AdamW update, reference log-probs read from the file
 * (`reference_chosen_logp` / `reference_rejected_logp`, 0 when absent). Warm-up steps are not timed.
 */
import { existsSync, writeFileSync } from 'node:fs'
import * as tf from '@tensorflow/tfjs'
import { AlignError } from '../errors.ts'
import { readJson } from '../files.ts'
import { readRows } from '../rows.ts'
import { Rng } from '../rng.ts'
import { initBackend } from '../model/backend.ts'
import { PRESETS, parseConfig } from '../model/config.ts'
import { disposeModel, type Model } from '../model/mistral.ts'
import { initModel } from '../model/weights.ts'
import { dpoObjective, type Layout } from '../preference/objective.ts'
import { isTokenized, pairTokens, tokenizedPair } from '../preference/pairs.ts'
import { ADAMW_DEFAULTS, Optimizer } from '../train/optim.ts'
import { applyUpdate, microBatchGrads } from '../train/microbatch.ts'
import { WorkerPool } from '../train/pool.ts'
import { stepGradients, workerCount, workerInit } from '../train/workers.ts'

export interface BenchArgs {
  model: string
  pairs: string
  batchPairs: number
  steps: number
  warmup: number
  backend?: string
  /** auto: per batch, the layout with fewer FLOPs (as training); packed: one [prompt, chosen, rejected] row per pair; concatenated: TRL's 2n rows */
  layout: Layout
  /** two extra, profiled steps: matMul GFLOP/s inside the step against the best plain matMul */
  profile?: boolean
  /** data-parallel workers: the step's pairs split into one micro-batch per worker, unless `microBatches` */
  workers?: number | 'auto'
  /**
   * the micro-batches a step's pairs are split into (gradient accumulation), taken by whichever worker is free:
   * default one per worker, the fewest there are to spread; more show the scaling at a recipe's GA
   */
  microBatches?: number
  /**
   * with workers: after each step, the same micro-batches on this thread alone (a second policy, what
   * `--workers 1` runs for the same recipe), then the step's pairs as one micro-batch (a third), each timed apart
   */
  paired?: boolean
  /**
   * with workers: each step also run by the same workers with the LM head's hand-off off (handoff.ts: no replica
   * computes head blocks for another), a policy of its own timed apart, its weights checked bit-identical
   */
  compareHandoff?: boolean
  /**
   * a start barrier for processes timed side by side: after the warm-up steps, write `<file>.ready.<pid>` and wait
   * until `<file>` exists (the caller makes it once every process is ready), so the timed steps run together
   */
  startAfter?: string
}

export async function benchDpo(a: BenchArgs): Promise<Record<string, unknown>> {
  const backend = await initBackend(a.backend)
  const raw = a.model.startsWith('preset:') ? PRESETS[a.model.slice(7)] : existsSync(a.model) ? readJson(a.model) : undefined
  if (!raw) throw new AlignError(`--model ${a.model}: a config.json path or preset:<name> (${Object.keys(PRESETS).join(', ')})`)
  const config = parseConfig(raw, a.model)
  const rows = await readRows(a.pairs)
  if (!rows.every(isTokenized)) throw new AlignError(`${a.pairs}: bench needs pre-tokenized rows (prompt_ids, chosen_ids, rejected_ids)`)
  const pairs = rows.map(tokenizedPair)
  const ref = (k: string) => rows.map((r) => (typeof r[k] === 'number' ? (r[k] as number) : 0))
  const refC = ref('reference_chosen_logp')
  const refR = ref('reference_rejected_logp')
  const model = initModel(config, Rng.fromKey('bench'))
  const opt = new Optimizer(ADAMW_DEFAULTS)
  const dpo = { beta: 0.1, lossType: 'sigmoid' as const, labelSmoothing: 0 }
  const objective = dpoObjective(dpo, a.layout)
  const workers = workerCount(a.workers ?? 1, backend)
  const W = workers.n
  const K = a.microBatches ?? W
  if (!Number.isInteger(K) || K < W || K > a.batchPairs) {
    const what = a.microBatches === undefined ? `--batch-pairs ${a.batchPairs}` : `--micro-batches ${a.microBatches}`
    throw new AlignError(`${what}: a step needs a micro-batch per worker (${W}) and a pair per micro-batch (--batch-pairs ${a.batchPairs}); --micro-batches from ${W} to ${a.batchPairs}`)
  }
  if (a.compareHandoff && W < 2) throw new AlignError('--compare-handoff: the hand-off is between workers; use --workers 2 or more')
  const pool = await WorkerPool.start(W, model, () => workerInit(model, backend.active, objective, dpo, 0, ADAMW_DEFAULTS, a.layout))
  const LR = 1e-6
  // --paired: a second policy, trained on this thread alone, steps right after each step of the workers on the same
  // micro-batches — what align train --workers 1 runs for the same recipe, so the two policies stay bit-identical
  // (checked at the end): this VM's speed drifts over minutes, and steps next to each other give the scaling without it
  const solo: Trainer | undefined = a.paired && pool ? { model: initModel(config, Rng.fromKey('bench')), opt: new Optimizer(ADAMW_DEFAULTS) } : undefined
  // and the best one worker does with the step: all its pairs in one micro-batch (bigger products, one pass) — with
  // one micro-batch per worker, where the step is small enough to run as one
  const whole: Trainer | undefined = solo && K === W ? { model: initModel(config, Rng.fromKey('bench')), opt: new Optimizer(ADAMW_DEFAULTS), oneMicroBatch: true } : undefined
  const update = async (t: Trainer, grads: Map<string, tf.Tensor>, squares: Map<string, number>) => {
    if (t.pool) await t.pool.update(t.opt, grads, squares, LR, 0) // all-reduce, as align train with GA >= 2: each replica steps its shard
    else await applyUpdate(t.model, t.opt, grads, LR, 0)
    const done = tf.tidy(() => tf.sum(t.model.params.get('model.norm.weight')!))
    await done.data() // wait for the update on async backends (a scalar readback)
    done.dispose()
  }
  const pairsOf = (s: number) => {
    const idx = Array.from({ length: a.batchPairs }, (_, j) => (s * a.batchPairs + j) % pairs.length)
    return { chunk: idx.map((i) => pairs[i]!), ref: { chosen: idx.map((i) => refC[i]!), rejected: idx.map((i) => refR[i]!) } }
  }
  // one optimizer step of batchPairs pairs: K micro-batches (default one per worker), gradients summed in order;
  // the solo policy runs the same K micro-batches one after another
  const step = async (s: number, t: Trainer) => {
    const { chunk, ref } = pairsOf(s)
    const n = t.oneMicroBatch ? 1 : K
    const parts = Array.from({ length: n }, (_, w) => [Math.floor((w * chunk.length) / n), Math.floor(((w + 1) * chunk.length) / n)] as const)
    const scales = objective.stepScales(parts.map(([b, e]) => chunk.slice(b, e)))
    const jobs = parts.map(([b, e], w) => ({ a: w, pairs: chunk.slice(b, e), ref: { chosen: ref.chosen.slice(b, e), rejected: ref.rejected.slice(b, e) }, scale: scales[w]!, dropoutSeed: 0 }))
    const { grads, stats, squares, headBlocksTaken } = await stepGradients(t.model, objective, t.pool, jobs, { padId: 0, ga: n, update: t.pool ? { lr: LR, maxNorm: 0 } : undefined })
    await update(t, grads, squares)
    return { chunk, packed: stats[0]!.packed ?? false, headBlocksTaken }
  }
  // the profiled step runs here alone (tf.profile times this thread's kernels)
  const localStep = async (s: number) => {
    const { chunk, ref } = pairsOf(s)
    const g = (await microBatchGrads(model, objective, chunk, ref, { padId: 0, ga: 1, scale: 1, dropoutSeed: 0 })).grads
    opt.apply(model.params, g, LR)
    tf.dispose([...g.values()])
  }
  const workersTrainer: Trainer = { model, opt, pool }
  // --compare-handoff: a fourth policy, the same workers with the LM head's hand-off off (handoff.ts), in its own pool
  const plainModel = a.compareHandoff ? initModel(config, Rng.fromKey('bench')) : undefined
  const noHandoff: Trainer | undefined = plainModel && { model: plainModel, opt: new Optimizer(ADAMW_DEFAULTS), pool: await WorkerPool.start(W, plainModel, () => workerInit(plainModel, backend.active, objective, dpo, 0, ADAMW_DEFAULTS, a.layout), { handoff: false }) }
  const trainers = [workersTrainer, ...(solo ? [solo] : []), ...(whole ? [whole] : []), ...(noHandoff ? [noHandoff] : [])]
  const timed = trainers.map(() => 0)
  let packedSteps = 0
  let tokens = 0
  let pairsDone = 0
  const tensorsAfter: number[] = []
  const blocksTaken: number[] = [] // per timed step of the workers: LM head blocks one replica computed for another
  // with more than one policy (--paired, --compare-handoff): per round, two steps of each policy in turn on the same
  // two steps' pairs, the second of each timed —
  // the first warms the threads back up after the other policies ran (the workers' first step after the one-worker
  // steps measured ~7 % slower, 2026-11-29); without, one timed step per round
  const perRound = trainers.length > 1 ? 2 : 1
  for (let r = 0; r < a.warmup + a.steps; r++) {
    if (r === a.warmup && a.startAfter) await startBarrier(a.startAfter)
    for (const [i, t] of trainers.entries()) {
      for (let k = 0; k < perRound; k++) {
        const t0 = performance.now()
        const { chunk, packed, headBlocksTaken } = await step(r * perRound + k, t)
        if (r < a.warmup || k < perRound - 1) continue
        timed[i]! += performance.now() - t0
        if (t !== workersTrainer) continue
        packedSteps += packed ? 1 : 0
        blocksTaken.push(headBlocksTaken)
        tokens += chunk.reduce((x, p) => x + pairTokens(p), 0)
        pairsDone += chunk.length
        tensorsAfter.push(tf.memory().numTensors)
      }
    }
  }
  const timedOf = (t: Trainer | undefined) => (t ? timed[trainers.indexOf(t)]! : 0)
  const [timedWorkers, timedSolo, timedWhole, timedPlain] = [workersTrainer, solo, whole, noHandoff].map(timedOf) as [number, number, number, number]
  const identical = solo && (await sameWeights(model, solo.model))
  const plainIdentical = noHandoff && (await sameWeights(model, noHandoff.model))
  const mm = a.profile ? await matMulThroughput((r) => localStep(a.warmup + a.steps + r)) : undefined
  await Promise.all(trainers.map((t) => t.pool?.close()))
  for (const t of trainers) (disposeModel(t.model), t.opt.dispose())
  const secs = timedWorkers / 1000
  const paired = solo && {
    one_worker_pairs_per_second: +(pairsDone / (timedSolo / 1000)).toFixed(3), one_worker_step_ms: Math.round(timedSolo / a.steps), workers_scaling: +(timedSolo / timedWorkers).toFixed(2), one_worker_same_weights: identical,
    ...(whole && { one_micro_batch_pairs_per_second: +(pairsDone / (timedWhole / 1000)).toFixed(3), workers_scaling_vs_one_micro_batch: +(timedWhole / timedWorkers).toFixed(2) }),
    ...(noHandoff && { workers_scaling_no_handoff: +(timedSolo / timedPlain).toFixed(2) }),
  }
  const handoff = noHandoff && {
    no_handoff_pairs_per_second: +(pairsDone / (timedPlain / 1000)).toFixed(3), no_handoff_step_ms: Math.round(timedPlain / a.steps), handoff_speedup: +(timedPlain / timedWorkers).toFixed(3), no_handoff_same_weights: plainIdentical,
  }
  return {
    bench: 'dpo', backend: backend.active, workers: W, micro_batches: K, model: a.model, layout: a.layout, packed_steps: packedSteps, // of the timed steps
    batch_pairs: a.batchPairs, steps: a.steps,
    pairs_per_second: +(pairsDone / secs).toFixed(3), tokens_per_second: Math.round(tokens / secs), step_ms: Math.round(timedWorkers / a.steps),
    head_blocks_taken: blocksTaken, // per timed step: LM head dW blocks a replica that finished first computed for another (handoff.ts)
    peak_rss_mib: Math.round(process.resourceUsage().maxRSS / 1024), tensors_flat: new Set(tensorsAfter).size === 1, ...paired, ...handoff, ...mm,
  }
}

/** Whether two models' parameters are equal bit for bit. */
async function sameWeights(a: Model, b: Model): Promise<boolean> {
  for (const [name, p] of a.params) {
    const [x, y] = await Promise.all([p.data(), b.params.get(name)!.data()])
    if (!Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(Buffer.from(y.buffer, y.byteOffset, y.byteLength))) return false
  }
  return true
}

/** Announce this process ready (`<file>.ready.<pid>`), then wait until `file` exists. */
async function startBarrier(file: string): Promise<void> {
  writeFileSync(`${file}.ready.${process.pid}`, '')
  while (!existsSync(file)) await new Promise((r) => setTimeout(r, 10))
}

/** A policy, its optimizer, and the workers holding its replicas (none: this thread alone). */
interface Trainer {
  model: Model
  opt: Optimizer
  pool?: WorkerPool
  /** the step's pairs as one micro-batch instead of one per worker */
  oneMicroBatch?: boolean
}

/**
 * matMul throughput inside a profiled step (every BatchMatMul kernel: FLOPs 2·|out|·K, K = |a| / (batch·m),
 * whatever the transposes) against the best plain 2-D matMul of the same backend on two large shapes. Both are
 * the best of a few runs: on a shared 2-core machine single timings swing by ±30 %.
 */
export async function matMulThroughput(runStep: (repeat: number) => Promise<void>): Promise<Record<string, number>> {
  let inStep = 0
  let share = 0
  for (let r = 0; r < 2; r++) {
    const t = await profiledMatMuls(() => runStep(r))
    if (t.gflops > inStep) [inStep, share] = [t.gflops, t.share]
  }
  let best = 0
  for (const [m, k, n] of [[1024, 1024, 1024], [2048, 256, 2048]] as const) {
    const [x, w] = [tf.fill([m, k], 0.5), tf.fill([k, n], 0.25)] as [tf.Tensor2D, tf.Tensor2D]
    tf.matMul(x, w).dispose()
    for (let r = 0; r < 5; r++) {
      const t0 = performance.now()
      const y = tf.matMul(x, w)
      await y.data()
      y.dispose()
      best = Math.max(best, (2 * m * k * n) / ((performance.now() - t0) / 1000) / 1e9)
    }
    tf.dispose([x, w])
  }
  return {
    matmul_gflops_in_step: +inStep.toFixed(1), matmul_gflops_best_plain: +best.toFixed(1), matmul_efficiency: +(inStep / best).toFixed(2),
    matmul_share_of_kernel_time: +share.toFixed(2),
  }
}

async function profiledMatMuls(runStep: () => Promise<void>): Promise<{ gflops: number; share: number }> {
  const info = await tf.profile(runStep)
  let flops = 0
  let ms = 0
  let all = 0
  for (const k of info.kernels) {
    const t = typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0
    if (k.name !== 'forward') all += t // customGrad's 'forward' wraps kernels already listed
    if (k.name !== 'BatchMatMul') continue
    const [aShape] = k.inputShapes as number[][]
    const out = k.outputShapes[0]!
    const m = out[out.length - 2]!
    const batchA = aShape!.slice(0, -2).reduce((x, y) => x * y, 1)
    const K = aShape!.reduce((x, y) => x * y, 1) / (batchA * m)
    flops += 2 * out.reduce((x, y) => x * y, 1) * K
    ms += t
  }
  return { gflops: flops / (ms / 1000) / 1e9, share: ms / all }
}
