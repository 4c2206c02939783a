/**
 * Training data: preference pairs from a binarize output (HuggingFaceH4/ultrafeedback_binarized schema, parquet or
 * JSONL: `chosen`/`rejected` message lists, the prompt = chosen[:-1]), from plain-text rows (`prompt`, `chosen`,
 * `rejected` strings, as trl-lib's files), or pre-tokenized (`prompt_ids`, `chosen_ids`, `rejected_ids`).
 * Tokenized with the chat template once; truncations are counted and reported, never silent.
 */
import { createHash } from 'node:crypto'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { AlignError, describe } from '../errors.ts'
import { readRows } from '../rows.ts'
import { tokenizePair, type ChatTokenizer, type Message } from '../model/tokenizer.ts'
import { pairTokens, type PairIds } from './batch.ts'

export interface TextPair {
  prompt: Message[]
  chosen: string
  rejected: string
}

export interface DataStats {
  pairs: number
  prompt_truncated: number
  completion_truncated: number
  boundary_mismatch: number
  tokens: number
}

/** A split file: `<dir>/<split>.parquet` or `.jsonl`, or a file path. */
export function resolveSplit(path: string, split: string): string {
  if (existsSync(path) && statSync(path).isDirectory()) {
    for (const ext of ['parquet', 'jsonl']) if (existsSync(join(path, `${split}.${ext}`))) return join(path, `${split}.${ext}`)
    throw new AlignError(`${path}: no ${split}.parquet or ${split}.jsonl (run align binarize --out ${path} first)`)
  }
  if (!existsSync(path)) throw new AlignError(`${path}: no such pairs file`)
  return path
}

function messages(v: unknown, where: string): Message[] {
  if (!Array.isArray(v) || !v.every((m) => m && typeof m.content === 'string' && ['system', 'user', 'assistant'].includes(m.role))) {
    throw new AlignError(`${where}: expected a list of {role, content} messages, got ${describe(v)}`)
  }
  return v.map((m) => ({ role: m.role, content: m.content }))
}

/** Text pair from an H4-schema row or a plain prompt/chosen/rejected row. */
export function toTextPair(row: Record<string, unknown>, where: string): TextPair {
  if (Array.isArray(row.chosen)) {
    const chosen = messages(row.chosen, `${where}, column chosen`)
    const rejected = messages(row.rejected, `${where}, column rejected`)
    const last = (m: Message[], col: string) => {
      const x = m[m.length - 1]
      if (!x || x.role !== 'assistant') throw new AlignError(`${where}, column ${col}: the last message must be the assistant's`)
      return x.content
    }
    return { prompt: chosen.slice(0, -1), chosen: last(chosen, 'chosen'), rejected: last(rejected, 'rejected') }
  }
  for (const k of ['prompt', 'chosen', 'rejected']) {
    if (typeof row[k] !== 'string') throw new AlignError(`${where}: missing column ${k} (need H4-style chosen/rejected message lists or prompt/chosen/rejected strings)`)
  }
  return { prompt: [{ role: 'user', content: row.prompt as string }], chosen: row.chosen as string, rejected: row.rejected as string }
}

export const isTokenized = (row: Record<string, unknown>) => Array.isArray(row.prompt_ids) && Array.isArray(row.chosen_ids) && Array.isArray(row.rejected_ids)

/** Load and tokenize a pairs file. `limit` keeps the first N pairs. */
export async function loadPairs(path: string, tok: ChatTokenizer | undefined, maxLength: number, maxPromptLength: number, limit = 0): Promise<{ pairs: PairIds[]; stats: DataStats; sha256: string }> {
  let rows = await readRows(path)
  if (limit > 0) rows = rows.slice(0, limit)
  const stats: DataStats = { pairs: 0, prompt_truncated: 0, completion_truncated: 0, boundary_mismatch: 0, tokens: 0 }
  const pairs = rows.map((row, i) => {
    const where = `${path} row ${i + 1}`
    let p: PairIds
    if (isTokenized(row)) p = { promptIds: row.prompt_ids as number[], chosenIds: row.chosen_ids as number[], rejectedIds: row.rejected_ids as number[] }
    else {
      if (!tok) throw new AlignError(`${where}: text pairs need a tokenizer`)
      const t = toTextPair(row, where)
      const r = tokenizePair(tok, t.prompt, t.chosen, t.rejected, maxLength, maxPromptLength)
      stats.prompt_truncated += +r.promptTruncated
      stats.completion_truncated += +r.completionTruncated
      stats.boundary_mismatch += +r.boundaryMismatch
      p = r
    }
    stats.tokens += pairTokens(p)
    return p
  })
  stats.pairs = pairs.length
  const sha256 = createHash('sha256').update(readFileSync(path)).digest('hex')
  return { pairs, stats, sha256 }
}

/** Micro-batches of indices for one epoch: the (seeded) order cut into groups of `size`, the last one partial. */
export function epochBatches(order: number[], size: number): number[][] {
  const out: number[][] = []
  for (let i = 0; i < order.length; i += size) out.push(order.slice(i, i + size))
  return out
}

/**
 * HF's LengthGroupedSampler (TrainingArguments.group_by_length): cut a shuffled order into megabatches of
 * 50 micro-batches, sort each by length (longest first), so a micro-batch holds pairs of similar length and
 * padding shrinks; the longest micro-batch goes first, so an out-of-memory shows at step 1.
 */
export function lengthGroupedOrder(order: number[], lengths: number[], batchSize: number): number[] {
  const mega = 50 * batchSize
  const out: number[] = []
  for (let i = 0; i < order.length; i += mega) out.push(...order.slice(i, i + mega).sort((a, b) => lengths[b]! - lengths[a]! || a - b))
  const longest = out.reduce((best, idx, k) => (lengths[idx]! > lengths[out[best]!]! ? k : best), 0)
  const first = Math.floor(longest / batchSize) * batchSize
  if (first > 0) {
    const head = out.slice(0, batchSize)
    const swap = out.slice(first, first + batchSize)
    if (swap.length === batchSize) {
      out.splice(0, batchSize, ...swap)
      out.splice(first, batchSize, ...head)
    }
  }
  return out
}

/** Padding share of a set of micro-batches: padded tokens / all tokens, rows padded to their batch's longest. */
export function paddingFraction(batches: number[][], rowLengths: (i: number) => number[]): number {
  let real = 0
  let total = 0
  for (const b of batches) {
    const rows = b.flatMap(rowLengths)
    real += rows.reduce((a, x) => a + x, 0)
    total += rows.length * Math.max(...rows)
  }
  return total ? 1 - real / total : 0
}
