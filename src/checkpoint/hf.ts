/**
 * HuggingFace checkpoint directories: `config.json`, weights as `model.safetensors` or shards listed in
 * `model.safetensors.index.json`, `generation_config.json`, tokenizer files. Read lazily (headers first, one
 * tensor at a time); written into a temp directory renamed into place, sharded like `save_pretrained`
 * (`model-00001-of-0000N.safetensors`, default 5 GB shards) so transformers loads it unchanged.
 */
import { copyFileSync, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs'
import { basename, join } from 'node:path'
import { AlignError } from '../errors.ts'
import { readJson, writeAtomic } from '../files.ts'
import { readHeader, readTensor, writeSafetensors, type SafetensorsHeader, type TensorInfo, type TensorToWrite } from './safetensors.ts'

export const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model']

export interface Weights {
  dir: string
  /** files in load order */
  headers: SafetensorsHeader[]
  names(): string[]
  info(name: string): TensorInfo
  read(name: string): Float32Array
  has(name: string): boolean
}

export const ADAPTER_WEIGHTS = 'adapter_model.safetensors'
export const ADAPTER_CONFIG = 'adapter_config.json'

/**
 * What a directory holds: full weights (`model.safetensors` or a shard index), a PEFT adapter
 * (`adapter_model.safetensors` without full weights), or neither. The one place that decides it.
 */
export function weightsKind(dir: string): 'model' | 'adapter' | undefined {
  if (['model.safetensors', 'model.safetensors.index.json'].some((f) => existsSync(join(dir, f)))) return 'model'
  return existsSync(join(dir, ADAPTER_WEIGHTS)) ? 'adapter' : undefined
}

/** Open the weights of an HF directory: sharded index, single `model.safetensors`, or `adapter_model.safetensors`. */
export function openWeights(dir: string, file?: string): Weights {
  if (!existsSync(dir)) throw new AlignError(`${dir}: no such checkpoint directory`)
  const index = join(dir, 'model.safetensors.index.json')
  const where = new Map<string, SafetensorsHeader>()
  const headers: SafetensorsHeader[] = []
  if (!file && existsSync(index)) {
    const map = readJson(index).weight_map as Record<string, string>
    if (!map || typeof map !== 'object') throw new AlignError(`${index}: has no weight_map`)
    const byFile = new Map<string, SafetensorsHeader>()
    for (const [name, shard] of Object.entries(map)) {
      if (typeof shard !== 'string' || shard !== basename(shard) || shard === '..' || shard === '.') throw new AlignError(`${index}: maps ${name} to ${JSON.stringify(shard)}; shard names must be files inside ${dir}`)
      let h = byFile.get(shard)
      if (!h) {
        const p = join(dir, shard)
        if (!existsSync(p)) throw new AlignError(`${index}: lists shard ${shard} (for ${name}) but ${p} does not exist; the download is incomplete`)
        h = readHeader(p)
        byFile.set(shard, h)
        headers.push(h)
      }
      if (!h.tensors.has(name)) throw new AlignError(`${index}: maps ${name} to ${shard}, which has no such tensor`)
      where.set(name, h)
    }
  } else {
    const f = file ?? (weightsKind(dir) === 'adapter' ? ADAPTER_WEIGHTS : 'model.safetensors')
    if (!f || !existsSync(join(dir, f))) {
      const bins = readdirSync(dir).filter((x) => x.endsWith('.bin') || x.endsWith('.pt'))
      const hint = bins.length ? ` (found ${bins.join(', ')}: convert pytorch .bin weights to safetensors first)` : ''
      throw new AlignError(`${dir}: no model.safetensors or model.safetensors.index.json${hint}`)
    }
    const h = readHeader(join(dir, f))
    headers.push(h)
    for (const name of h.tensors.keys()) where.set(name, h)
  }
  const get = (name: string) => {
    const h = where.get(name)
    if (!h) throw new AlignError(`${dir}: checkpoint has no tensor ${name}`)
    return h
  }
  return {
    dir,
    headers,
    names: () => [...where.keys()],
    info: (name) => get(name).tensors.get(name)!,
    read: (name) => readTensor(get(name), name),
    has: (name) => where.has(name),
  }
}

export interface SaveOptions {
  config?: Record<string, unknown>
  tensors: TensorToWrite[]
  dtype: 'F32' | 'BF16' | 'F16'
  /** other files to write (name -> JSON value or text) */
  files?: Record<string, unknown>
  /** directory whose tokenizer / generation_config files are copied */
  copyFrom?: string
  maxShardBytes?: number
  /** weights file name for a single file (adapter_model.safetensors for PEFT) */
  weightsName?: string
  /** more safetensors files (optimizer state), always F32 */
  extraTensors?: Record<string, TensorToWrite[]>
  /** keys merged into the copied tokenizer_config.json (e.g. the chat_template a run used) */
  tokenizerConfig?: Record<string, unknown>
}

/** Write an HF directory atomically (files.ts `writeAtomic`): a directory that exists is complete. */
export async function saveHfDir(dir: string, o: SaveOptions): Promise<void> {
  await writeAtomic(dir, async (tmp) => {
    mkdirSync(tmp, { recursive: true })
    if (o.copyFrom) {
      for (const f of [...TOKENIZER_FILES, 'generation_config.json']) if (existsSync(join(o.copyFrom, f))) copyFileSync(join(o.copyFrom, f), join(tmp, f))
    }
    if (o.tokenizerConfig) {
      const path = join(tmp, 'tokenizer_config.json')
      writeFileSync(path, JSON.stringify({ ...(existsSync(path) ? readJson(path) : {}), ...o.tokenizerConfig }, null, 2) + '\n')
    }
    const torchDtype = { F32: 'float32', BF16: 'bfloat16', F16: 'float16' }[o.dtype]
    if (o.config) writeFileSync(join(tmp, 'config.json'), JSON.stringify({ ...o.config, torch_dtype: torchDtype }, null, 2) + '\n')
    for (const [name, v] of Object.entries(o.files ?? {})) writeFileSync(join(tmp, name), typeof v === 'string' ? v : JSON.stringify(v, null, 2) + '\n')
    await writeWeights(tmp, o)
    for (const [name, tensors] of Object.entries(o.extraTensors ?? {})) await writeSafetensors(join(tmp, name), tensors, 'F32')
  })
}

async function writeWeights(dir: string, o: SaveOptions): Promise<void> {
  const bytesPer = o.dtype === 'F32' ? 4 : 2
  const max = o.maxShardBytes ?? 5e9
  const shards: TensorToWrite[][] = [[]]
  let size = 0
  for (const t of [...o.tensors].sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const bytes = t.shape.reduce((a, d) => a * d, 1) * bytesPer
    if (size > 0 && size + bytes > max) {
      shards.push([])
      size = 0
    }
    shards[shards.length - 1]!.push(t)
    size += bytes
  }
  if (shards.length === 1) {
    await writeSafetensors(join(dir, o.weightsName ?? 'model.safetensors'), shards[0]!, o.dtype)
    return
  }
  const n = shards.length
  const weightMap: Record<string, string> = {}
  let total = 0
  for (const [i, ts] of shards.entries()) {
    const name = `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`
    total += await writeSafetensors(join(dir, name), ts, o.dtype)
    for (const t of ts) weightMap[t.name] = name
  }
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n')
}
