/**
 * A run's curves: metrics.jsonl (or trainer_state.json's log_history) → the last values and terminal charts
 * (plot.ts draws the picture).
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { AlignError } from '../errors.ts'
import { readJson } from '../files.ts'

export type Row = Record<string, number>

/** The panels: one chart per entry, series drawn together. */
export const PANELS: { title: string; series: string[] }[] = [
  { title: 'loss', series: ['loss', 'eval_loss'] },
  { title: 'rewards/accuracies', series: ['rewards/accuracies', 'eval_rewards/accuracies'] },
  { title: 'rewards/margins', series: ['rewards/margins', 'eval_rewards/margins'] },
  { title: 'rewards (chosen vs rejected)', series: ['rewards/chosen', 'rewards/rejected', 'eval_rewards/chosen', 'eval_rewards/rejected'] },
  { title: 'logps (chosen vs rejected)', series: ['logps/chosen', 'logps/rejected'] },
  { title: 'learning_rate', series: ['learning_rate'] },
  { title: 'grad_norm', series: ['grad_norm'] },
]

export function readHistory(dir: string): Row[] | undefined {
  const m = join(dir, 'metrics.jsonl')
  if (existsSync(m)) {
    return readFileSync(m, 'utf8').split('\n').filter(Boolean).map((l, i) => {
      try {
        return JSON.parse(l)
      } catch {
        throw new AlignError(`${m} line ${i + 1}: not valid JSON (a run killed mid-write? delete the partial line)`)
      }
    })
  }
  const s = join(dir, 'trainer_state.json')
  if (existsSync(s)) return readJson(s).log_history as Row[]
  return undefined
}

export function series(rows: Row[], key: string): [number, number][] {
  return rows.filter((r) => typeof r[key] === 'number' && Number.isFinite(r[key])).map((r) => [r.step!, r[key]!])
}

/** Last value of every metric, in first-seen order. */
export function lastValues(rows: Row[]): Record<string, { step: number; value: number }> {
  const out: Record<string, { step: number; value: number }> = {}
  for (const r of rows) for (const [k, v] of Object.entries(r)) if (k !== 'step' && typeof v === 'number') out[k] = { step: r.step!, value: v }
  return out
}

const BLOCKS = ' ▁▂▃▄▅▆▇█'

/** A small terminal chart: `height` rows of block characters, values resampled to `width` columns. */
export function asciiChart(points: [number, number][], width = 60, height = 6): string[] {
  if (points.length === 0) return []
  const ys = points.map((p) => p[1])
  const lo = Math.min(...ys)
  const hi = Math.max(...ys)
  const cols = Array.from({ length: Math.min(width, points.length) }, (_, c) => {
    const i = Math.round((c * (points.length - 1)) / Math.max(1, Math.min(width, points.length) - 1))
    return hi === lo ? 0.5 : (ys[i]! - lo) / (hi - lo)
  })
  const lines: string[] = []
  for (let r = height - 1; r >= 0; r--) {
    lines.push(cols.map((v) => BLOCKS[Math.max(r === 0 ? 1 : 0, Math.min(8, Math.round((v * height - r) * 8)))]).join('')) // the bottom row always shows
  }
  const fmt = (x: number) => (Math.abs(x) >= 1e-2 || x === 0 ? x.toFixed(4) : x.toExponential(2))
  lines[0] += `  ${fmt(hi)}`
  lines[lines.length - 1] += `  ${fmt(lo)}`
  lines.push(`step ${points[0]![0]} … ${points[points.length - 1]![0]}`)
  return lines
}
