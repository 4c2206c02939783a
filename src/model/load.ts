/**
 * Load any policy directory for inference: a full HF checkpoint, or a PEFT adapter directory on top of its base
 * (`adapter_config.json` base_model_name_or_path, or an explicit base).
 */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { AlignError } from '../errors.ts'
import { readJson } from '../checkpoint/hf.ts'
import { SHIPPED_TOKENIZER } from '../recipe.ts'
import { Rng } from '../rng.ts'
import { loadModel } from './io.ts'
import { addLora, type Model } from './mistral.ts'
import { loadAdapters } from '../train/state.ts'

export function isAdapterDir(dir: string): boolean {
  return existsSync(join(dir, 'adapter_config.json')) && existsSync(join(dir, 'adapter_model.safetensors'))
}

export function loadAny(dir: string, base?: string): { model: Model; baseDir: string } {
  if (!isAdapterDir(dir)) return { model: loadModel(dir, false), baseDir: dir }
  const cfg = readJson(join(dir, 'adapter_config.json'))
  const baseDir = base ?? cfg.base_model_name_or_path
  if (!baseDir || !existsSync(baseDir)) throw new AlignError(`${dir}: adapter base ${JSON.stringify(baseDir)} not found; pass the base model directory with --base`)
  const model = loadModel(baseDir, false)
  addLora(model, { r: cfg.r, alpha: cfg.lora_alpha, dropout: cfg.lora_dropout ?? 0, targets: cfg.target_modules }, Rng.fromKey('unused'))
  loadAdapters(dir, model)
  return { model, baseDir }
}

/** The tokenizer directory for a checkpoint: its own files, else its base's, else the shipped Mistral tokenizer. */
export function tokenizerDirFor(dir: string, baseDir: string): string {
  for (const d of [dir, baseDir]) if (existsSync(join(d, 'tokenizer.json'))) return d
  return SHIPPED_TOKENIZER
}
