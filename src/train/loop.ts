/**
 * `align sft` and `align train`: one training loop for both stages, nanoGPT-style — read top to bottom.
 *
 *   setup (setup.ts) → for each optimizer step: accumulate gradients over GA micro-batches → clip →
 *   AdamW/RMSprop step → log → eval → checkpoint; then a summary row and `final/`.
 *
 * Optimizer step s consumes micro-batches [s·GA, (s+1)·GA) of the seeded stream (sampler.ts), so the whole state
 * of a run is the step, the weights and the optimizer moments: what a checkpoint holds and `--resume` restores.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import * as tf from '@tensorflow/tfjs'
import { AlignError } from '../errors.ts'
import { Progress } from '../progress.ts'
import type { BackendInfo } from '../model/backend.ts'
import { disposeModel, type Model } from '../model/mistral.ts'
import { evaluate, type BatchStats, type EvalBatches } from '../preference/objective.ts'
import type { DataStats } from '../preference/pairs.ts'
import { pairTokens } from '../preference/pairs.ts'
import type { References } from './setup.ts'
import { buildPolicy, buildReference, dryRunReport, prepareRun, type Run, type TrainOptions } from './setup.ts'
import { STEP_LOSS, resolveResume, resume, saveFinal, saveStepCheckpoint, type TrainerState } from './checkpoint.ts'
import { writeRunOutputs } from './outputs.ts'
import { RunLog, Window, mean, round4, type Row } from './log.ts'
import { Optimizer, lrLambda, type OptimConfig } from './optim.ts'
import type { TrainerArgs } from './schema.ts'
import { microBatchStream } from './sampler.ts'
import { applyUpdate, dropoutSeed } from './microbatch.ts'
import { WorkerPool } from './pool.ts'
import { stepGradients, workerCount, workerInit, type Update } from './workers.ts'
import { claimRunDir, watchSignals, type Signals } from './rundir.ts'

export { runDirOf, type TrainOptions } from './setup.ts'

export interface TrainResult {
  /** true when Ctrl-C / SIGTERM (or stopAfter) ended the run early, after saving a checkpoint */
  interrupted?: boolean
  /** the signal that stopped it */
  signal?: NodeJS.Signals
  runDir: string
  finalDir: string | undefined
  logHistory: Row[]
  backend: BackendInfo
  dataStats: { train: DataStats; eval: DataStats }
  plan?: string
}

const SAVE_DTYPE = { float32: 'F32', bfloat16: 'BF16', float16: 'F16' } as const

export async function train(o: TrainOptions): Promise<TrainResult> {
  const run = await prepareRun(o)
  const { args, runDir } = run
  const result = (r: Partial<TrainResult>): TrainResult => ({ runDir, finalDir: undefined, logHistory: [], backend: run.backend, dataStats: { train: run.data.train.stats, eval: run.data.eval.stats }, ...r })
  if (o.dryRun) return result({ plan: dryRunReport(run) })
  const release = claimRunDir(runDir, { resume: o.resume !== undefined, overwrite: args.overwrite_output_dir, log: run.log })
  const signals = watchSignals(release)
  try {
    return await trainClaimed(run, signals, result)
  } finally {
    signals.stop()
    release()
  }
}

/** The run, once its directory is ours: the policy and its replicas on the workers, then the loop. */
async function trainClaimed(run: Run, signals: Signals, result: (r: Partial<TrainResult>) => TrainResult): Promise<TrainResult> {
  const { o } = run
  const model = buildPolicy(run)
  const workers = workerCount(o.workers ?? 1, run.backend)
  run.log(`workers: ${workers.n} (${workers.why})`)
  const v = o.recipe.values
  const dpo = o.stage === 'dpo' ? { beta: v.dpo.beta, lossType: v.dpo.loss_type, labelSmoothing: v.dpo.label_smoothing } : undefined
  const pool = await WorkerPool.start(workers.n, model, () => workerInit(model, run.backend.active, run.objective, dpo, run.tok.padId, optimConfig(run.args)))
  try {
    return await trainLoop(run, model, pool, signals, result)
  } finally {
    await pool?.close()
  }
}

/** Reference, resume, the loop and the final save, with the model (and its replicas in `pool`) built. */
async function trainLoop(run: Run, model: Model, pool: WorkerPool | undefined, signals: Signals, result: (r: Partial<TrainResult>) => TrainResult): Promise<TrainResult> {
  const { o, args, runDir, schedule } = run
  const refs = o.stage === 'dpo' ? await buildReference(run, model, pool) : undefined
  const opt = new Optimizer(optimConfig(args))
  const loaded = o.resume ? resume(resolveResume(runDir, o.resume), o.stage, model, opt, args.gradient_accumulation_steps) : undefined
  const resumed = loaded?.state
  if (resumed) run.log(`resumed at step ${resumed.global_step}`)
  if (loaded?.note) run.log(`align: ${loaded.note}`)
  // all-reduce: with two or more micro-batches a step, every replica steps its own optimizer (no weight broadcast)
  const allReduce = pool !== undefined && args.gradient_accumulation_steps >= 2
  if (resumed && allReduce) await pool.sync(opt)
  else if (resumed) pool?.weightsChanged()
  let step = resumed?.global_step ?? 0
  const log = new RunLog(runDir, resumed?.log_history)
  const resolved = { recipe: o.recipe.path, overrides: o.recipe.overrides, stage: o.stage, values: o.recipe.values }
  writeFileSync(join(runDir, 'recipe.resolved.json'), JSON.stringify(resolved, null, 2) + '\n')
  const save = async (final: boolean) => {
    const a = { model, tokenizerDir: run.tokenizerDir, chatTemplate: run.tok.template, base: o.recipe.values.model.policy, state: trainerState(run, step, log.history), alignState: { stage: o.stage, seed: args.seed, loss: STEP_LOSS[o.stage] }, files: { 'recipe.resolved.json': resolved } }
    if (final) return saveFinal(runDir, { ...a, dtype: SAVE_DTYPE[o.recipe.values.model.save_dtype] })
    const gathered = allReduce ? await pool.gatherOptimizer(opt) : undefined // the moments of every shard
    try {
      return await saveStepCheckpoint(runDir, args.save_total_limit, { ...a, dtype: 'F32', optimizer: gathered?.opt ?? opt })
    } finally {
      gathered?.release()
    }
  }
  const nextBatch = microBatchStream({ seed: args.seed, batchSize: args.per_device_train_batch_size, groupByLength: args.group_by_length, lengths: run.data.train.pairs.map(pairTokens) })
  const progress = new Progress(o.stage, { quiet: o.quiet, plainEveryMs: 0 })
  signals.loopStarted()
  const [startStep, tStart] = [step, performance.now()]
  const window = new Window()
  let lossSum = 0 // per-step mean losses of this invocation, for the final train_loss (HF Trainer)
  try {
    while (step < schedule.maxSteps) {
      await new Promise((r) => setImmediate(r)) // let a pending Ctrl-C (SIGINT) handler run between steps
      const lr = args.learning_rate * lrLambda(args.lr_scheduler_type, step, schedule.maxSteps, schedule.warmup)
      const { grads, batches, squares } = await accumulate(run, model, refs, step, nextBatch, pool, allReduce ? { lr, maxNorm: args.max_grad_norm } : undefined)
      const norm = allReduce ? await pool.update(opt, grads, squares, lr, args.max_grad_norm) : await applyUpdate(model, opt, grads, lr, args.max_grad_norm)
      if (!Number.isFinite(norm)) throw new AlignError(`${o.stage}: grad_norm is ${norm} at step ${step + 1}; stopped before the update. The last good checkpoint is kept in ${runDir}; lower learning_rate or check the data`)
      if (!allReduce) pool?.weightsChanged()
      step++
      window.batches.push(...batches)
      window.gradNorms.push(norm)
      lossSum += mean(batches.map((b) => b.loss))
      const epoch = round4((step * args.gradient_accumulation_steps) / schedule.microPerEpoch)
      if (step % args.logging_steps === 0 || step === schedule.maxSteps || step === 1) {
        const row = trainRow(run, window, step, epoch, lr)
        log.record(row)
        const acc = row['rewards/accuracies'] !== undefined ? ` · acc ${row['rewards/accuracies'].toFixed(2)} · margin ${row['rewards/margins']!.toFixed(3)}` : ''
        progress.update(step, schedule.maxSteps, 'steps', ` · loss ${row.loss!.toFixed(4)}${acc} · lr ${lr.toExponential(2)}`)
      }
      const last = step === schedule.maxSteps
      if (args.do_eval && run.data.eval.pairs.length && ((args.eval_steps > 0 && step % args.eval_steps === 0) || last)) {
        const spread: EvalBatches | undefined = pool ? (b) => pool.eval(run.objective, b, run.tok.padId) : undefined
        log.record({ step, epoch, ...(await evaluate(run.objective, model, run.data.eval.pairs, refs?.eval, { batchSize: args.per_device_eval_batch_size, padId: run.tok.padId, run: spread })).metrics })
      }
      const stopping = signals.signal() !== undefined || (o.stopAfter !== undefined && step - startStep >= o.stopAfter)
      const saved = (args.save_steps > 0 && step % args.save_steps === 0) || last || stopping ? await save(false) : undefined
      if (stopping) {
        progress.fail(`${o.stage}: stopped at step ${step}/${schedule.maxSteps}, saved ${saved}; resume with --resume latest`)
        return result({ interrupted: true, signal: signals.signal(), logHistory: log.history })
      }
    }
    const [steps, secs] = [step - startStep, (performance.now() - tStart) / 1000]
    const trainLoss = lossSum / Math.max(1, steps)
    log.record({ step, epoch: round4((step * args.gradient_accumulation_steps) / schedule.microPerEpoch), train_loss: trainLoss, train_runtime: round4(secs), train_samples_per_second: round4((steps * args.gradient_accumulation_steps * args.per_device_train_batch_size) / secs), train_steps_per_second: round4(steps / secs) })
    await save(true)
    writeRunOutputs(run, log.history)
    progress.succeed(`${o.stage}: ${schedule.maxSteps} steps · train_loss ${trainLoss.toFixed(4)} (mean of this run) · saved ${runDir} (weights, tokenizer, model card, results)`)
    return result({ finalDir: runDir, logHistory: log.history })
  } finally {
    disposeModel(model)
    if (refs?.frozen) disposeModel(refs.frozen)
    opt.dispose()
  }
}

/**
 * The gradients of optimizer step `step`: its GA micro-batches (each on whichever worker takes it first, this
 * thread included), each loss its share of the step's (Objective.stepScales), summed by parameter name in
 * micro-batch order — the same additions whatever N is and whoever computed what. A non-finite loss stops the run
 * here, before any update.
 */
async function accumulate(run: Run, model: Model, refs: References | undefined, step: number, nextBatch: (k: number) => number[], pool: WorkerPool | undefined, update: Update | undefined): Promise<{ grads: Map<string, tf.Tensor>; batches: BatchStats[]; squares: Map<string, number> }> {
  const ga = run.args.gradient_accumulation_steps
  const idx = Array.from({ length: ga }, (_, a) => nextBatch(step * ga + a)) // each micro-batch's pair indices
  const pairs = idx.map((b) => b.map((i) => run.data.train.pairs[i]!))
  const scales = run.objective.stepScales(pairs)
  const jobs = await Promise.all(idx.map(async (b, a) => ({ a, pairs: pairs[a]!, ref: await refs?.train.logps(b), scale: scales[a]!, dropoutSeed: dropoutSeed(run.args.seed, step * ga + a) })))
  const { grads: acc, stats: batches, squares } = await stepGradients(model, run.objective, pool, jobs, { padId: run.tok.padId, ga, update })
  const bad = batches.findIndex((b) => !Number.isFinite(b.loss))
  if (bad >= 0) {
    tf.dispose([...acc.values()])
    throw new AlignError(`${run.o.stage}: loss is ${batches[bad]!.loss} at step ${step + 1}; stopped. The last good checkpoint is kept in ${run.runDir}; lower learning_rate or check the data`)
  }
  return { grads: acc, batches, squares }
}

const optimConfig = (a: TrainerArgs): OptimConfig => ({ optimizer: a.optim, beta1: a.adam_beta1, beta2: a.adam_beta2, eps: a.adam_epsilon, weightDecay: a.weight_decay, rmspropAlpha: 0.99 })

/** A training row: the objective's metrics over the window, and the step's learning rate, grad norm and speed. */
function trainRow(run: Run, window: Window, step: number, epoch: number, lr: number): Row {
  const w = window.take()
  const tokens = w.batches.reduce((a, b) => a + b.tokens, 0)
  return { step, epoch, ...run.objective.metrics(w.batches, 'train'), learning_rate: lr, grad_norm: mean(w.gradNorms), tokens_per_second: Math.round(tokens / w.seconds) }
}

function trainerState(run: Run, step: number, history: Row[]): TrainerState {
  const a = run.args
  return {
    global_step: step, max_steps: run.schedule.maxSteps, epoch: (step * a.gradient_accumulation_steps) / run.schedule.microPerEpoch, num_train_epochs: a.num_train_epochs,
    logging_steps: a.logging_steps, eval_steps: a.eval_steps, save_steps: a.save_steps, train_batch_size: a.per_device_train_batch_size,
    log_history: history, best_metric: null, best_model_checkpoint: null, is_local_process_zero: true, is_world_process_zero: true,
  }
}
