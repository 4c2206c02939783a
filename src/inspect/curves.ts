/**
 * A run's curves: metrics.jsonl (or trainer_state.json's log_history) → the last values, terminal charts and an
 * SVG a person can open. The SVG is hand-written (a dozen <polyline>s): no charting library is worth its weight
 * for fixed small multiples.
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

const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728']

/** Small multiples of PANELS as one SVG document. */
export function svgPlot(rows: Row[], title: string): string {
  const panels = PANELS.filter((p) => p.series.some((k) => series(rows, k).length > 0))
  const W = 420
  const H = 220
  const cols = 2
  const width = cols * W
  const height = Math.ceil(panels.length / cols) * H + 40
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;')
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`, `<rect width="100%" height="100%" fill="white"/>`, `<text x="10" y="22" font-size="15">${esc(title)}</text>`]
  panels.forEach((p, i) => {
    const x0 = (i % cols) * W + 50
    const y0 = Math.floor(i / cols) * H + 50
    const pw = W - 70
    const ph = H - 60
    const all = p.series.flatMap((k) => series(rows, k))
    const xs = all.map((q) => q[0])
    const ys = all.map((q) => q[1])
    const [xl, xh] = [Math.min(...xs), Math.max(...xs)]
    const [yl, yh] = [Math.min(...ys), Math.max(...ys)]
    const sx = (x: number) => x0 + (xh === xl ? pw / 2 : ((x - xl) / (xh - xl)) * pw)
    const sy = (y: number) => y0 + ph - (yh === yl ? ph / 2 : ((y - yl) / (yh - yl)) * ph)
    parts.push(`<text x="${x0}" y="${y0 - 8}" font-weight="bold">${esc(p.title)}</text>`)
    parts.push(`<rect x="${x0}" y="${y0}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`)
    parts.push(`<text x="${x0 - 4}" y="${y0 + 10}" text-anchor="end">${+yh.toPrecision(3)}</text><text x="${x0 - 4}" y="${y0 + ph}" text-anchor="end">${+yl.toPrecision(3)}</text>`)
    parts.push(`<text x="${x0}" y="${y0 + ph + 14}">${xl}</text><text x="${x0 + pw}" y="${y0 + ph + 14}" text-anchor="end">step ${xh}</text>`)
    p.series.forEach((k, j) => {
      const pts = series(rows, k)
      if (!pts.length) return
      const c = COLORS[j % COLORS.length]
      parts.push(`<polyline fill="none" stroke="${c}" stroke-width="1.5" points="${pts.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ')}"/>`)
      if (pts.length === 1) parts.push(`<circle cx="${sx(pts[0]![0])}" cy="${sy(pts[0]![1])}" r="3" fill="${c}"/>`)
      parts.push(`<text x="${x0 + pw - 4}" y="${y0 + 14 + 13 * j}" text-anchor="end" fill="${c}">${esc(k)}</text>`)
    })
  })
  parts.push('</svg>')
  return parts.join('\n') + '\n'
}
