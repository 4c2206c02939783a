/**
 * Training checkpoints: `checkpoint-<step>/` in HF layout (weights, config, tokenizer files) plus what resume
 * needs — `trainer_state.json` (HF's TrainerState, with log_history), `optimizer.safetensors` (exp_avg.<name>,
 * exp_avg_sq.<name>, in HF [out, in] layout), `optimizer.json`, `rng_state.json` and the resolved recipe. Each
 * directory is written to a temp path and renamed, so any `checkpoint-N` that exists is complete.
 */
import { existsSync } from 'node:fs'
import { listCheckpoints } from '../checkpoint/runs.ts'
import { join } from 'node:path'
import * as tf from '@tensorflow/tfjs'
import { AlignError } from '../errors.ts'
import { openWeights, readJson, saveHfDir } from '../checkpoint/hf.ts'
import type { TensorToWrite } from '../checkpoint/safetensors.ts'
import { isLinear, transpose2d, type Model } from '../model/mistral.ts'
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
  stage: 'sft' | 'dpo'
  seed: number
}

const hfData = (name: string, v: tf.Tensor) => {
  const d = v.dataSync() as Float32Array
  return isLinear(name) ? transpose2d(d, v.shape[0]!, v.shape[1]!) : d.slice()
}
const hfShape = (name: string, v: tf.Tensor) => (isLinear(name) ? [v.shape[1]!, v.shape[0]!] : [...v.shape])

export interface SaveArgs {
  dir: string
  model: Model
  /** the trainable tensors to save as weights (all, or the LoRA adapters in PEFT layout) */
  weights: TensorToWrite[]
  weightsName?: string
  config?: Record<string, unknown>
  dtype: 'F32' | 'BF16' | 'F16'
  tokenizerDir?: string
  state: TrainerState
  optimizer?: Optimizer
  files?: Record<string, unknown>
}

export function saveCheckpoint(a: SaveArgs): void {
  const extra: Record<string, TensorToWrite[]> = {}
  const files: Record<string, unknown> = { 'trainer_state.json': a.state, ...a.files }
  if (a.optimizer) {
    const ts: TensorToWrite[] = []
    for (const [kind, map] of [['exp_avg', a.optimizer.m], ['exp_avg_sq', a.optimizer.v]] as const) {
      for (const [name, v] of map) ts.push({ name: `${kind}.${name}`, shape: hfShape(name, v), data: () => hfData(name, v) })
    }
    extra['optimizer.safetensors'] = ts
    files['optimizer.json'] = { optimizer: a.optimizer.config.optimizer, step: a.optimizer.step, config: a.optimizer.config }
  }
  saveHfDir(a.dir, { config: a.config, tensors: a.weights, dtype: a.dtype, copyFrom: a.tokenizerDir, files, extraTensors: extra, weightsName: a.weightsName })
}

/** The model's weights as HF tensors (transposed back to [out, in]). */
export function modelWeights(model: Model): TensorToWrite[] {
  return [...model.params].map(([name, v]) => ({ name, shape: hfShape(name, v), data: () => hfData(name, v) }))
}

/** PEFT's adapter layout: `base_model.model.<module>.lora_{A,B}.weight`, A [r, in], B [out, r]. */
export function adapterWeights(model: Model): TensorToWrite[] {
  return [...model.params].filter(([name]) => name.includes('.lora_')).map(([name, v]) => ({ name: `base_model.model.${name}`, shape: hfShape(name, v), data: () => hfData(name, v) }))
}

/** adapter_config.json as PEFT writes it. */
export function adapterConfig(model: Model, base: string): Record<string, unknown> {
  const l = model.lora!
  return { peft_type: 'LORA', task_type: 'CAUSAL_LM', base_model_name_or_path: base, r: l.r, lora_alpha: l.alpha, lora_dropout: l.dropout, target_modules: l.targets, bias: 'none', fan_in_fan_out: false, inference_mode: true, init_lora_weights: true, modules_to_save: null, use_rslora: false, use_dora: false, revision: null }
}

/** Load adapter weights saved by adapterWeights into a model that has LoRA added. */
export function loadAdapters(dir: string, model: Model): void {
  const w = openWeights(dir, 'adapter_model.safetensors')
  for (const key of w.names()) {
    const name = key.replace(/^base_model\.model\./, '')
    const v = model.params.get(name)
    if (!v) throw new AlignError(`${dir}: adapter tensor ${key} does not match this recipe's lora.target_modules`)
    const shape = w.info(key).shape
    v.assign(tf.tensor(transpose2d(w.read(key), shape[0]!, shape[1]!), [shape[1]!, shape[0]!]))
  }
}

/** Restore optimizer moments saved by saveCheckpoint into `opt` (variables created as needed). */
export function loadOptimizer(dir: string, opt: Optimizer): void {
  const meta = readJson(join(dir, 'optimizer.json'))
  if (meta.optimizer !== opt.config.optimizer) throw new AlignError(`${dir}: checkpoint optimizer is ${meta.optimizer} but the recipe says ${opt.config.optimizer}`)
  const w = openWeights(dir, 'optimizer.safetensors')
  for (const key of w.names()) {
    const dot = key.indexOf('.')
    const kind = key.slice(0, dot)
    const name = key.slice(dot + 1)
    const shape = w.info(key).shape
    let data = w.read(key)
    let mem = shape
    if (isLinear(name)) {
      data = transpose2d(data, shape[0]!, shape[1]!)
      mem = [shape[1]!, shape[0]!]
    }
    const map = kind === 'exp_avg' ? opt.m : opt.v
    map.get(name)?.dispose()
    map.set(name, tf.variable(tf.tensor(data, mem), false))
  }
  opt.step = meta.step
}

export function resolveResume(runDir: string, resume: string): string {
  if (resume !== 'latest') {
    if (!existsSync(join(resume, 'trainer_state.json'))) throw new AlignError(`--resume ${resume}: not a checkpoint directory (no trainer_state.json)`)
    return resume
  }
  const last = listCheckpoints(runDir).pop()
  if (!last) throw new AlignError(`--resume latest: no checkpoint-<step> directory in ${runDir}`)
  return last.dir
}
