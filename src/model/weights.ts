/**
 * The model's weights on disk, in HF's layouts: `config.json` + `model.safetensors` (or shards) as
 * `save_pretrained` writes them, and PEFT's adapter layout (`adapter_config.json`, `adapter_model.safetensors`
 * with `base_model.model.<module>.lora_{A,B}.weight`, A [r, in], B [out, r]).
 *
 * The one layout map lives here: linear weights (projections, lm_head, LoRA A/B) are [out, in] on disk and
 * [in, out] in memory (mistral.ts); everything else is the same in both. `toDisk`/`fromDisk` are the only
 * conversions, used for weights, adapters and optimizer moments alike.
 */
import { join } from 'node:path'
import * as tf from '@tensorflow/tfjs'
import { AlignError } from '../errors.ts'
import { readJson } from '../files.ts'
import { ADAPTER_CONFIG, ADAPTER_WEIGHTS, openWeights, saveHfDir, type Weights } from '../checkpoint/hf.ts'
import type { TensorToWrite } from '../checkpoint/safetensors.ts'
import type { Rng } from '../rng.ts'
import { parseConfig, parameterShapes, type ModelConfig } from './config.ts'
import { checkTensorBytes, variableOf } from './backend.ts'
import type { Model } from './mistral.ts'

/** Held transposed in memory: the projections, the LM head and LoRA A/B. */
export const isLinear = (name: string) => name.endsWith('_proj.weight') || name === 'lm_head.weight' || /\.lora_[AB]\.weight$/.test(name)

/** [rows, cols] row-major -> [cols, rows]. */
export function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length)
  for (let r = 0; r < rows; r++) {
    const base = r * cols
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[base + c]!
  }
  return out
}

/** A tensor named `name` (weight or a moment of it) as it is written: HF shape and data, read when written. */
export function toDisk(name: string, t: tf.Tensor, writeAs = name): TensorToWrite {
  const linear = isLinear(name)
  return {
    name: writeAs,
    shape: linear ? [t.shape[1]!, t.shape[0]!] : [...t.shape],
    data: async () => {
      const d = (await t.data()) as Float32Array
      return linear ? transpose2d(d, t.shape[0]!, t.shape[1]!) : d.slice()
    },
  }
}

/** HF-layout data of `name` as an in-memory tensor. */
export function fromDisk(name: string, data: Float32Array, shape: number[]): tf.Tensor {
  if (!isLinear(name)) return tf.tensor(data, shape, 'float32')
  return tf.tensor(transpose2d(data, shape[0]!, shape[1]!), [shape[1]!, shape[0]!], 'float32')
}

/** The HF-layout data of one parameter. */
export function diskData(model: Model, name: string): Promise<Float32Array> {
  return (toDisk(name, model.params.get(name)!).data as () => Promise<Float32Array>)()
}

/** Build a model from HF-layout tensors (`read(name)` gives the on-disk [out, in] data). */
export function modelFromTensors(config: ModelConfig, read: (name: string, shape: number[]) => Float32Array, trainable = true): Model {
  for (const [name, shape] of parameterShapes(config)) {
    checkTensorBytes(`${name} [${shape}]`, 4 * shape.reduce((a, d) => a * d, 1), 'this model does not fit the adapter: use --backend wasm, or a GPU with a larger maxStorageBufferBindingSize')
  }
  const params = new Map<string, tf.Variable>()
  for (const [name, shape] of parameterShapes(config)) params.set(name, variableOf(fromDisk(name, read(name, shape), shape), trainable))
  return { config, params }
}

/** HF's init: normal(0, initializer_range) for embeddings and projections, ones for norms. */
export function initModel(config: ModelConfig, rng: Rng, std = 0.02): Model {
  return modelFromTensors(config, (name, shape) => {
    const out = new Float32Array(shape.reduce((a, d) => a * d, 1))
    if (name.endsWith('norm.weight')) out.fill(1)
    else for (let i = 0; i < out.length; i++) out[i] = std * rng.normal()
    return out
  })
}

export function loadConfig(dir: string): ModelConfig {
  const path = join(dir, 'config.json')
  return parseConfig(readJson(path), path)
}

/** Buffers some exporters write that are not parameters (transformers recomputes them). */
const IGNORED = /\.rotary_emb\.inv_freq$/

/** Check that `weights` holds exactly the tensors `config` implies, with their shapes, before anything is allocated. */
function checkTensors(dir: string, config: ModelConfig, weights: Weights): void {
  const shapes = parameterShapes(config)
  const extra = weights.names().filter((n) => !shapes.has(n) && !IGNORED.test(n))
  if (extra.length) throw new AlignError(`${dir}: checkpoint has tensor ${extra[0]}${extra.length > 1 ? ` and ${extra.length - 1} more` : ''} that config.json does not describe (it says ${config.numLayers} layers${config.tieWordEmbeddings ? ', tied embeddings' : ''}); the config and the weights belong to different models`)
  for (const [name, shape] of shapes) {
    if (!weights.has(name)) throw new AlignError(`${dir}: checkpoint has no tensor ${name} (config.json says ${config.numLayers} layers${config.tieWordEmbeddings ? ', tied embeddings' : ''})`)
    const got = weights.info(name).shape
    if (got.join(',') !== shape.join(',')) throw new AlignError(`${dir}: tensor ${name} has shape [${got}] but config.json implies [${shape}]`)
  }
}

/** Load an HF checkpoint directory (config.json + safetensors). */
export function loadModel(dir: string, trainable = true): Model {
  const config = loadConfig(dir)
  const weights = openWeights(dir)
  checkTensors(dir, config, weights)
  return modelFromTensors(config, (name) => weights.read(name), trainable)
}

/** Overwrite the model's base weights with those of `dir`, one tensor at a time (resume). */
export function loadWeightsInto(model: Model, dir: string): void {
  const weights = openWeights(dir)
  checkTensors(dir, model.config, weights)
  for (const name of parameterShapes(model.config).keys()) {
    const t = fromDisk(name, weights.read(name), weights.info(name).shape)
    model.params.get(name)!.assign(t)
    t.dispose()
  }
}

/** Load PEFT adapter weights into a model that has matching adapters (lora.ts `addLora`). */
export function loadAdaptersInto(model: Model, dir: string): void {
  const w = openWeights(dir, ADAPTER_WEIGHTS)
  for (const key of w.names()) {
    const name = key.replace(/^base_model\.model\./, '')
    const v = model.params.get(name)
    if (!v) throw new AlignError(`${dir}: adapter tensor ${key} does not match lora.target_modules of this model`)
    const t = fromDisk(name, w.read(key), w.info(key).shape)
    v.assign(t)
    t.dispose()
  }
}

/** adapter_config.json as PEFT writes it. */
export function adapterConfig(model: Model, base: string): Record<string, unknown> {
  const l = model.lora!
  return { peft_type: 'LORA', task_type: 'CAUSAL_LM', base_model_name_or_path: base, r: l.r, lora_alpha: l.alpha, lora_dropout: l.dropout, target_modules: l.targets, bias: 'none', fan_in_fan_out: false, inference_mode: true, init_lora_weights: true, modules_to_save: null, use_rslora: false, use_dora: false, revision: null }
}

export interface SaveOptions {
  dtype: 'F32' | 'BF16' | 'F16'
  /** tokenizer and generation_config files are copied from here */
  tokenizerDir?: string
  /** the base model's path, written into adapter_config.json (LoRA models) */
  base?: string
  /** more files (name -> JSON value or text) and safetensors files (always F32) */
  files?: Record<string, unknown>
  extraTensors?: Record<string, TensorToWrite[]>
  maxShardBytes?: number
  /** the chat template the model was trained with, written into tokenizer_config.json */
  chatTemplate?: string
}

/**
 * Save a model as transformers and PEFT read it: a LoRA model as its adapters only (PEFT layout), any other as
 * config.json + weights (sharded past `maxShardBytes`). The directory is written atomically.
 */
export async function savePretrained(dir: string, model: Model, o: SaveOptions): Promise<void> {
  const names = [...model.params.keys()]
  const common = { dtype: o.dtype, copyFrom: o.tokenizerDir, extraTensors: o.extraTensors, maxShardBytes: o.maxShardBytes, tokenizerConfig: o.chatTemplate === undefined ? undefined : { chat_template: o.chatTemplate } }
  if (model.lora) {
    const tensors = names.filter((n) => n.includes('.lora_')).map((n) => toDisk(n, model.params.get(n)!, `base_model.model.${n}`))
    await saveHfDir(dir, { ...common, tensors, weightsName: ADAPTER_WEIGHTS, files: { ...o.files, [ADAPTER_CONFIG]: adapterConfig(model, o.base ?? '') } })
  } else {
    await saveHfDir(dir, { ...common, tensors: names.map((n) => toDisk(n, model.params.get(n)!)), config: model.config.raw, files: o.files })
  }
}
