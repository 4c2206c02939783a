/**
 * What `align inspect` knows about a directory: an HF checkpoint (ours or a real download), a PEFT adapter
 * directory, or a run directory (metrics.jsonl, checkpoint-N/, final weights). Reads config.json and safetensors
 * headers only; tensor payloads are read one at a time, and only for --stats or a comparison.
 */
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { AlignError } from '../errors.ts'
import { ADAPTER_CONFIG, openWeights, weightsKind, type Weights } from '../checkpoint/hf.ts'
import { readJson } from '../files.ts'

export interface TensorSummary {
  name: string
  shape: number[]
  dtype: string
  params: number
  file: string
  stats?: { mean: number; std: number; min: number; max: number; nan: number; inf: number }
}

export interface CheckpointSummary {
  dir: string
  kind: 'model' | 'adapter'
  architecture?: string
  config?: Record<string, unknown>
  parameters: number
  dtypes: Record<string, number>
  files: { name: string; bytes: number }[]
  tensors: TensorSummary[]
  lora?: { r: number; alpha: number; dropout: number; targets: string[]; base: string | null; parameters: number }
  training?: { stage?: string; global_step?: number; epoch?: number; seed?: number; last?: Record<string, number> }
  provenance?: { recipe?: string; overrides?: string[]; values?: unknown }
}

/** A JSON file if present (a present but invalid one is an error naming it). */
function json(path: string): Record<string, any> | undefined {
  return existsSync(path) ? readJson(path) : undefined
}

export function isCheckpoint(dir: string): boolean {
  return weightsKind(dir) !== undefined
}

export function summarize(dir: string, withStats = false): CheckpointSummary {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new AlignError(`${dir}: no such directory`)
  if (!isCheckpoint(dir)) throw new AlignError(`${dir}: not a checkpoint (no model.safetensors, model.safetensors.index.json or adapter_model.safetensors)`)
  const adapter = weightsKind(dir) === 'adapter'
  const w = openWeights(dir)
  const config = json(join(dir, 'config.json'))
  const tensors = tensorSummaries(w, withStats)
  const dtypes: Record<string, number> = {}
  for (const t of tensors) dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + t.params
  const files = readdirSync(dir).filter((f) => statSync(join(dir, f)).isFile()).sort().map((name) => ({ name, bytes: statSync(join(dir, name)).size }))
  const s: CheckpointSummary = { dir, kind: adapter ? 'adapter' : 'model', architecture: config?.architectures?.[0], config, parameters: tensors.reduce((a, t) => a + t.params, 0), dtypes, files, tensors }
  const ac = json(join(dir, ADAPTER_CONFIG))
  if (ac) s.lora = { r: ac.r, alpha: ac.lora_alpha, dropout: ac.lora_dropout, targets: ac.target_modules, base: ac.base_model_name_or_path ?? null, parameters: tensors.filter((t) => t.name.includes('lora_')).reduce((a, t) => a + t.params, 0) }
  const st = json(join(dir, 'trainer_state.json'))
  const al = json(join(dir, 'align_state.json')) ?? st // stage and seed: align_state.json (trainer_state.json in older runs)
  if (st) s.training = { stage: al?.stage, global_step: st.global_step, epoch: st.epoch, seed: al?.seed, last: lastTrainRow(st.log_history ?? []) }
  const rec = json(join(dir, 'recipe.resolved.json'))
  if (rec) s.provenance = { recipe: rec.recipe, overrides: rec.overrides, values: rec.values }
  return s
}

function lastTrainRow(rows: Record<string, number>[]): Record<string, number> | undefined {
  return [...rows].reverse().find((r) => r.loss !== undefined)
}

function tensorSummaries(w: Weights, withStats: boolean): TensorSummary[] {
  return w.names().sort(naturalCompare).map((name) => {
    const info = w.info(name)
    const file = w.headers.find((h) => h.tensors.get(name) === info)?.path.split('/').pop() ?? ''
    const t: TensorSummary = { name, shape: info.shape, dtype: info.dtype, params: info.shape.reduce((a, d) => a * d, 1), file }
    if (withStats) t.stats = stats(w.read(name))
    return t
  })
}

export function stats(x: Float32Array): NonNullable<TensorSummary['stats']> {
  let sum = 0
  let sq = 0
  let min = Infinity
  let max = -Infinity
  let nan = 0
  let inf = 0
  let n = 0
  for (const v of x) {
    if (Number.isNaN(v)) nan++
    else if (!Number.isFinite(v)) inf++
    else {
      sum += v
      sq += v * v
      if (v < min) min = v
      if (v > max) max = v
      n++
    }
  }
  const mean = sum / Math.max(1, n)
  return { mean, std: Math.sqrt(Math.max(0, sq / Math.max(1, n) - mean * mean)), min, max, nan, inf }
}

/** `model.layers.2.x` before `model.layers.10.x`. */
export function naturalCompare(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true })
}

/** Per-tensor relative change ‖A−B‖/‖B‖ for the tensors both have, largest first. */
export function compare(a: string, b: string): { name: string; relative: number; absolute: number }[] {
  const wa = openWeights(a, isAdapter(a) ? 'adapter_model.safetensors' : undefined)
  const wb = openWeights(b, isAdapter(b) ? 'adapter_model.safetensors' : undefined)
  const out: { name: string; relative: number; absolute: number }[] = []
  for (const name of wa.names()) {
    if (!wb.has(name)) continue
    if (wa.info(name).shape.join() !== wb.info(name).shape.join()) throw new AlignError(`${name}: shape [${wa.info(name).shape}] in ${a} but [${wb.info(name).shape}] in ${b}`)
    const x = wa.read(name)
    const y = wb.read(name)
    let d = 0
    let n = 0
    for (let i = 0; i < x.length; i++) {
      d += (x[i]! - y[i]!) ** 2
      n += y[i]! ** 2
    }
    out.push({ name, relative: Math.sqrt(d) / Math.max(Math.sqrt(n), 1e-30), absolute: Math.sqrt(d) })
  }
  if (out.length === 0) throw new AlignError(`${a} and ${b} share no tensor names`)
  return out.sort((p, q) => q.relative - p.relative)
}

const isAdapter = (d: string) => existsSync(join(d, 'adapter_model.safetensors')) && !existsSync(join(d, 'model.safetensors'))
