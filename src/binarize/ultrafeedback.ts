/**
 * One openbmb/UltraFeedback row, checked and reduced to what binarization needs.
 *
 * Accepts both forms the data exists in: the Hub's raw JSONL and its parquet conversion. Quirks handled
 * (openbmb/UltraFeedback's dataset card and raw JSONL files): `Rating` is a string "1".."5" or "N/A" (numbers are
 * accepted too); in older raw files an aspect under `annotations` is a list of dicts (the first is used);
 * `overall_score` and `fine-grained_score` may be null. Anything else of the wrong shape is an error that
 * names the column, e.g. `completions[2].annotations.honesty.Rating`.
 */
import { AlignError, describe } from '../errors.ts'

export const ASPECTS = ['helpfulness', 'honesty', 'instruction_following', 'truthfulness'] as const
export type Aspect = (typeof ASPECTS)[number]

export interface Completion {
  model: string
  response: string
  /** critique score 1–10, as stored (may carry the 1→10 bug) */
  overallScore: number | null
  fineGrainedScore: number | null
  /** aspect -> rating 1..5, null for "N/A" or missing */
  ratings: Record<Aspect, number | null>
}

export interface UFRow {
  source: string
  instruction: string
  completions: Completion[]
}

/** Top-level columns binarize reads; the rest of the schema is ignored. */
export const REQUIRED_COLUMNS = ['source', 'instruction', 'completions'] as const

/** Where a row came from, for error messages: `data/x.parquet row 17` (1-based within the file). */
export type RowWhere = string

export function parseRow(raw: unknown, where: RowWhere): UFRow {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new AlignError(`${where}: expected a JSON object with columns ${REQUIRED_COLUMNS.join(', ')}, got ${describe(raw)}`)
  }
  const r = raw as Record<string, unknown>
  for (const c of REQUIRED_COLUMNS) {
    if (!(c in r)) throw new AlignError(`${where}: missing column ${JSON.stringify(c)} (the openbmb/UltraFeedback schema has source, instruction, completions[])`)
  }
  const source = str(r.source, where, 'source', true)
  const instruction = str(r.instruction, where, 'instruction', false)
  if (r.completions === null || r.completions === undefined) return { source, instruction, completions: [] }
  if (!Array.isArray(r.completions)) throw bad(where, 'completions', 'a list of completion objects', r.completions)
  const completions = r.completions.map((c, i) => parseCompletion(c, where, `completions[${i}]`))
  return { source, instruction, completions }
}

function parseCompletion(raw: unknown, where: string, col: string): Completion {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw bad(where, col, 'a completion object', raw)
  const c = raw as Record<string, unknown>
  if (!('response' in c)) throw new AlignError(`${where}: missing column ${col}.response`)
  const ann = c.annotations ?? {}
  if (typeof ann !== 'object' || Array.isArray(ann)) throw bad(where, `${col}.annotations`, 'an object of aspect ratings', ann)
  const ratings = {} as Record<Aspect, number | null>
  for (const aspect of ASPECTS) {
    let a = (ann as Record<string, unknown>)[aspect]
    if (Array.isArray(a)) a = a[0] // older raw files: a list of dicts
    if (a === undefined || a === null) {
      ratings[aspect] = null
      continue
    }
    if (typeof a !== 'object') throw bad(where, `${col}.annotations.${aspect}`, 'an object with a Rating', a)
    ratings[aspect] = rating((a as Record<string, unknown>).Rating, where, `${col}.annotations.${aspect}.Rating`)
  }
  return {
    model: c.model === undefined || c.model === null ? '' : str(c.model, where, `${col}.model`, false),
    response: c.response === null ? '' : str(c.response, where, `${col}.response`, false),
    overallScore: num(c.overall_score, where, `${col}.overall_score`),
    fineGrainedScore: num(c['fine-grained_score'], where, `${col}.fine-grained_score`),
    ratings,
  }
}

function rating(v: unknown, where: string, col: string): number | null {
  if (v === undefined || v === null || v === 'N/A' || v === '') return null
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\s*\d+(\.\d+)?\s*$/.test(v) ? Number(v) : NaN
  if (!(n >= 1 && n <= 5)) throw bad(where, col, 'a rating "1".."5" or "N/A"', v)
  return n
}

function num(v: unknown, where: string, col: string): number | null {
  if (v === undefined || v === null) return null
  if (typeof v === 'bigint') return Number(v)
  if (typeof v !== 'number' || Number.isNaN(v)) throw bad(where, col, 'a number', v)
  return v
}

function str(v: unknown, where: string, col: string, nullable: boolean): string {
  if (typeof v === 'string') return v
  if (nullable && (v === null || v === undefined)) return ''
  throw bad(where, col, 'a string', v)
}

function bad(where: string, col: string, want: string, got: unknown): AlignError {
  return new AlignError(`${where}, column ${col}: expected ${want}, got ${describe(got)}`)
}
