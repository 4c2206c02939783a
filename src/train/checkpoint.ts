/**
 * Training checkpoints: `checkpoint-<step>/` in HF layout (model/weights.ts `savePretrained`: weights or PEFT
 * adapters, config, tokenizer files with the chat template used) plus what resume needs — `trainer_state.json`
 * (transformers' TrainerState fields only, with log_history), `align_state.json` (stage, seed, loss), `optimizer.safetensors` (exp_avg.<name>, exp_avg_sq.<name>, in HF [out, in] layout),
 * `optimizer.json` and the resolved recipe. Each directory is written to a temp path and renamed, so any
 * `checkpoint-N` that exists is complete.
 *
 * The whole state of a run is the step number, the weights and the optimizer moments: the batch order is a
 * function of (seed, step) (sampler.ts) and LoRA dropout of (seed, micro-batch), so no RNG state is saved.
 */
import { existsSync, readdirSync, renameSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import * as tf from '@tensorflow/tfjs'
import { variableOf } from '../model/backend.ts'
import { AlignError } from '../errors.ts'
import { readJson, tempPath } from '../files.ts'
import { openWeights } from '../checkpoint/hf.ts'
import { checkpointName, listCheckpoints, pruneCheckpoints } from '../checkpoint/runs.ts'
import type { Model } from '../model/mistral.ts'
import { fromDisk, loadAdaptersInto, loadWeightsInto, savePretrained, toDisk } from '../model/weights.ts'
import type { Optimizer } from './optim.ts'

export interface TrainerState {
  global_step: number
  max_steps: number
  epoch: number
  num_train_epochs: number
  logging_steps: number
  eval_steps: number
  save_steps: number
  train_batch_size: number
  log_history: Record<string, number>[]
  best_metric: null
  best_model_checkpoint: null
  is_local_process_zero: true
  is_world_process_zero: true
}

/** What align itself needs to resume, beside transformers' TrainerState: `align_state.json`. */
export interface AlignState {
  stage: 'sft' | 'dpo'
  seed: number
  /** what the step's loss is a mean over (STEP_LOSS); absent in checkpoints saved before it was recorded */
  loss?: string
}

/**
 * What a step's loss is a mean over, recorded with each checkpoint: SFT's token NLLs are summed and divided by the
 * step's scored tokens (HF Trainer's num_items_in_batch, transformers >= 4.46), DPO's losses are a mean over the
 * step's pairs (TRL).
 */
export const STEP_LOSS = { sft: 'scored tokens of the step', dpo: 'pairs of the step' } as const

/**
 * A line for resuming SFT from a checkpoint saved before the step's token mean (2026-11-29, no `loss` recorded):
 * each micro-batch's loss was then its own token mean over gradient_accumulation_steps, so with GA > 1 the resumed
 * steps weight micro-batches differently from the steps saved.
 */
export function resumeLossNote(dir: string, saved: AlignState, ga: number): string | undefined {
  if (saved.stage !== 'sft' || ga < 2 || saved.loss === STEP_LOSS.sft) return undefined
  return `--resume ${dir}: this SFT checkpoint was saved when each micro-batch's loss was its own token mean over gradient_accumulation_steps; the steps from here divide the step's token NLL sum by its scored tokens (HF Trainer's num_items_in_batch), so micro-batches weigh by their tokens from here on; start afresh for a run trained one way throughout`
}

export interface SaveArgs {
  dir: string
  model: Model
  dtype: 'F32' | 'BF16' | 'F16'
  tokenizerDir: string
  /** the base model path written into adapter_config.json */
  base: string
  state: TrainerState
  alignState: AlignState
  chatTemplate: string
  /** saved with the weights for resume (not with the final weights) */
  optimizer?: Optimizer
  files?: Record<string, unknown>
}

/** The optimizer's moments as HF-layout tensors, and its step and config. */
function optimizerFiles(opt: Optimizer): { tensors: ReturnType<typeof toDisk>[]; meta: Record<string, unknown> } {
  const tensors = (['exp_avg', 'exp_avg_sq'] as const).flatMap((kind) => [...(kind === 'exp_avg' ? opt.m : opt.v)].map(([name, v]) => toDisk(name, v, `${kind}.${name}`)))
  return { tensors, meta: { optimizer: opt.config.optimizer, step: opt.step, config: opt.config } }
}

/** Whether every value of these tensors is finite: sum(t · 0) is NaN exactly when t holds a NaN or ±Inf. */
export async function allFinite(tensors: tf.Tensor[]): Promise<boolean> {
  if (tensors.length === 0) return true
  const probe = tf.tidy(() => tf.addN(tensors.map((t) => tf.sum(tf.mul(t, 0)))))
  const [v] = await probe.data()
  probe.dispose()
  return Number.isFinite(v)
}

/** Save a checkpoint; weights or optimizer moments that are not all finite are refused, never written. */
export async function saveCheckpoint(a: SaveArgs): Promise<void> {
  const moments = a.optimizer ? [...a.optimizer.m.values(), ...a.optimizer.v.values()] : []
  if (!(await allFinite([...a.model.params.values(), ...moments]))) {
    throw new AlignError(`${a.alignState.stage}: the weights or optimizer state hold NaN/Inf after step ${a.state.global_step}; nothing was saved for it. The last good checkpoint is kept; lower learning_rate or check the optimizer settings`)
  }
  const opt = a.optimizer ? optimizerFiles(a.optimizer) : undefined
  const files = { 'trainer_state.json': a.state, 'align_state.json': a.alignState, ...a.files, ...(opt ? { 'optimizer.json': opt.meta } : {}) }
  await savePretrained(a.dir, a.model, { dtype: a.dtype, tokenizerDir: a.tokenizerDir, base: a.base, files, chatTemplate: a.chatTemplate, extraTensors: opt ? { 'optimizer.safetensors': opt.tensors } : undefined })
}

/** Weight files a save may leave at a directory's top level (all replaced by the next final save). */
const WEIGHT_FILE = /^(model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|adapter_model\.safetensors|adapter_config\.json)$/

/**
 * Save the final weights at the run directory itself, where transformers' `from_pretrained(output_dir)` and the
 * HF Trainer put them: written whole to a temp directory first, then moved in file by file, so checkpoints,
 * metrics and logs beside them stay.
 */
export async function saveFinal(runDir: string, a: Omit<SaveArgs, 'dir' | 'optimizer'>): Promise<void> {
  const tmp = tempPath(join(runDir, 'final'))
  rmSync(tmp, { recursive: true, force: true })
  await saveCheckpoint({ ...a, dir: tmp })
  for (const f of readdirSync(runDir)) if (WEIGHT_FILE.test(f)) rmSync(join(runDir, f))
  for (const f of readdirSync(tmp)) renameSync(join(tmp, f), join(runDir, f))
  rmSync(tmp, { recursive: true, force: true })
}

/** Save `checkpoint-<step>` in `runDir` with the optimizer, then keep only the last `keep`. */
export async function saveStepCheckpoint(runDir: string, keep: number, a: Omit<SaveArgs, 'dir'>): Promise<string> {
  const dir = join(runDir, checkpointName(a.state.global_step))
  await saveCheckpoint({ ...a, dir })
  pruneCheckpoints(runDir, keep)
  return dir
}

/** Restore optimizer moments saved by saveCheckpoint into `opt` (variables created as needed). */
function loadOptimizer(dir: string, opt: Optimizer): void {
  const meta = readJson(join(dir, 'optimizer.json'))
  if (meta.optimizer !== opt.config.optimizer) throw new AlignError(`${dir}: checkpoint optimizer is ${meta.optimizer} but the recipe says ${opt.config.optimizer}`)
  const w = openWeights(dir, 'optimizer.safetensors')
  for (const key of w.names()) {
    const dot = key.indexOf('.')
    const [kind, name] = [key.slice(0, dot), key.slice(dot + 1)]
    const map = kind === 'exp_avg' ? opt.m : opt.v
    map.get(name)?.dispose()
    map.set(name, variableOf(fromDisk(name, w.read(key), w.info(key).shape), false))
  }
  opt.step = meta.step
}

/** The checkpoint `--resume` names: `latest` (the newest complete checkpoint-N of the run) or a directory. */
export function resolveResume(runDir: string, resume: string): string {
  if (resume !== 'latest') {
    if (!existsSync(join(resume, 'trainer_state.json'))) throw new AlignError(`--resume ${resume}: not a checkpoint directory (no trainer_state.json)`)
    return resume
  }
  const last = listCheckpoints(runDir).pop()
  if (!last) throw new AlignError(`--resume latest: no checkpoint-<step> directory in ${runDir}`)
  return last.dir
}

/**
 * Load a checkpoint's weights (or adapters) into `model` and its moments into `opt`; returns its trainer state, and
 * a `note` when the run goes on with a loss the checkpoint was not trained with (resumeLossNote; `ga`: the run's).
 */
export function resume(dir: string, stage: 'sft' | 'dpo', model: Model, opt: Optimizer, ga = 1): { state: TrainerState; note?: string } {
  const state = readJson(join(dir, 'trainer_state.json')) as TrainerState
  const saved = readJson(join(dir, 'align_state.json')) as AlignState
  if (saved.stage !== stage) throw new AlignError(`--resume ${dir}: a ${saved.stage} checkpoint cannot resume ${stage}`)
  if (model.lora) loadAdaptersInto(model, dir)
  else loadWeightsInto(model, dir)
  loadOptimizer(dir, opt)
  return { state, note: resumeLossNote(dir, saved, ga) }
}
