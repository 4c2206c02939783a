/**
 * The curves of one or more runs as a picture: small multiples (loss, accuracies, margins, rewards, log-probs,
 * logits, learning rate, grad norm), each with round-number ticks and a grid on both axes, labels inside the
 * margins, the legend under its panel (never over the data), eval points marked, optional TensorBoard-style EMA
 * smoothing of the training series (the raw curve kept faint), and several runs overlaid in distinct colors.
 * The SVG is written here (a few dozen elements: no charting library fits small multiples better); PNG goes
 * through @resvg/resvg-js with the DejaVu Sans font shipped by dejavu-fonts-ttf, so the text renders on machines
 * without system fonts. No tfjs.
 */
import { createRequire } from 'node:module'
import { series, type Row } from './curves.ts'

export interface PlotRun {
  name: string
  rows: Row[]
}

/** Panels: each lists train series and eval series (eval drawn dashed, with markers). */
const PANELS: { title: string; train: string[]; eval: string[] }[] = [
  { title: 'loss', train: ['loss'], eval: ['eval_loss'] },
  { title: 'rewards/accuracies', train: ['rewards/accuracies'], eval: ['eval_rewards/accuracies'] },
  { title: 'rewards/margins', train: ['rewards/margins'], eval: ['eval_rewards/margins'] },
  { title: 'rewards: chosen vs rejected', train: ['rewards/chosen', 'rewards/rejected'], eval: ['eval_rewards/chosen', 'eval_rewards/rejected'] },
  { title: 'logps: chosen vs rejected', train: ['logps/chosen', 'logps/rejected'], eval: ['eval_logps/chosen', 'eval_logps/rejected'] },
  { title: 'logits: chosen vs rejected', train: ['logits/chosen', 'logits/rejected'], eval: ['eval_logits/chosen', 'eval_logits/rejected'] },
  { title: 'learning_rate', train: ['learning_rate'], eval: [] },
  { title: 'grad_norm', train: ['grad_norm'], eval: [] },
]

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf']

/** TensorBoard's debiased exponential moving average (weight in [0, 1); 0 = off). */
export function ema(points: [number, number][], weight: number): [number, number][] {
  if (!(weight > 0)) return points
  let last = 0
  return points.map(([x, y], i) => {
    last = last * weight + (1 - weight) * y
    return [x, last / (1 - weight ** (i + 1))]
  })
}

/** About `count` round-number ticks (1, 2, 2.5, 5 × 10^k) covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1
    return niceTicks(lo - pad, hi + pad, count)
  }
  const raw = (hi - lo) / count
  const mag = 10 ** Math.floor(Math.log10(raw))
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw)!
  const ticks: number[] = []
  for (let t = Math.floor(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12))
  if (ticks[ticks.length - 1]! < hi) ticks.push(+(ticks[ticks.length - 1]! + step).toPrecision(12))
  return ticks
}

/** A tick label: short, with an exponent for very small or large values (learning rates). */
export function tickLabel(v: number): string {
  if (v === 0) return '0'
  const a = Math.abs(v)
  if (a < 1e-3 || a >= 1e5) return v.toExponential(1).replace('e-', 'e−')
  return String(+v.toPrecision(4))
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

export function svgPlot(runs: PlotRun[], o: { smooth?: number; title?: string } = {}): string {
  const has = (k: string) => runs.some((r) => series(r.rows, k).length > 0)
  const panels = PANELS.filter((p) => [...p.train, ...p.eval].some(has))
  const [W, cols, left, right, top, plotH] = [460, 2, 64, 16, 30, 170]
  const legendLines = (p: (typeof PANELS)[number]) => runs.length * [...p.train, ...p.eval].filter(has).length
  const rowH = Math.max(...panels.map(legendLines), 1) * 14 + plotH + top + 40
  const width = cols * W
  const height = Math.ceil(panels.length / cols) * rowH + 44
  const smooth = o.smooth ?? 0
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="12" y="24" font-size="15" font-weight="bold">${esc(o.title ?? runs.map((r) => r.name).join(' vs '))}${smooth > 0 ? ` (smoothing ${smooth})` : ''}</text>`,
  ]
  panels.forEach((p, i) => {
    const x0 = (i % cols) * W + left
    const y0 = 44 + Math.floor(i / cols) * rowH + top
    const pw = W - left - right
    const lines = runs.flatMap((run, r) => [...p.train, ...p.eval].filter((k) => series(run.rows, k).length > 0).map((k) => ({ run, r, key: k, isEval: p.eval.includes(k), raw: series(run.rows, k) })))
    const all = lines.flatMap((l) => l.raw)
    if (!all.length) return
    const xt = niceTicks(Math.min(...all.map((q) => q[0])), Math.max(...all.map((q) => q[0])), 5)
    const yt = niceTicks(Math.min(...all.map((q) => q[1])), Math.max(...all.map((q) => q[1])), 4)
    const [xl, xh, yl, yh] = [xt[0]!, xt[xt.length - 1]!, yt[0]!, yt[yt.length - 1]!]
    const sx = (x: number) => x0 + ((x - xl) / (xh - xl)) * pw
    const sy = (y: number) => y0 + plotH - ((y - yl) / (yh - yl)) * plotH
    parts.push(`<text x="${x0}" y="${y0 - 10}" font-weight="bold" font-size="12">${esc(p.title)}</text>`)
    for (const t of yt) parts.push(`<line x1="${x0}" x2="${x0 + pw}" y1="${sy(t).toFixed(1)}" y2="${sy(t).toFixed(1)}" stroke="#e5e5e5"/><text x="${x0 - 6}" y="${(sy(t) + 4).toFixed(1)}" text-anchor="end" fill="#444">${tickLabel(t)}</text>`)
    for (const t of xt) parts.push(`<line x1="${sx(t).toFixed(1)}" x2="${sx(t).toFixed(1)}" y1="${y0}" y2="${y0 + plotH}" stroke="#e5e5e5"/><text x="${sx(t).toFixed(1)}" y="${y0 + plotH + 14}" text-anchor="middle" fill="#444">${tickLabel(t)}</text>`)
    parts.push(`<rect x="${x0}" y="${y0}" width="${pw}" height="${plotH}" fill="none" stroke="#888"/>`)
    parts.push(`<text x="${x0 + pw}" y="${y0 + plotH + 28}" text-anchor="end" fill="#444">step</text>`)
    lines.forEach((l, j) => {
      // one color per (run, quantity): a quantity's train and eval series share it, eval dashed with markers
      const quantity = Math.max(p.train.indexOf(l.key), p.eval.indexOf(l.key))
      const color = COLORS[(l.r * 2 + quantity) % COLORS.length]
      const pts = (q: [number, number][]) => q.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ')
      if (l.isEval) {
        parts.push(`<polyline fill="none" stroke="${color}" stroke-width="1.5" stroke-dasharray="5,3" points="${pts(l.raw)}"/>`)
        for (const [x, y] of l.raw) parts.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3" fill="white" stroke="${color}" stroke-width="1.5"/>`)
      } else {
        const s = l.key === 'learning_rate' ? 0 : smooth // the schedule is exact: never smoothed
        if (s > 0) parts.push(`<polyline fill="none" stroke="${color}" stroke-opacity="0.25" stroke-width="1" points="${pts(l.raw)}"/>`)
        parts.push(`<polyline fill="none" stroke="${color}" stroke-width="1.6" points="${pts(ema(l.raw, s))}"/>`)
        if (l.raw.length === 1) parts.push(`<circle cx="${sx(l.raw[0]![0]).toFixed(1)}" cy="${sy(l.raw[0]![1]).toFixed(1)}" r="3" fill="${color}"/>`)
      }
      const ly = y0 + plotH + 44 + j * 14
      const mark = l.isEval ? `<line x1="${x0}" x2="${x0 + 22}" y1="${ly - 4}" y2="${ly - 4}" stroke="${color}" stroke-width="1.5" stroke-dasharray="5,3"/><circle cx="${x0 + 11}" cy="${ly - 4}" r="3" fill="white" stroke="${color}"/>` : `<line x1="${x0}" x2="${x0 + 22}" y1="${ly - 4}" y2="${ly - 4}" stroke="${color}" stroke-width="2"/>`
      parts.push(`${mark}<text x="${x0 + 28}" y="${ly}" fill="#222">${esc(runs.length > 1 ? `${l.run.name}: ${l.key}` : l.key)}</text>`)
    })
  })
  parts.push('</svg>')
  return parts.join('\n') + '\n'
}

/** The SVG as PNG (@resvg/resvg-js, DejaVu Sans from dejavu-fonts-ttf), loaded only when a PNG is asked for. */
export async function svgToPng(svg: string): Promise<Buffer> {
  const { Resvg } = await import('@resvg/resvg-js')
  const font = createRequire(import.meta.url).resolve('dejavu-fonts-ttf/ttf/DejaVuSans.ttf')
  const r = new Resvg(svg, { background: 'white', font: { fontFiles: [font], loadSystemFonts: false, defaultFontFamily: 'DejaVu Sans' } })
  return r.render().asPng()
}
