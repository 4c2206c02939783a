/**
 * Everything `align sft` / `align train` does before the first step, as separate steps the loop calls in order:
 *   prepareRun     backend, tokenizer, data (tokenized and truncated), vocabulary checks, the step schedule
 *   dryRunReport   what --dry-run prints: the resolved recipe, data counts, steps and the memory plan
 *   buildPolicy    the starting weights (+ LoRA adapters)
 *   buildReference DPO's reference for the train and eval splits: precomputed (cached), frozen, or adapters-off
 * Nothing here trains; nothing in loop.ts resolves settings.
 */
import { existsSync, statSync } from 'node:fs'
import { isAbsolute, join } from 'node:path'
import { AlignError } from '../errors.ts'
import type { LoadedRecipe } from '../recipe.ts'
import { Rng } from '../rng.ts'
import { initBackend, variableOf, type BackendInfo } from '../model/backend.ts'
import type { ModelConfig } from '../model/config.ts'
import { addLora } from '../model/lora.ts'
import { checkBatchTensors, disposeModel, type Model } from '../model/mistral.ts'
import { describePolicy, policyTokenizer, resolvePolicy, type PolicySpec } from '../model/policy.ts'
import type { ChatTokenizer } from '../model/tokenizer.ts'
import { dpoObjective, sftObjective, type Objective } from '../preference/objective.ts'
import type { PairIds } from '../preference/pairs.ts'
import type { WorkerPool } from './pool.ts'
import { filesSha256, loadPairs, resolveSplit, tokenizeRows, type DataStats, type LoadOptions, type PairSet } from '../preference/pairs.ts'
import { mixtureRows, splitRows } from '../preference/datasets.ts'
import { liveReference, precompute, precomputedReference, type Reference } from '../preference/reference.ts'
import { warmupSteps } from './optim.ts'
import { formatPlan, memoryPlan, type PlanRow } from './plan.ts'
import { workerCount } from './workers.ts'
import { ringSlots } from './ring.ts'
import { HANDOFF_ROOM, boardBytes } from './handoff.ts'
import type { DataArgs, TRAIN_SCHEMA, TrainerArgs } from './schema.ts'

export type Stage = 'sft' | 'dpo'

export interface TrainOptions {
  stage: Stage
  recipe: LoadedRecipe<typeof TRAIN_SCHEMA>
  backend?: string
  resume?: string
  dryRun?: boolean
  quiet?: boolean
  /** stop (with a checkpoint) after this many optimizer steps of this invocation: tests of resume */
  stopAfter?: number
  /** data-parallel workers: a number, or auto (the cores on CPU backends) */
  workers?: number | 'auto'
}

export interface Run {
  o: TrainOptions
  /** the stage's section of the recipe (sft or dpo) */
  args: TrainerArgs
  runDir: string
  backend: BackendInfo
  policy: PolicySpec
  tok: ChatTokenizer
  tokenizerDir: string
  data: { train: PairSet; eval: PairSet }
  /** micro-batches per epoch, optimizer steps, warmup steps */
  schedule: { microPerEpoch: number; maxSteps: number; warmup: number }
  objective: Objective
  log: (s: string) => void
}

/** output_dir `name` or `a/b` lives under checkpoints/; an absolute or ./-relative path is used as is. */
export function runDirOf(outputDir: string): string {
  return isAbsolute(outputDir) || outputDir.startsWith('.') ? outputDir : join('checkpoints', outputDir)
}

/** Every token id must index the model's embedding table (policyTokenizer checked the tokenizer itself). */
function checkTokenIds(config: ModelConfig, sets: PairSet[]): void {
  for (const set of sets) {
    const i = set.pairs.findIndex((p) => [p.promptIds, p.chosenIds, p.rejectedIds].some((ids) => ids.some((t) => t < 0 || t >= config.vocabSize)))
    if (i >= 0) throw new AlignError(`${set.file} pair ${i + 1}: token id outside the model's vocabulary (vocab_size ${config.vocabSize}); the data was tokenized for another model`)
  }
}

export async function prepareRun(o: TrainOptions): Promise<Run> {
  const v = o.recipe.values
  const args: TrainerArgs = o.stage === 'dpo' ? v.dpo : v.sft
  const runDir = runDirOf(args.output_dir)
  const log = (s: string) => void (o.quiet ? undefined : process.stderr.write(s + '\n'))
  const backend = await initBackend(o.backend)
  log(`${o.stage}: backend ${backend.active} · recipe ${o.recipe.name} · run ${runDir}`)
  for (const n of o.recipe.notes ?? []) log(`recipe: ${n}`)
  const policy = describePolicy(v.model.policy, v.model.init_seed)
  if (policy.kind === 'adapter') throw new AlignError(`model.policy ${v.model.policy} is a LoRA adapter directory; train from its base (model.policy=${policy.baseDir}) or from a merged checkpoint`)
  const tokenizerDir = v.model.tokenizer ?? policy.tokenizerDir
  const tok = await policyTokenizer(policy, { dir: v.model.tokenizer, chatTemplate: v.model.chat_template, note: log })
  // SFT keeps at most half of max_length for the prompt, so every row keeps completion tokens to learn from
  const maxPrompt = o.stage === 'dpo' ? v.dpo.max_prompt_length : Math.floor(args.max_length / 2)
  if (maxPrompt >= args.max_length) throw new AlignError(`dpo.max_prompt_length ${maxPrompt} must be below dpo.max_length ${args.max_length}, or completions are truncated away`)
  const data = await loadData(v.data, tok, { maxLength: args.max_length, maxPromptLength: maxPrompt, insertEmptySystem: v.data.auto_insert_empty_system_msg, sft: o.stage === 'sft' }, log)
  log(`data: ${data.train.stats.pairs} train / ${data.eval.stats.pairs} eval pairs · truncated prompts ${data.train.stats.prompt_truncated}, completions ${data.train.stats.completion_truncated} (max_length ${args.max_length}${o.stage === 'dpo' ? `, max_prompt_length ${maxPrompt}` : ''})`)
  if (data.train.stats.pairs === 0) throw new AlignError(`${data.train.file}: no training pairs`)
  checkTokenIds(policy.config, [data.train, data.eval])
  const microPerEpoch = Math.ceil(data.train.pairs.length / args.per_device_train_batch_size)
  const maxSteps = args.max_steps > 0 ? args.max_steps : Math.ceil((args.num_train_epochs * microPerEpoch) / args.gradient_accumulation_steps)
  const objective = o.stage === 'dpo' ? dpoObjective({ beta: v.dpo.beta, lossType: v.dpo.loss_type, labelSmoothing: v.dpo.label_smoothing }) : sftObjective()
  // at most every row padded to max_length (DPO: a chosen and a rejected row per pair, or one packed row)
  const batchTokens = (o.stage === 'dpo' ? 2 : 1) * Math.max(args.per_device_train_batch_size, args.per_device_eval_batch_size) * args.max_length
  checkBatchTensors(policy.config, batchTokens, `lower ${o.stage}.per_device_train_batch_size / per_device_eval_batch_size or ${o.stage}.max_length (this assumes every row padded to max_length)`)
  return { o, args, runDir, backend, policy, tok, tokenizerDir, data, schedule: { microPerEpoch, maxSteps, warmup: warmupSteps(args.warmup_ratio, maxSteps) }, objective, log }
}

/**
 * The train and eval pairs a recipe's data section names: a mixture of datasets by id, a directory (align binarize
 * output or the Hub layout) with train/eval splits, or one file (eval from data.eval_pairs, else none).
 */
async function loadData(d: DataArgs, tok: ChatTokenizer, o: LoadOptions, log: (s: string) => void): Promise<{ train: PairSet; eval: PairSet }> {
  const set = (name: string, rows: Record<string, any>[], files: string[], limit: number): PairSet => {
    const kept = limit > 0 ? rows.slice(0, limit) : rows
    return { file: name, ...tokenizeRows(kept, (i) => `${name} row ${i + 1}`, tok, o), sha256: filesSha256(files) }
  }
  if (d.datasets.length) {
    const m = await mixtureRows({ datasets: d.datasets, testSplitSize: d.test_split_size, seed: d.mixture_seed, datasetsDir: d.datasets_dir, style: d.mixture_style })
    const name = d.datasets.map((x) => `${x.id}:${x.split}`).join('+')
    if (m.eval.length === 0) log(`data: the mixture has no eval rows (no test split and test_split_size 0): eval is off`)
    return { train: set(name, m.train, m.files, d.max_train_pairs), eval: set(`${name} (eval)`, m.eval, m.files, d.max_eval_pairs) }
  }
  if (existsSync(d.pairs) && statSync(d.pairs).isDirectory()) {
    const split = async (s: string, limit: number) => {
      const { rows, files } = await splitRows(d.pairs, s)
      return set(files.length === 1 ? files[0]! : `${d.pairs}:${s}`, rows, files, limit)
    }
    return { train: await split(d.train_split, d.max_train_pairs), eval: await split(d.eval_split, d.max_eval_pairs) }
  }
  const train = await loadPairs(resolveSplit(d.pairs, d.train_split), tok, { ...o, limit: d.max_train_pairs })
  if (d.eval_pairs === null) {
    log(`data: ${d.pairs} is one file and data.eval_pairs is not set: eval is off (set data.eval_pairs to a file to evaluate)`)
    return { train, eval: { file: '(none)', pairs: [], stats: { pairs: 0, prompt_truncated: 0, completion_truncated: 0, boundary_mismatch: 0, tokens: 0 }, sha256: '' } }
  }
  const ev = statSync(d.eval_pairs).isDirectory() ? resolveSplit(d.eval_pairs, d.eval_split) : d.eval_pairs
  return { train, eval: await loadPairs(ev, tok, { ...o, limit: d.max_eval_pairs }) }
}

export function dryRunReport(run: Run): string {
  const { o, args, data, schedule } = run
  const v = o.recipe.values
  const plan = memoryPlan(run.policy.config, o.stage, args, v.dpo.reference_mode, run.backend.active, v.lora.enabled, v.lora.r)
  const counts = (name: string, d: DataStats) => `${name}: ${d.pairs} pairs, ${d.tokens} tokens, prompts truncated ${d.prompt_truncated}, completions truncated ${d.completion_truncated}, boundary mismatches ${d.boundary_mismatch}`
  return [
    `${o.stage} dry run of ${o.recipe.path}${o.recipe.overrides.length ? ` + ${o.recipe.overrides.join(' ')}` : ''}`,
    `resolved: ${JSON.stringify({ model: v.model, data: v.data, [o.stage]: v[o.stage], ...(v.lora.enabled ? { lora: v.lora } : {}) })}`,
    counts(`train (${data.train.file})`, data.train.stats),
    counts(`eval (${data.eval.file})`, data.eval.stats),
    `${schedule.maxSteps} optimizer steps (${schedule.microPerEpoch} micro-batches/epoch, global batch ${args.per_device_train_batch_size * args.gradient_accumulation_steps}), warmup ${schedule.warmup}`,
    formatPlan(plan),
    workersLine(plan.rows.find((r) => r.mode === (v.lora.enabled ? 'lora' : 'full'))!, args.gradient_accumulation_steps, workerCount(o.workers ?? 1, run.backend), handoffBoard(run.policy.config, v.lora.enabled, plan.tokensPerMicroBatch)),
  ].join('\n')
}

/**
 * Memory with data-parallel workers (workers.ts). GA >= 2 (all-reduce): every replica holds the weights, 1/N of the
 * optimizer state and of the running gradient sum (its shard: the sum is reduce-scattered), activations, one
 * micro-batch's gradients and its shard of one micro-batch that came early (OrderedSum; more while one micro-batch
 * takes several times as long as the others); the ring's slots (ring.ts: two per worker, at most GA), one weight
 * slot and, with a trained untied LM head, a hand-off board per replica (handoff.ts) are shared, whatever the GA.
 * GA 1: only this thread trains; the others hold the weights, to score and evaluate with.
 */
function workersLine(row: PlanRow, ga: number, w: { n: number; why: string }, board: number): string {
  const gb = (x: number) => `${(x / 1e9).toFixed(2)} GB`
  const allReduce = ga >= 2 && w.n > 1
  // with GA >= 2: the running sum beside the micro-batch being added; all-reduce: this thread's shard of the sum,
  // of one early micro-batch and of the optimizer state only
  const main = row.total + (ga >= 2 ? row.gradients / (allReduce ? w.n : 1) : 0) + (allReduce ? row.gradients / w.n : 0) - (allReduce ? row.optimizer * (1 - 1 / w.n) : 0)
  if (w.n === 1) return `workers: 1 (${w.why}) · ${gb(main)}`
  const replica = allReduce ? main - row.reference : row.weights + row.activations // a frozen reference stays here
  const k = ringSlots(ga, w.n)
  const slots = allReduce ? (k + 1) * row.gradients + w.n * board : 0
  const shared = `${k} gradient slots, a weight slot${board ? ' and a board per worker for the LM head blocks they share out' : ''}`
  return `workers: ${w.n} (${w.why}) · main ${gb(main)} · each other worker ${gb(replica)} (${allReduce ? `a replica summing and stepping 1/${w.n} of the gradients and optimizer state` : 'weights only: GA 1 trains here'})${slots ? ` · slots ${gb(slots)} (shared: ${shared})` : ''} · total ${gb(main + (w.n - 1) * replica + slots)}`
}

/** One replica's hand-off board (handoff.ts), as the pool sizes it for micro-batches of `tokens`; none when the head is frozen or tied. */
function handoffBoard(c: ModelConfig, lora: boolean, tokens: number): number {
  return lora || c.tieWordEmbeddings ? 0 : boardBytes(c.hiddenSize, c.vocabSize, Math.ceil(tokens * HANDOFF_ROOM))
}

/** The starting policy, with LoRA adapters added (base frozen) when the recipe enables them. */
export function buildPolicy(run: Run): Model {
  const v = run.o.recipe.values
  const { model } = resolvePolicy(v.model.policy, { initSeed: v.model.init_seed })
  if (v.lora.enabled) addLora(model, { r: v.lora.r, alpha: v.lora.alpha, dropout: v.lora.dropout, targets: v.lora.target_modules }, Rng.fromKey(`lora:${run.args.seed}`))
  return model
}

/** A frozen copy of the policy's current weights. */
function cloneModel(model: Model): Model {
  return { config: model.config, params: new Map([...model.params].map(([k, p]) => [k, variableOf(p.clone(), false)])) }
}

export interface References {
  train: Reference
  eval: Reference
  /** a separate reference model held for the run (frozen mode), disposed with it */
  frozen?: Model
}

/**
 * DPO's reference, built while `policy` still holds its starting weights (before any resume): the policy itself
 * with adapters off (LoRA, no model.reference), a frozen copy, or `model.reference` loaded; precomputed once per
 * split (cached on disk) unless reference_mode is frozen.
 */
export async function buildReference(run: Run, policy: Model, pool?: WorkerPool): Promise<References> {
  const v = run.o.recipe.values
  const { train, eval: evalSet } = run.data
  const adaptersOff = policy.lora !== undefined && v.model.reference === null
  const separate = () => resolvePolicy(v.model.reference!, { trainable: false }).model
  if (v.dpo.reference_mode === 'frozen') {
    const model = adaptersOff ? policy : v.model.reference !== null ? separate() : cloneModel(policy)
    return { train: liveReference(model, train.pairs, false), eval: liveReference(model, evalSet.pairs, false), frozen: model === policy ? undefined : model }
  }
  let loaded: Model | undefined
  const model = () => (v.model.reference === null ? policy : (loaded ??= separate()))
  const referenceId = v.model.reference ?? run.policy.id
  const batchSize = run.args.per_device_eval_batch_size
  // the workers hold replicas of the policy: they can score with it (adapters off), not with a separate reference
  const compute = pool && v.model.reference === null ? (pairs: PairIds[], onBatch: (done: number) => void) => pool.logps(pairs, batchSize, false, onBatch) : undefined
  const opts = { referenceId, batchSize, quiet: run.o.quiet, log: run.log, compute }
  const refs = { train: precomputedReference(await precompute(model, train.pairs, { ...opts, label: 'train' })), eval: precomputedReference(await precompute(model, evalSet.pairs, { ...opts, label: 'eval' })) }
  if (loaded) disposeModel(loaded)
  return refs
}
