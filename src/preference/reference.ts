/**
 * The DPO reference: summed completion log-probs of the reference model for any pairs of a split, from one of
 *   - `precomputed` values (TRL `precompute_ref_log_probs`): one pass before training, cached on disk,
 *   - a `live` model evaluated on each batch: a frozen copy, or (LoRA) the policy with its adapters disabled,
 *     which is TRL's reference when `ref_model` is None and the policy is a PEFT model.
 * Training, in-loop eval and `align eval` all ask a `Reference` for the indices of their batch.
 *
 * The disk cache (`checkpoints/.cache/ref-logps-<key>.json`) is keyed by the reference weights' identity and
 * the sha256 of the token ids themselves, so anything that changes the numbers — tokenizer files, chat
 * template, truncation settings, the data or its order — changes the key.
 */
import { createHash } from 'node:crypto'
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import * as tf from '@tensorflow/tfjs'
import { writeFileAtomic } from '../files.ts'
import { Progress } from '../progress.ts'
import { rowLogps } from '../model/logprobs.ts'
import { withAdapters } from '../model/lora.ts'
import type { Model } from '../model/mistral.ts'
import { pairBatch } from './batch.ts'
import { pairsDigest, type PairIds } from './pairs.ts'

/** Summed completion log-probs of pairs: chosen[i], rejected[i] for pair i. */
export interface PairLogps {
  chosen: number[]
  rejected: number[]
}

export interface Reference {
  /** log-probs of the split's pairs at these indices */
  logps(indices: number[]): Promise<PairLogps>
}

export const CACHE_DIR = join('checkpoints', '.cache')

/**
 * Summed completion log-probs of pairs, `batchSize` pairs per forward pass, no gradient. `adapters` false
 * runs a LoRA model as its base. `onBatch(done)` reports progress.
 */
export async function pairLogps(model: Model, pairs: PairIds[], batchSize: number, adapters: boolean, onBatch?: (done: number) => void): Promise<PairLogps> {
  const out: PairLogps = { chosen: [], rejected: [] }
  for (let i = 0; i < pairs.length; i += batchSize) {
    onBatch?.(i)
    const chunk = pairs.slice(i, i + batchSize)
    const t = withAdapters(model, adapters, () => tf.tidy(() => rowLogps(model, pairBatch(chunk, 0, model.config)).logps))
    const lp = Array.from(await t.data())
    t.dispose()
    out.chosen.push(...lp.slice(0, chunk.length))
    out.rejected.push(...lp.slice(chunk.length))
  }
  return out
}

/** A reference whose values were computed once. */
export function precomputedReference(values: PairLogps): Reference {
  return { logps: async (idx) => ({ chosen: idx.map((i) => values.chosen[i]!), rejected: idx.map((i) => values.rejected[i]!) }) }
}

/** A reference model run on each batch (a frozen copy; or the policy itself with `adapters` false). */
export function liveReference(model: Model, pairs: PairIds[], adapters: boolean): Reference {
  return { logps: (idx) => pairLogps(model, idx.map((i) => pairs[i]!), idx.length, adapters) }
}

/** Identity of a model: a preset id as is, or sha256 of a checkpoint's config and safetensors (size + mtime above 2 GB). */
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

/**
 * The reference's log-probs of `pairs`, from the cache when this reference already scored these exact token ids,
 * else computed (`model()` is called only then; a LoRA model runs with its adapters off) and cached.
 */
export async function precompute(model: () => Model, pairs: PairIds[], o: { referenceId: string; batchSize: number; label: string; quiet?: boolean; log: (s: string) => void; compute?: (pairs: PairIds[], onBatch: (done: number) => void) => Promise<PairLogps> }): Promise<PairLogps> {
  const key = createHash('sha256').update(JSON.stringify({ reference: modelIdentity(o.referenceId), pairs: pairsDigest(pairs) })).digest('hex').slice(0, 24)
  const path = join(CACHE_DIR, `ref-logps-${key}.json`)
  if (existsSync(path)) {
    const c = JSON.parse(readFileSync(path, 'utf8'))
    if (c.chosen?.length === pairs.length && c.rejected?.length === pairs.length) {
      o.log(`reference log-probs (${o.label}): cached (${path})`)
      return { chosen: c.chosen, rejected: c.rejected }
    }
  }
  const t0 = performance.now()
  const progress = new Progress(`reference log-probs (${o.label})`, { quiet: o.quiet })
  const onBatch = (done: number) => progress.update(done, pairs.length, 'pairs')
  const { chosen, rejected } = await (o.compute ? o.compute(pairs, onBatch) : pairLogps(model(), pairs, o.batchSize, false, onBatch))
  writeFileAtomic(path, JSON.stringify({ reference: o.referenceId, chosen, rejected }))
  progress.succeed(`reference log-probs (${o.label}): ${pairs.length} pairs in ${((performance.now() - t0) / 1000).toFixed(1)} s -> ${path}`)
  return { chosen, rejected }
}
