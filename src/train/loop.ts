/**
 * `align sft` and `align train`: one training loop for both stages, nanoGPT-style — read top to bottom.
 *
 *   setup (backend, tokenizer, policy, data) → reference log-probs (DPO) → for each optimizer step:
 *   accumulate gradients over micro-batches → clip → AdamW/RMSprop step → log → eval → checkpoint.
 *
 * Micro-batches form one stream across epochs (epoch e is a seeded permutation of the pairs); optimizer step s
 * consumes micro-batches [s·GA, (s+1)·GA). The whole state of a run is therefore the step number, the weights
 * and the optimizer moments, which is what a checkpoint holds and what `--resume` restores.
 */
import { appendFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { isAbsolute, join } from 'node:path'
import * as tf from '@tensorflow/tfjs'
import { AlignError } from '../errors.ts'
import { readJson } from '../checkpoint/hf.ts'
import { Progress } from '../progress.ts'
import { SHIPPED_TOKENIZER, type LoadedRecipe } from '../recipe.ts'
import { Rng } from '../rng.ts'
import { initBackend, type BackendInfo } from '../model/backend.ts'
import { PRESETS, parameterCount, parseConfig, type ModelConfig } from '../model/config.ts'
import { loadConfig, loadModel } from '../model/io.ts'
import { addLora, disposeModel, initModel, withAdapters, type Model } from '../model/mistral.ts'
import { loadTokenizer } from '../model/tokenizer.ts'
import { pairBatch, padBatch, pairLogps, pairTokens, rowCounts, rowLogps, type PairIds, type Sequence } from './batch.ts'
import { loadPairs, resolveSplit, epochBatches, lengthGroupedOrder, type DataStats } from './data.ts'
import { dpoBatchLoss, rewardMetrics, type DpoOptions } from './dpo.ts'
import { Optimizer, clipByGlobalNorm, lrLambda, warmupSteps } from './optim.ts'
import { referenceLogps } from './reference.ts'
import { checkpointName, pruneCheckpoints } from '../checkpoint/runs.ts'
import { adapterConfig, adapterWeights, loadAdapters, loadOptimizer, modelWeights, resolveResume, saveCheckpoint, type TrainerState } from './state.ts'
import { EventWriter } from './tfevents.ts'
import type { TrainerArgs } from './schema.ts'
import { memoryPlan, formatPlan } from './plan.ts'

export type Stage = 'sft' | 'dpo'

export interface TrainOptions {
  stage: Stage
  recipe: LoadedRecipe
  backend?: string
  resume?: string
  dryRun?: boolean
  quiet?: boolean
  /** stop (with a checkpoint) after this many optimizer steps of this invocation: tests of resume */
  stopAfter?: number
}

export interface TrainResult {
  /** true when Ctrl-C (or stopAfter) ended the run early, after saving a checkpoint */
  interrupted?: boolean
  runDir: string
  finalDir: string | undefined
  logHistory: Record<string, number>[]
  backend: BackendInfo
  dataStats: { train: DataStats; eval: DataStats }
  plan?: string
}

const SAVE_DTYPE = { float32: 'F32', bfloat16: 'BF16', float16: 'F16' } as const

/** output_dir `name` or `a/b` lives under checkpoints/; an absolute or ./-relative path is used as is. */
export function runDirOf(outputDir: string): string {
  return isAbsolute(outputDir) || outputDir.startsWith('.') ? outputDir : join('checkpoints', outputDir)
}

/** The config of a policy spec, without loading weights. */
export function policyConfig(spec: string): ModelConfig {
  if (spec.startsWith('preset:')) {
    const raw = PRESETS[spec.slice(7)]
    if (!raw) throw new AlignError(`model.policy ${spec}: unknown preset; presets: ${Object.keys(PRESETS).join(', ')}`)
    return parseConfig(raw, spec)
  }
  return loadConfig(spec)
}

/** Policy from an HF directory or `preset:<name>` (random init with model.init_seed). */
export function loadPolicy(spec: string, initSeed: number): { model: Model; id: string; dir?: string } {
  if (spec.startsWith('preset:')) {
    const name = spec.slice(7)
    const raw = PRESETS[name]
    if (!raw) throw new AlignError(`model.policy ${spec}: unknown preset; presets: ${Object.keys(PRESETS).join(', ')}`)
    const config = parseConfig(raw, spec)
    const params = parameterCount(config)
    if (params > 1e9) throw new AlignError(`model.policy ${spec} would train ${(params / 1e9).toFixed(1)}B random weights; point model.policy at an SFT checkpoint directory (e.g. zephyr-7b-sft-full), or add --dry-run for the plan`)
    return { model: initModel(config, Rng.fromKey(`init:${initSeed}`)), id: `${spec}:seed${initSeed}` }
  }
  return { model: loadModel(spec), id: spec, dir: spec }
}

export async function train(o: TrainOptions): Promise<TrainResult> {
  const v = o.recipe.values
  const m = v.model as Record<string, any>
  const args = v[o.stage] as unknown as TrainerArgs
  const dataCfg = v.data as Record<string, any>
  const runDir = runDirOf(args.output_dir)
  const log = (s: string) => (o.quiet ? undefined : process.stderr.write(s + '\n'))

  // ---------------------------------------------------------------------------------------------------
  // setup: backend, tokenizer, policy, data
  const backend = await initBackend(o.backend)
  log(`${o.stage}: backend ${backend.active} · recipe ${o.recipe.name} · run ${runDir}`)
  const tokDir = m.tokenizer ?? (!String(m.policy).startsWith('preset:') && existsSync(join(m.policy, 'tokenizer.json')) ? m.policy : SHIPPED_TOKENIZER)
  const tok = loadTokenizer(tokDir)
  // SFT keeps at most half of max_length for the prompt, so every row keeps completion tokens to learn from
  const maxPrompt = o.stage === 'dpo' ? args.max_prompt_length! : Math.floor(args.max_length / 2)
  if (maxPrompt >= args.max_length) throw new AlignError(`dpo.max_prompt_length ${maxPrompt} must be below dpo.max_length ${args.max_length}, or completions are truncated away`)
  const trainFile = resolveSplit(dataCfg.pairs, dataCfg.train_split)
  const evalFile = resolveSplit(dataCfg.pairs, dataCfg.eval_split)
  const train = await loadPairs(trainFile, tok, args.max_length, maxPrompt, dataCfg.max_train_pairs)
  const evalSet = await loadPairs(evalFile, tok, args.max_length, maxPrompt, dataCfg.max_eval_pairs)
  log(`data: ${train.stats.pairs} train / ${evalSet.stats.pairs} eval pairs · truncated prompts ${train.stats.prompt_truncated}, completions ${train.stats.completion_truncated} (max_length ${args.max_length}${o.stage === 'dpo' ? `, max_prompt_length ${maxPrompt}` : ''})`)
  if (train.stats.pairs === 0) throw new AlignError(`${trainFile}: no training pairs`)

  const microPerEpoch = Math.ceil(train.pairs.length / args.per_device_train_batch_size)
  const maxSteps = args.max_steps > 0 ? args.max_steps : Math.ceil((args.num_train_epochs * microPerEpoch) / args.gradient_accumulation_steps)
  const warmup = warmupSteps(args.warmup_ratio, maxSteps)

  const config = policyConfig(m.policy)
  if (tok.vocabSize > config.vocabSize) {
    throw new AlignError(`tokenizer ${tokDir} has ${tok.vocabSize} tokens but the model's vocab_size is ${config.vocabSize}; use the policy's own tokenizer`)
  }
  for (const [file, set] of [[trainFile, train], [evalFile, evalSet]] as const) {
    const i = set.pairs.findIndex((p) => [p.promptIds, p.chosenIds, p.rejectedIds].some((ids) => ids.some((t) => t < 0 || t >= config.vocabSize)))
    if (i >= 0) throw new AlignError(`${file} pair ${i + 1}: token id outside the model's vocabulary (vocab_size ${config.vocabSize}); the data was tokenized for another model`)
  }
  const lora = v.lora as { enabled: boolean; r: number; alpha: number; dropout: number; target_modules: string[] }
  if (o.dryRun) {
    const plan = memoryPlan(config, o.stage, args, backend.active, lora.enabled, lora.r)
    const counts = (name: string, d: DataStats) => `${name}: ${d.pairs} pairs, ${d.tokens} tokens, prompts truncated ${d.prompt_truncated}, completions truncated ${d.completion_truncated}, boundary mismatches ${d.boundary_mismatch}`
    const text = [
      `${o.stage} dry run of ${o.recipe.path}${o.recipe.overrides.length ? ` + ${o.recipe.overrides.join(' ')}` : ''}`,
      `resolved: ${JSON.stringify({ model: v.model, data: v.data, [o.stage]: v[o.stage], ...(lora.enabled ? { lora } : {}) })}`,
      counts(`train (${trainFile})`, train.stats),
      counts(`eval (${evalFile})`, evalSet.stats),
      `${maxSteps} optimizer steps (${microPerEpoch} micro-batches/epoch, global batch ${args.per_device_train_batch_size * args.gradient_accumulation_steps}), warmup ${warmup}`,
      formatPlan(plan),
    ].join('\n')
    return { runDir, finalDir: undefined, logHistory: [], backend, dataStats: { train: train.stats, eval: evalSet.stats }, plan: text }
  }
  const policy = loadPolicy(m.policy, m.init_seed)
  const model = policy.model
  if (lora.enabled) addLora(model, { r: lora.r, alpha: lora.alpha, dropout: lora.dropout, targets: lora.target_modules }, Rng.fromKey(`lora:${args.seed}`))

  // ---------------------------------------------------------------------------------------------------
  // reference log-probs (DPO): precomputed once and cached, or a frozen copy evaluated every step
  const dpo: DpoOptions = { beta: args.beta ?? 0.1, lossType: args.loss_type ?? 'sigmoid', labelSmoothing: args.label_smoothing ?? 0 }
  let refTrain: { chosen: number[]; rejected: number[] } | undefined
  let refEval: { chosen: number[]; rejected: number[] } | undefined
  let frozenRef: Model | undefined
  if (o.stage === 'dpo') {
    const refSpec = m.reference ?? m.policy
    const refId = m.reference ?? policy.id
    // with LoRA and no separate reference, the reference is the base model: the policy with adapters disabled
    const adaptersOff = model.lora !== undefined && !m.reference
    if (args.reference_mode === 'frozen') frozenRef = adaptersOff ? model : m.reference || o.resume ? loadPolicy(refSpec, m.init_seed).model : cloneModel(model)
    else {
      const lazy = { model: undefined as Model | undefined }
      const getRef = () => (lazy.model ??= adaptersOff || !(m.reference || o.resume) ? model : loadPolicy(refSpec, m.init_seed).model)
      const key = { refId, tokDir, maxLength: args.max_length, maxPrompt }
      refTrain = await referenceLogps(getRef, train.pairs, { ...key, data: train.sha256, limit: dataCfg.max_train_pairs }, args.per_device_eval_batch_size, log, o.quiet)
      refEval = await referenceLogps(getRef, evalSet.pairs, { ...key, data: evalSet.sha256, limit: dataCfg.max_eval_pairs }, args.per_device_eval_batch_size, log, o.quiet)
      if (lazy.model && lazy.model !== model) disposeModel(lazy.model)
    }
  }

  // ---------------------------------------------------------------------------------------------------
  // optimizer, run directory, resume
  const opt = new Optimizer({ optimizer: args.optim, beta1: args.adam_beta1, beta2: args.adam_beta2, eps: args.adam_epsilon, weightDecay: args.weight_decay, rmspropAlpha: 0.99 })
  mkdirSync(runDir, { recursive: true })
  let step = 0
  let logHistory: Record<string, number>[] = []
  if (o.resume) {
    const dir = resolveResume(runDir, o.resume)
    const state = readJson(join(dir, 'trainer_state.json')) as unknown as TrainerState
    if (state.stage !== o.stage) throw new AlignError(`--resume ${dir}: a ${state.stage} checkpoint cannot resume ${o.stage}`)
    if (model.lora) loadAdapters(dir, model)
    else {
      const saved = loadModel(dir)
      for (const [name, p] of model.params) p.assign(saved.params.get(name)!)
      disposeModel(saved)
    }
    loadOptimizer(dir, opt)
    step = state.global_step
    logHistory = state.log_history
    log(`resumed from ${dir} at step ${step}`)
  }
  const metricsPath = join(runDir, 'metrics.jsonl')
  writeFileSync(metricsPath, logHistory.map((r) => JSON.stringify(r) + '\n').join(''))
  const resolvedRecipe = { recipe: o.recipe.path, overrides: o.recipe.overrides, stage: o.stage, values: v }
  writeFileSync(join(runDir, 'recipe.resolved.json'), JSON.stringify(resolvedRecipe, null, 2) + '\n')
  const events = new EventWriter(join(runDir, 'runs'))

  const state = (): TrainerState => ({
    global_step: step, max_steps: maxSteps, epoch: (step * args.gradient_accumulation_steps) / microPerEpoch, num_train_epochs: args.num_train_epochs,
    logging_steps: args.logging_steps, eval_steps: args.eval_steps, save_steps: args.save_steps, train_batch_size: args.per_device_train_batch_size,
    log_history: logHistory, best_metric: null, best_model_checkpoint: null, is_local_process_zero: true, is_world_process_zero: true, stage: o.stage, seed: args.seed,
  })
  // full weights in HF layout, or (LoRA) only the adapters in PEFT's layout
  const layout = model.lora
    ? () => ({ weights: adapterWeights(model), weightsName: 'adapter_model.safetensors', files: { 'recipe.resolved.json': resolvedRecipe, 'adapter_config.json': adapterConfig(model, m.policy) } })
    : () => ({ weights: modelWeights(model), config: model.config.raw, files: { 'recipe.resolved.json': resolvedRecipe } })
  const save = (dir: string, withOptimizer: boolean, dtype: 'F32' | 'BF16' | 'F16') =>
    saveCheckpoint({ dir, model, dtype, tokenizerDir: tokDir, state: state(), optimizer: withOptimizer ? opt : undefined, ...layout() })
  const record = (row: Record<string, number>) => {
    logHistory.push(row)
    appendFileSync(metricsPath, JSON.stringify(row) + '\n')
    events.scalars(row.step!, Object.fromEntries(Object.entries(row).filter(([k]) => k !== 'step')))
  }

  // the batch order: epoch e is a permutation seeded by (seed, e); micro-batch k of the stream
  const orders = new Map<number, number[][]>()
  const pairLengths = train.pairs.map(pairTokens) // group by the whole pair: the packed row's length
  const microBatch = (k: number): number[] => {
    const e = Math.floor(k / microPerEpoch)
    if (!orders.has(e)) {
      let order = Rng.fromKey(`${args.seed}:epoch:${e}`).shuffle([...train.pairs.keys()])
      if (args.group_by_length) order = lengthGroupedOrder(order, pairLengths, args.per_device_train_batch_size)
      orders.set(e, epochBatches(order, args.per_device_train_batch_size))
    }
    return orders.get(e)![k % microPerEpoch]!
  }

  // one micro-batch: loss (scaled by 1/GA) and its gradients, plus the numbers the metrics need
  const microStep = (idx: number[], k: number) => {
    const pairs = idx.map((i) => train.pairs[i]!)
    if (model.lora) Object.assign(model.lora, { training: true, seed: args.seed * 1_000_003 + k, calls: 0 })
    if (o.stage === 'sft') {
      const batch = padBatch(sftSequences(pairs), tok.padId)
      const tokens = Math.max(1, batch.scored.index.length)
      const { value, grads } = tf.variableGrads(() => tf.div(tf.neg(tf.sum(rowLogps(model, batch).logps)), tokens * args.gradient_accumulation_steps) as tf.Scalar, trainable(model))
      const loss = value.dataSync()[0]! * args.gradient_accumulation_steps
      value.dispose()
      return { grads, loss, tokens: batch.tokens, pairStats: undefined }
    }
    const batch = pairBatch(pairs, tok.padId, model.config)
    const ref = refTrain ? { chosen: idx.map((i) => refTrain!.chosen[i]!), rejected: idx.map((i) => refTrain!.rejected[i]!) } : pairLogps(frozenRef!, pairs, pairs.length, false)
    let logps: Float32Array = new Float32Array()
    let logitSums: Float32Array = new Float32Array()
    const { value, grads } = tf.variableGrads(() => {
      const r = dpoBatchLoss(model, batch, ref.chosen, ref.rejected, dpo)
      logps = r.logps.dataSync() as Float32Array
      logitSums = r.logitSums.dataSync() as Float32Array
      return tf.div(r.loss, args.gradient_accumulation_steps) as tf.Scalar
    }, trainable(model))
    const loss = value.dataSync()[0]! * args.gradient_accumulation_steps
    value.dispose()
    return { grads, loss, tokens: pairs.reduce((a, p) => a + pairTokens(p), 0), pairStats: pairStatsOf(logps, logitSums, rowCounts(batch), ref, pairs.length) }
  }

  // ---------------------------------------------------------------------------------------------------
  // the loop
  const progress = new Progress(o.stage, { quiet: o.quiet, plainEveryMs: 0 })
  let interrupted = false
  const onSigint = () => {
    interrupted = true
  }
  process.on('SIGINT', onSigint)
  const window = newWindow()
  let tLast = performance.now()
  const tStart = performance.now()
  const startStep = step
  let lossSum = 0 // per-step mean losses of this invocation, for the final train_loss (HF Trainer)
  try {
    while (step < maxSteps) {
      await new Promise((r) => setImmediate(r)) // let a pending Ctrl-C (SIGINT) handler run between steps
      // accumulate gradients over GA micro-batches
      let acc: Map<string, tf.Tensor> | undefined
      for (let a = 0; a < args.gradient_accumulation_steps; a++) {
        const k = step * args.gradient_accumulation_steps + a
        const { grads, loss, tokens, pairStats } = microStep(microBatch(k), k)
        if (!Number.isFinite(loss)) {
          tf.dispose(grads)
          if (acc) tf.dispose([...acc.values()])
          throw new AlignError(`${o.stage}: loss is ${loss} at step ${step + 1}; stopped. The last good checkpoint is kept in ${runDir}; lower learning_rate or check the data`)
        }
        window.loss.push(loss)
        window.tokens += tokens
        if (pairStats) window.pairs.push(pairStats)
        acc = accumulate(acc, grads, model)
      }
      const { grads, norm } = clipByGlobalNorm(acc!, args.max_grad_norm)
      const lr = args.learning_rate * lrLambda(args.lr_scheduler_type, step, maxSteps, warmup)
      opt.apply(trainableParams(model), grads, lr)
      tf.dispose([...grads.values()])
      step++
      window.gradNorms.push(norm)
      lossSum += mean(window.loss.slice(-args.gradient_accumulation_steps))

      const epoch = (step * args.gradient_accumulation_steps) / microPerEpoch
      if (step % args.logging_steps === 0 || step === maxSteps || step === 1) {
        const secs = (performance.now() - tLast) / 1000
        tLast = performance.now()
        const row: Record<string, number> = { step, epoch: round(epoch), ...windowMetrics(window, dpo.beta), learning_rate: lr, grad_norm: mean(window.gradNorms), tokens_per_second: Math.round(window.tokens / secs) }
        record(row)
        resetWindow(window)
        const acc_ = row['rewards/accuracies'] !== undefined ? ` · acc ${row['rewards/accuracies'].toFixed(2)} · margin ${row['rewards/margins']!.toFixed(3)}` : ''
        progress.update(step, maxSteps, 'steps', ` · loss ${row.loss!.toFixed(4)}${acc_} · lr ${lr.toExponential(2)}`)
      }
      const last = step === maxSteps
      if ((args.eval_steps > 0 && step % args.eval_steps === 0) || last) {
        const bs = args.per_device_eval_batch_size
        const metrics = withAdapters(model, true, () => (o.stage === 'dpo' ? evaluateDpo(model, evalSet.pairs, refEval, frozenRef, dpo, bs, tok.padId) : evaluateSft(model, evalSet.pairs, bs, tok.padId)))
        record({ step, epoch: round(epoch), ...metrics })
      }
      const stopping = interrupted || (o.stopAfter !== undefined && step - startStep >= o.stopAfter)
      if ((args.save_steps > 0 && step % args.save_steps === 0) || last || stopping) {
        save(join(runDir, checkpointName(step)), true, 'F32')
        pruneCheckpoints(runDir, args.save_total_limit)
      }
      if (stopping) {
        progress.fail(`${o.stage}: stopped at step ${step}/${maxSteps}, saved ${join(runDir, checkpointName(step))}; resume with --resume latest`)
        return { interrupted: true, runDir, finalDir: undefined, logHistory, backend, dataStats: { train: train.stats, eval: evalSet.stats } }
      }
    }
    const secs = (performance.now() - tStart) / 1000
    const steps = step - startStep
    record({ step, epoch: round((step * args.gradient_accumulation_steps) / microPerEpoch), train_loss: lossSum / Math.max(1, steps), train_runtime: round(secs), train_samples_per_second: round((steps * args.gradient_accumulation_steps * args.per_device_train_batch_size) / secs), train_steps_per_second: round(steps / secs) })
    const finalDir = join(runDir, 'final')
    save(finalDir, false, SAVE_DTYPE[m.save_dtype as keyof typeof SAVE_DTYPE])
    progress.succeed(`${o.stage}: ${maxSteps} steps · train_loss ${(lossSum / Math.max(1, steps)).toFixed(4)} (mean of this run) · saved ${finalDir}`)
    return { runDir, finalDir, logHistory, backend, dataStats: { train: train.stats, eval: evalSet.stats } }
  } finally {
    process.off('SIGINT', onSigint)
    disposeModel(model)
    if (frozenRef && frozenRef !== model) disposeModel(frozenRef)
    opt.dispose()
  }
}

// -------------------------------------------------------------------------------------------------------
// helpers of the loop

const round = (x: number) => Math.round(x * 1e4) / 1e4
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length)

function trainable(model: Model): tf.Variable[] {
  return [...model.params.values()].filter((p) => p.trainable)
}
function trainableParams(model: Model): Map<string, tf.Variable> {
  return new Map([...model.params].filter(([, p]) => p.trainable))
}

/** Sum gradients across micro-batches, keyed by HF name. */
function accumulate(acc: Map<string, tf.Tensor> | undefined, grads: tf.NamedTensorMap, model: Model): Map<string, tf.Tensor> {
  const out = acc ?? new Map<string, tf.Tensor>()
  for (const [name, p] of model.params) {
    const g = grads[p.name]
    if (!g) continue
    const prev = out.get(name)
    if (prev) {
      out.set(name, tf.add(prev, g))
      prev.dispose()
      g.dispose()
    } else out.set(name, g)
  }
  return out
}

/** SFT rows: prompt + chosen completion, loss on the completion (assistant) tokens only. */
function sftSequences(pairs: PairIds[]): Sequence[] {
  return pairs.map((p) => ({ ids: [...p.promptIds, ...p.chosenIds], completionStart: p.promptIds.length }))
}

/** Tokens of a pair counted once: prompt + chosen + rejected. */


interface PairStats {
  policyChosen: number[]
  policyRejected: number[]
  refChosen: number[]
  refRejected: number[]
  logitSumChosen: number
  logitSumRejected: number
  tokensChosen: number
  tokensRejected: number
}

function pairStatsOf(logps: Float32Array, logitSums: Float32Array, counts: number[], ref: { chosen: number[]; rejected: number[] }, n: number): PairStats {
  const sum = (xs: ArrayLike<number>, a: number, b: number) => Array.from(xs).slice(a, b).reduce((s, x) => s + x, 0)
  return {
    policyChosen: Array.from(logps.slice(0, n)),
    policyRejected: Array.from(logps.slice(n, 2 * n)),
    refChosen: ref.chosen,
    refRejected: ref.rejected,
    logitSumChosen: sum(logitSums, 0, n),
    logitSumRejected: sum(logitSums, n, 2 * n),
    tokensChosen: sum(counts, 0, n),
    tokensRejected: sum(counts, n, 2 * n),
  }
}

interface Window {
  loss: number[]
  gradNorms: number[]
  tokens: number
  pairs: PairStats[]
}
const newWindow = (): Window => ({ loss: [], gradNorms: [], tokens: 0, pairs: [] })
function resetWindow(w: Window): void {
  w.loss = []
  w.gradNorms = []
  w.tokens = 0
  w.pairs = []
}

/** TRL's logged DPO numbers over the pairs seen since the last log. */
function dpoMetrics(stats: PairStats[], beta: number): Record<string, number> {
  if (stats.length === 0) return {}
  const cat = (k: 'policyChosen' | 'policyRejected' | 'refChosen' | 'refRejected') => stats.flatMap((s) => s[k])
  const { pairs: _n, ...rewards } = rewardMetrics({ policyChosen: cat('policyChosen'), policyRejected: cat('policyRejected'), refChosen: cat('refChosen'), refRejected: cat('refRejected') }, beta)
  const tot = (k: 'logitSumChosen' | 'logitSumRejected' | 'tokensChosen' | 'tokensRejected') => stats.reduce((a, s) => a + s[k], 0)
  return { ...rewards, 'logits/chosen': tot('logitSumChosen') / Math.max(1, tot('tokensChosen')), 'logits/rejected': tot('logitSumRejected') / Math.max(1, tot('tokensRejected')) }
}

function windowMetrics(w: Window, beta: number): { loss: number } & Record<string, number> {
  return { loss: mean(w.loss), ...dpoMetrics(w.pairs, beta) }
}

/** DPO metrics on the eval pairs, no gradients, `eval_` prefix (TRL). */
function evaluateDpo(model: Model, pairs: PairIds[], ref: { chosen: number[]; rejected: number[] } | undefined, frozen: Model | undefined, o: DpoOptions, bs: number, padId: number): Record<string, number> {
  const t0 = performance.now()
  const stats: PairStats[] = []
  let lossSum = 0
  for (let i = 0; i < pairs.length; i += bs) {
    const chunk = pairs.slice(i, i + bs)
    const r = ref ? { chosen: ref.chosen.slice(i, i + bs), rejected: ref.rejected.slice(i, i + bs) } : pairLogps(frozen!, chunk, chunk.length, false)
    const batch = pairBatch(chunk, padId, model.config)
    tf.tidy(() => {
      const out = dpoBatchLoss(model, batch, r.chosen, r.rejected, o)
      lossSum += out.loss.dataSync()[0]! * chunk.length
      stats.push(pairStatsOf(out.logps.dataSync() as Float32Array, out.logitSums.dataSync() as Float32Array, rowCounts(batch), r, chunk.length))
    })
  }
  const secs = (performance.now() - t0) / 1000
  const m = { loss: lossSum / Math.max(1, pairs.length), ...dpoMetrics(stats, o.beta) }
  return { ...Object.fromEntries(Object.entries(m).map(([k, x]) => [`eval_${k}`, x])), eval_runtime: round(secs), eval_samples_per_second: round(pairs.length / secs) }
}

/** Token-mean NLL of the chosen completions on the eval pairs. */
function evaluateSft(model: Model, pairs: PairIds[], bs: number, padId: number): Record<string, number> {
  const t0 = performance.now()
  let nll = 0
  let tokens = 0
  for (let i = 0; i < pairs.length; i += bs) {
    const batch = padBatch(sftSequences(pairs.slice(i, i + bs)), padId)
    tokens += batch.scored.index.length
    nll -= tf.tidy(() => tf.sum(rowLogps(model, batch).logps).dataSync()[0]!)
  }
  const secs = (performance.now() - t0) / 1000
  return { eval_loss: nll / Math.max(1, tokens), eval_runtime: round(secs), eval_samples_per_second: round(pairs.length / secs) }
}

/** A frozen copy of the policy's current weights (reference_mode: frozen without model.reference). */
function cloneModel(model: Model): Model {
  return { config: model.config, params: new Map([...model.params].map(([k, p]) => [k, tf.variable(p.clone(), false)])) }
}
