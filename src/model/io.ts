/**
 * Load and save a policy as an HF directory: config.json + safetensors (bf16 by default, like the Hub),
 * tokenizer files carried along. Shapes are checked against the config before anything is allocated.
 */
import { join } from 'node:path'
import { AlignError } from '../errors.ts'
import { openWeights, readJson, saveHfDir } from '../checkpoint/hf.ts'
import { parseConfig, parameterShapes, type ModelConfig } from './config.ts'
import { diskData, modelFromTensors, type Model } from './mistral.ts'

export function loadConfig(dir: string): ModelConfig {
  const path = join(dir, 'config.json')
  return parseConfig(readJson(path), path)
}

export function loadModel(dir: string, trainable = true): Model {
  const config = loadConfig(dir)
  const weights = openWeights(dir)
  for (const [name, shape] of parameterShapes(config)) {
    if (!weights.has(name)) throw new AlignError(`${dir}: checkpoint has no tensor ${name} (config.json says ${config.numLayers} layers${config.tieWordEmbeddings ? ', tied embeddings' : ''})`)
    const got = weights.info(name).shape
    if (got.join(',') !== shape.join(',')) throw new AlignError(`${dir}: tensor ${name} has shape [${got}] but config.json implies [${shape}]`)
  }
  return modelFromTensors(config, (name) => weights.read(name), trainable)
}

export function saveModel(dir: string, model: Model, o: { dtype?: 'F32' | 'BF16' | 'F16'; copyFrom?: string; files?: Record<string, unknown>; maxShardBytes?: number } = {}): void {
  saveHfDir(dir, {
    config: model.config.raw,
    dtype: o.dtype ?? 'BF16',
    copyFrom: o.copyFrom,
    files: o.files,
    maxShardBytes: o.maxShardBytes,
    tensors: [...parameterShapes(model.config)].map(([name, shape]) => ({ name, shape, data: () => diskData(model, name) })),
  })
}
