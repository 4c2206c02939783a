/**
 * What a policy spec names, resolved in one place for every command (train, eval, sample, bench):
 *   `preset:<name>`      a config from config.ts PRESETS, randomly initialised from a seed
 *   an HF directory      config.json + safetensors (transformers' save_pretrained layout)
 *   a PEFT adapter dir   adapter_config.json + adapter_model.safetensors on top of its base model
 * and which tokenizer goes with it: the directory's own, else its base's, else the shipped Mistral tokenizer
 * (said so in `tokenizerSource`, never silently).
 */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { AlignError } from '../errors.ts'
import { readJson } from '../files.ts'
import { ADAPTER_CONFIG, weightsKind } from '../checkpoint/hf.ts'
import { SHIPPED_TOKENIZER } from '../paths.ts'
import { Rng } from '../rng.ts'
import { PRESETS, parameterCount, parseConfig, type ModelConfig } from './config.ts'
import { addLora } from './lora.ts'
import type { Model } from './mistral.ts'
import { checkTemplate, checkVocabulary, loadTokenizer, type ChatTokenizer } from './tokenizer.ts'
import { initModel, loadAdaptersInto, loadConfig, loadModel } from './weights.ts'

export interface PolicySpec {
  /** where the weights come from: the preset id with its seed, or the directory */
  id: string
  kind: 'preset' | 'model' | 'adapter'
  config: ModelConfig
  /** the directory of the full weights (the base of an adapter); undefined for presets */
  baseDir?: string
  /** the tokenizer directory that goes with this policy, and why it was chosen */
  tokenizerDir: string
  tokenizerSource: 'own' | 'base' | 'shipped'
}

const hasTokenizer = (dir: string | undefined) => dir !== undefined && existsSync(join(dir, 'tokenizer.json'))

function adapterBase(dir: string): string {
  const cfg = readJson(join(dir, ADAPTER_CONFIG))
  const base = cfg.base_model_name_or_path
  if (typeof base !== 'string' || !existsSync(base)) throw new AlignError(`${join(dir, ADAPTER_CONFIG)}: base_model_name_or_path ${JSON.stringify(base)} is not a local directory; point it at the base model's directory`)
  return base
}

/** Resolve a spec without loading weights (dry runs, vocabulary checks). */
export function describePolicy(spec: string, initSeed = 0): PolicySpec {
  if (spec.startsWith('preset:')) {
    const raw = PRESETS[spec.slice(7)]
    if (!raw) throw new AlignError(`model.policy ${spec}: unknown preset; presets: ${Object.keys(PRESETS).join(', ')}`)
    return { id: `${spec}:seed${initSeed}`, kind: 'preset', config: parseConfig(raw, spec), tokenizerDir: SHIPPED_TOKENIZER, tokenizerSource: 'shipped' }
  }
  if (!existsSync(spec)) throw new AlignError(`${spec}: no such model directory (a policy is an HF checkpoint directory, a PEFT adapter directory, or preset:<name>)`)
  const kind = weightsKind(spec)
  const baseDir = kind === 'adapter' ? adapterBase(spec) : spec
  const tokenizerSource = hasTokenizer(spec) ? 'own' : hasTokenizer(baseDir) ? 'base' : 'shipped'
  const tokenizerDir = { own: spec, base: baseDir, shipped: SHIPPED_TOKENIZER }[tokenizerSource]
  return { id: spec, kind: kind ?? 'model', config: loadConfig(baseDir), baseDir, tokenizerDir, tokenizerSource }
}

/**
 * Load a policy. A preset is initialised from `initSeed` (and refused above 1B parameters: random 7B weights
 * are never what a user means); an adapter directory loads its base and the adapters on top.
 */
export function resolvePolicy(spec: string, o: { initSeed?: number; trainable?: boolean } = {}): { model: Model; spec: PolicySpec } {
  const p = describePolicy(spec, o.initSeed)
  if (p.kind === 'preset') {
    const params = parameterCount(p.config)
    if (params > 1e9) throw new AlignError(`model.policy ${spec} would train ${(params / 1e9).toFixed(1)}B random weights; point model.policy at an SFT checkpoint directory (e.g. zephyr-7b-sft-full), or add --dry-run for the plan`)
    return { model: initModel(p.config, Rng.fromKey(`init:${o.initSeed ?? 0}`)), spec: p }
  }
  const model = loadModel(p.baseDir!, o.trainable ?? true)
  if (p.kind === 'adapter') {
    const cfg = readJson(join(spec, ADAPTER_CONFIG))
    addLora(model, { r: cfg.r, alpha: cfg.lora_alpha, dropout: cfg.lora_dropout ?? 0, targets: cfg.target_modules }, Rng.fromKey('adapter-load'))
    loadAdaptersInto(model, spec)
  }
  return { model, spec: p }
}

/**
 * The tokenizer a policy runs with — `dir` (a recipe's model.tokenizer) or the one that goes with the policy —
 * checked to fit its vocabulary, its chat template (`chatTemplate` replaces it) probed for runaway rendering,
 * and a note when the shipped tokenizer stands in for a directory that has none.
 */
export async function policyTokenizer(spec: PolicySpec, o: { dir?: string | null; chatTemplate?: string | null; probeTemplate?: boolean; note?: (s: string) => void } = {}): Promise<ChatTokenizer> {
  const dir = o.dir ?? spec.tokenizerDir
  if (!o.dir && spec.tokenizerSource === 'shipped' && spec.kind !== 'preset') o.note?.(`${spec.id} has no tokenizer.json (nor its base): using the shipped Mistral-7B tokenizer (${dir})`)
  const tok = loadTokenizer(dir, o.chatTemplate)
  checkVocabulary(tok, spec.config.vocabSize)
  if (o.probeTemplate ?? true) await checkTemplate(tok)
  return tok
}
