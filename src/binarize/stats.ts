/**
 * The binarize report: counts per split, per drop reason and per source, and exact-value histograms of
 * score_chosen, score_rejected and the margin (UltraFeedback scores move in steps of 0.25–0.5, so the
 * distinct values are few). Saved as stats.json (deterministic: no timings) and printed as a table.
 */
import { DROP_REASONS, type DropReason } from './rules.ts'
import type { Split } from './write.ts'

export interface InputStat {
  path: string
  format: string
  bytes: number
  sha256: string
  rows: number
}

/** [value, count] pairs in ascending value order (an array: JSON objects reorder integer-like keys). */
export type Histogram = [number, number][]

export interface BinarizeStats {
  recipe: string
  options: Record<string, unknown>
  inputs: InputStat[]
  rows_read: number
  pairs_total: number
  pairs: Record<Split, number>
  dropped: Record<DropReason, number>
  histograms: { score_chosen: Histogram; score_rejected: Histogram; margin: Histogram }
  sources: Record<string, { rows: number; pairs: number; dropped: number }>
}

export function emptyStats(recipe: string, options: Record<string, unknown>): BinarizeStats {
  return {
    recipe,
    options,
    inputs: [],
    rows_read: 0,
    pairs_total: 0,
    pairs: { train_prefs: 0, test_prefs: 0 },
    dropped: Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReason, number>,
    histograms: { score_chosen: [], score_rejected: [], margin: [] },
    sources: {},
  }
}

export function countHist(h: Histogram, value: number): void {
  const v = Math.round(value * 1e6) / 1e6
  const bin = h.find((b) => b[0] === v)
  if (bin) bin[1]++
  else h.push([v, 1])
}

/** Histograms with keys in numeric order, so stats.json is stable and readable. */
export function sortHistograms(s: BinarizeStats): void {
  for (const k of ['score_chosen', 'score_rejected', 'margin'] as const) {
    s.histograms[k].sort((a, b) => a[0] - b[0])
  }
  s.sources = Object.fromEntries(Object.entries(s.sources).sort((a, b) => b[1].rows - a[1].rows || (a[0] < b[0] ? -1 : 1)))
}

/** Human-readable report (the spinner's successor on stdout). */
export function formatStats(s: BinarizeStats, seconds?: number): string {
  const out: string[] = []
  const n = (x: number) => x.toLocaleString('en-US')
  const pad = (x: string, w: number) => x.padEnd(w)
  const rate = seconds ? ` in ${seconds.toFixed(1)} s (${n(Math.round(s.rows_read / seconds))} rows/s)` : ''
  out.push(`rows read         ${n(s.rows_read)} from ${s.inputs.length} file(s)${rate}`)
  out.push(`pairs written     ${n(s.pairs_total)}  (train_prefs ${n(s.pairs.train_prefs)}, test_prefs ${n(s.pairs.test_prefs)})`)
  const dropped = Object.values(s.dropped).reduce((a, b) => a + b, 0)
  out.push(`rows dropped      ${n(dropped)}`)
  for (const [reason, count] of Object.entries(s.dropped)) if (count > 0) out.push(`  ${pad(reason, 26)}${n(count)}`)
  out.push('')
  out.push(`${pad('source', 20)}${'rows'.padStart(8)}${'pairs'.padStart(8)}${'dropped'.padStart(9)}`)
  for (const [src, c] of Object.entries(s.sources)) out.push(`${pad(src || '(none)', 20)}${n(c.rows).padStart(8)}${n(c.pairs).padStart(8)}${n(c.dropped).padStart(9)}`)
  for (const [name, h] of Object.entries(s.histograms)) {
    out.push('')
    out.push(`${name}:`)
    const max = Math.max(1, ...h.map((b) => b[1]))
    for (const [v, c] of h) out.push(`  ${String(v).padStart(6)} ${n(c).padStart(7)} ${'█'.repeat(Math.max(c > 0 ? 1 : 0, Math.round((30 * c) / max)))}`)
  }
  return out.join('\n')
}
