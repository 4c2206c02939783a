/**
 * Reference log-probs precomputed once (TRL `precompute_ref_log_probs`): one pass of the reference over the pairs
 * in data order, cached on disk under checkpoints/.cache/ keyed by sha256 of (reference identity, data file hash,
 * tokenizer, truncation settings). A later run, or a resumed one, reads the cache instead of recomputing.
 */
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import type { Model } from '../model/mistral.ts'
import { pairLogps, type PairIds } from './batch.ts'
import { Progress } from '../progress.ts'

export const CACHE_DIR = join('checkpoints', '.cache')

/** Identity of a model: preset name + seed, or sha256 of a checkpoint's safetensors (size + mtime above 2 GB). */
export function modelIdentity(spec: string): string {
  if (!existsSync(spec) || !statSync(spec).isDirectory()) return spec
  const h = createHash('sha256')
  for (const f of readdirSync(spec).filter((f) => f.endsWith('.safetensors') || f === 'config.json').sort()) {
    const st = statSync(join(spec, f))
    h.update(f)
    if (st.size < 2 ** 31) h.update(readFileSync(join(spec, f)))
    else h.update(`${st.size}:${st.mtimeMs}`)
  }
  return h.digest('hex')
}

export interface RefKey {
  refId: string
  tokDir: string
  maxLength: number
  maxPrompt: number
  data: string
  limit: number
}

export async function referenceLogps(getRef: () => Model, pairs: PairIds[], key: RefKey, batchSize: number, log: (s: string) => void, quiet = false): Promise<{ chosen: number[]; rejected: number[] }> {
  const id = createHash('sha256').update(JSON.stringify({ ...key, refId: modelIdentity(key.refId), tokDir: modelIdentity(key.tokDir) })).digest('hex').slice(0, 24)
  const path = join(CACHE_DIR, `ref-logps-${id}.json`)
  if (existsSync(path)) {
    const c = JSON.parse(readFileSync(path, 'utf8'))
    if (c.chosen?.length === pairs.length) {
      log(`reference log-probs: cached (${path})`)
      return c
    }
  }
  const t0 = performance.now()
  const progress = new Progress('reference log-probs', { quiet })
  const { chosen, rejected } = pairLogps(getRef(), pairs, batchSize, false, (done) => progress.update(done, pairs.length, 'pairs'))
  mkdirSync(CACHE_DIR, { recursive: true })
  writeFileSync(path + '.tmp', JSON.stringify({ key, chosen, rejected }))
  renameSync(path + '.tmp', path)
  progress.succeed(`reference log-probs: ${pairs.length} pairs in ${((performance.now() - t0) / 1000).toFixed(1)} s -> ${path}`)
  return { chosen, rejected }
}
