/**
 * Preference pairs as token ids: the one pair type (`PairIds`) every later stage uses, loaded from
 *   - a binarize output or HuggingFaceH4/ultrafeedback_binarized rows (`chosen`/`rejected` message lists, the
 *     prompt = chosen[:-1]),
 *   - plain-text rows (`prompt`, `chosen`, `rejected` strings, as trl-lib's preference files), or
 *   - pre-tokenized rows (`prompt_ids`, `chosen_ids`, `rejected_ids`),
 * tokenized with the chat template once and truncated as TRL does; truncations are counted, never silent.
 */
import { createHash } from 'node:crypto'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { AlignError, describe } from '../errors.ts'
import { readRows } from '../rows.ts'
import { tokenizeTurn, withEmptySystem, type ChatTokenizer, type Message } from '../model/tokenizer.ts'

export interface PairIds {
  promptIds: number[]
  chosenIds: number[]
  rejectedIds: number[]
}

/** Tokens of a pair counted once: prompt + chosen + rejected (a packed row's length, what tokens/s counts). */
export const pairTokens = (p: PairIds) => p.promptIds.length + p.chosenIds.length + p.rejectedIds.length

export interface DataStats {
  pairs: number
  prompt_truncated: number
  completion_truncated: number
  boundary_mismatch: number
  tokens: number
}

export interface PairSet {
  file: string
  pairs: PairIds[]
  stats: DataStats
  /** sha256 of the file's bytes */
  sha256: string
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

/**
 * Prompt messages and the two completion texts of an H4-schema row (`chosen`/`rejected` message lists) or a plain
 * prompt/chosen/rejected row; for SFT also a `messages` row (ultrachat_200k: the last assistant turn is learned).
 */
function textPair(row: Record<string, unknown>, where: string, sft: boolean): { prompt: Message[]; chosen: string; rejected: string } {
  const last = (m: Message[], col: string) => {
    const x = m[m.length - 1]
    if (!x || x.role !== 'assistant') throw new AlignError(`${where}, column ${col}: the last message must be the assistant's`)
    return x.content
  }
  if (Array.isArray(row.chosen)) {
    const chosen = messages(row.chosen, `${where}, column chosen`)
    const rejected = sft && row.rejected === undefined ? chosen : messages(row.rejected, `${where}, column rejected`)
    return { prompt: chosen.slice(0, -1), chosen: last(chosen, 'chosen'), rejected: last(rejected, 'rejected') }
  }
  if (sft && Array.isArray(row.messages)) {
    const m = messages(row.messages, `${where}, column messages`)
    return { prompt: m.slice(0, -1), chosen: last(m, 'messages'), rejected: '' }
  }
  for (const k of ['prompt', 'chosen', 'rejected']) {
    if (typeof row[k] !== 'string') throw new AlignError(`${where}: missing column ${k} (need H4-style chosen/rejected message lists or prompt/chosen/rejected strings${sft ? ', or a messages list' : ''})`)
  }
  return { prompt: [{ role: 'user', content: row.prompt as string }], chosen: row.chosen as string, rejected: row.rejected as string }
}

export const isTokenized = (row: Record<string, unknown>) => Array.isArray(row.prompt_ids) && Array.isArray(row.chosen_ids) && Array.isArray(row.rejected_ids)

export const tokenizedPair = (row: Record<string, unknown>): PairIds => ({ promptIds: row.prompt_ids as number[], chosenIds: row.chosen_ids as number[], rejectedIds: row.rejected_ids as number[] })

export interface Truncation {
  promptTruncated: boolean
  completionTruncated: boolean
}

/**
 * TRL's DPO truncation (DPOConfig `truncation_mode="keep_end"`): if prompt + the longer completion exceeds
 * max_length, keep the prompt's last max_prompt_length tokens (BOS kept in front), then cut both completions to
 * what is left of max_length.
 */
export function truncatePair(p: PairIds, bosId: number, maxLength: number, maxPromptLength: number): PairIds & Truncation {
  let { promptIds, chosenIds, rejectedIds } = p
  let promptTruncated = false
  let completionTruncated = false
  if (promptIds.length + Math.max(chosenIds.length, rejectedIds.length) > maxLength) {
    if (promptIds.length > maxPromptLength) {
      const hasBos = promptIds[0] === bosId
      promptIds = hasBos ? [bosId, ...promptIds.slice(promptIds.length - (maxPromptLength - 1))] : promptIds.slice(-maxPromptLength)
      promptTruncated = true
    }
    const room = maxLength - promptIds.length
    if (chosenIds.length > room || rejectedIds.length > room) {
      chosenIds = chosenIds.slice(0, room)
      rejectedIds = rejectedIds.slice(0, room)
      completionTruncated = true
    }
  }
  return { promptIds, chosenIds, rejectedIds, promptTruncated, completionTruncated }
}

/** Tokenize one text pair with the chat template (model/tokenizer.ts `tokenizeTurn`) and truncate it. */
export function tokenizePair(t: ChatTokenizer, prompt: Message[], chosen: string, rejected: string, maxLength: number, maxPromptLength: number): PairIds & Truncation & { boundaryMismatch: boolean } {
  const c = tokenizeTurn(t, prompt, chosen)
  const r = tokenizeTurn(t, prompt, rejected)
  const cut = truncatePair({ promptIds: c.promptIds, chosenIds: c.completionIds, rejectedIds: r.completionIds }, t.bosId, maxLength, maxPromptLength)
  return { ...cut, boundaryMismatch: c.boundaryMismatch || r.boundaryMismatch }
}

export interface LoadOptions {
  maxLength: number
  maxPromptLength: number
  /** keep the first N pairs (0 = all) */
  limit?: number
  /** the handbook's auto_insert_empty_system_msg */
  insertEmptySystem?: boolean
  /** SFT rows: `messages` lists are accepted and the rejected side is not needed */
  sft?: boolean
}

/** Tokenize rows of any supported schema; `where(i)` names row i in errors. */
export function tokenizeRows(rows: Record<string, any>[], where: (i: number) => string, tok: ChatTokenizer | undefined, o: LoadOptions): { pairs: PairIds[]; stats: DataStats } {
  const stats: DataStats = { pairs: 0, prompt_truncated: 0, completion_truncated: 0, boundary_mismatch: 0, tokens: 0 }
  const pairs = rows.map((row, i): PairIds => {
    let p: PairIds
    if (isTokenized(row)) p = tokenizedPair(row)
    else {
      if (!tok) throw new AlignError(`${where(i)}: text pairs need a tokenizer`)
      const t = textPair(row, where(i), o.sft ?? false)
      const r = tokenizePair(tok, o.insertEmptySystem ? withEmptySystem(tok, t.prompt) : t.prompt, t.chosen, t.rejected, o.maxLength, o.maxPromptLength)
      stats.prompt_truncated += +r.promptTruncated
      stats.completion_truncated += +r.completionTruncated
      stats.boundary_mismatch += +r.boundaryMismatch
      p = { promptIds: r.promptIds, chosenIds: r.chosenIds, rejectedIds: r.rejectedIds }
    }
    stats.tokens += pairTokens(p)
    return p
  })
  stats.pairs = pairs.length
  return { pairs, stats }
}

/** sha256 of files' bytes, one digest over all of them in order. */
export function filesSha256(files: string[]): string {
  const h = createHash('sha256')
  for (const f of files) h.update(readFileSync(f))
  return h.digest('hex')
}

/** Load and tokenize a pairs file (`limit` keeps its first rows). */
export async function loadPairs(path: string, tok: ChatTokenizer | undefined, o: LoadOptions): Promise<PairSet> {
  let rows = await readRows(path)
  if (o.limit) rows = rows.slice(0, o.limit)
  return { file: path, ...tokenizeRows(rows, (i) => `${path} row ${i + 1}`, tok, o), sha256: filesSha256([path]) }
}

/** sha256 of the token ids of a pair list: what a cache of numbers computed from them must be keyed by. */
export function pairsDigest(pairs: PairIds[]): string {
  const h = createHash('sha256')
  for (const p of pairs) h.update(JSON.stringify([p.promptIds, p.chosenIds, p.rejectedIds]))
  return h.digest('hex')
}
