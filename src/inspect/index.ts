/**
 * `align inspect <dir> [<other-dir>] [--json] [--stats] [--tensors] [--plot out.svg]`: what a run produced.
 * Pure file reading: never loads tfjs.
 */
import { existsSync, readdirSync, statSync } from 'node:fs'
import { basename, join, resolve } from 'node:path'
import { AlignError } from '../errors.ts'
import { writeFileAtomic } from '../files.ts'
import { listCheckpoints } from '../checkpoint/runs.ts'
import { compare, isCheckpoint, summarize, type CheckpointSummary } from './checkpoint.ts'
import { PANELS, asciiChart, lastValues, readHistory, series, type Row } from './curves.ts'
import { svgPlot, svgToPng } from './plot.ts'

export interface InspectArgs {
  dir: string
  other?: string
  json?: boolean
  stats?: boolean
  tensors?: boolean
  /** write the curves to this .svg or .png file (with `other` a run directory too, both runs overlaid) */
  plot?: string
  /** EMA weight for the training curves of the plot, in [0, 1) */
  smooth?: number
}

export interface InspectReport {
  dir: string
  run?: { checkpoints: { name: string; step: number; bytes: number; kind: string }[]; final: boolean }
  checkpoint?: CheckpointSummary
  last?: Record<string, { step: number; value: number }>
  history?: Row[]
  compare?: { other: string; tensors: { name: string; relative: number; absolute: number }[] }
}

const dirBytes = (d: string): number => readdirSync(d).reduce((a, f) => a + (statSync(join(d, f)).isFile() ? statSync(join(d, f)).size : 0), 0)

export async function inspect(a: InspectArgs): Promise<{ report: InspectReport; text: string }> {
  if (!existsSync(a.dir)) throw new AlignError(`${a.dir}: no such directory`)
  const report: InspectReport = { dir: a.dir }
  let ckptDir: string | undefined = isCheckpoint(a.dir) ? a.dir : undefined
  const ckpts = listCheckpoints(a.dir)
  if (ckpts.length || existsSync(join(a.dir, 'final')) || existsSync(join(a.dir, 'metrics.jsonl'))) {
    // a run: its final weights at the run directory itself (HF Trainer's layout), or in final/ (older align runs)
    const legacyFinal = existsSync(join(a.dir, 'final'))
    report.run = { checkpoints: ckpts.map((c) => ({ name: `checkpoint-${c.step}`, step: c.step, bytes: dirBytes(c.dir), kind: existsSync(join(c.dir, 'optimizer.safetensors')) ? 'weights + optimizer' : 'weights' })), final: ckptDir !== undefined || legacyFinal }
    ckptDir ??= legacyFinal ? join(a.dir, 'final') : ckpts.at(-1)?.dir
  }
  if (!ckptDir && !report.run) throw new AlignError(`${a.dir}: neither a checkpoint (no model.safetensors / adapter_model.safetensors) nor a run directory (no metrics.jsonl, checkpoint-N or final/)`)
  if (ckptDir && isCheckpoint(ckptDir)) report.checkpoint = summarize(ckptDir, a.stats) // a DeepSpeed checkpoint may hold no consolidated weights
  const history = readHistory(a.dir) ?? (ckptDir ? readHistory(ckptDir) : undefined)
  if (history?.length) {
    report.history = history
    report.last = lastValues(history)
  }
  const otherHistory = a.other && a.plot ? readHistory(a.other) : undefined
  if (a.other && (isCheckpoint(a.other) || !otherHistory) && (ckptDir ?? isCheckpoint(a.dir))) report.compare = { other: a.other, tensors: compare(ckptDir ?? a.dir, a.other) }
  if (a.plot) await writePlot(a, history, otherHistory)
  return { report, text: a.json ? JSON.stringify(report, null, 2) : render(report, a) }
}

/** The curves of `a.dir` (and of `a.other`, overlaid) as SVG or PNG. */
async function writePlot(a: InspectArgs, history: Row[] | undefined, otherHistory: Row[] | undefined): Promise<void> {
  if (!history?.length) throw new AlignError(`--plot: ${a.dir} has no metrics.jsonl or trainer_state.json to plot`)
  if (!/\.(svg|png)$/.test(a.plot!)) throw new AlignError(`--plot ${a.plot}: name an .svg or .png file`)
  if (a.smooth !== undefined && !(a.smooth >= 0 && a.smooth < 1)) throw new AlignError(`--smooth ${a.smooth}: an EMA weight in [0, 1) (0.6 is TensorBoard's default)`)
  const dirs = [a.dir, ...(otherHistory?.length ? [a.other!] : [])].map((d) => resolve(d))
  // runs are named by their directory, with the parent's name too when two share a basename (demo/dpo, base/dpo)
  const names = dirs.map((d) => (dirs.filter((e) => basename(e) === basename(d)).length > 1 ? `${basename(resolve(d, '..'))}/${basename(d)}` : basename(d)))
  const runs = [{ name: names[0]!, rows: history }, ...(otherHistory?.length ? [{ name: names[1]!, rows: otherHistory }] : [])]
  const svg = svgPlot(runs, { smooth: a.smooth })
  writeFileAtomic(a.plot!, a.plot!.endsWith('.png') ? await svgToPng(svg) : svg)
}

function human(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`
  return String(n)
}
const bytes = (b: number) => (b >= 1e9 ? `${(b / 1e9).toFixed(2)} GB` : b >= 1e6 ? `${(b / 1e6).toFixed(1)} MB` : `${(b / 1e3).toFixed(1)} kB`)
const num = (x: number) => (Math.abs(x) >= 1e-3 || x === 0 ? x.toFixed(4) : x.toExponential(3))

function render(r: InspectReport, a: InspectArgs): string {
  const out: string[] = []
  if (r.run) {
    out.push(`run ${r.dir}`)
    for (const c of r.run.checkpoints) out.push(`  ${c.name.padEnd(18)} step ${String(c.step).padStart(6)}  ${bytes(c.bytes).padStart(9)}  ${c.kind}`)
    if (r.run.final) out.push(`  ${'final weights'.padEnd(18)}`)
    out.push('')
  }
  const c = r.checkpoint
  if (c) {
    const cfg = c.config ?? {}
    out.push(`checkpoint ${c.dir}  (${c.kind}${c.architecture ? `, ${c.architecture}` : ''})`)
    if (c.config) out.push(`  layers ${cfg.num_hidden_layers} · hidden ${cfg.hidden_size} · heads ${cfg.num_attention_heads}/${cfg.num_key_value_heads ?? cfg.num_attention_heads} kv · ffn ${cfg.intermediate_size} · vocab ${cfg.vocab_size} · sliding_window ${cfg.sliding_window ?? 'none'} · tied ${cfg.tie_word_embeddings ?? false}`)
    out.push(`  parameters ${human(c.parameters)} (${Object.entries(c.dtypes).map(([d, n]) => `${d} ${human(n)}`).join(', ')}) in ${c.tensors.length} tensors`)
    out.push(`  files: ${c.files.map((f) => `${f.name} ${bytes(f.bytes)}`).join(', ')}`)
    if (c.lora) out.push(`  LoRA r ${c.lora.r} · alpha ${c.lora.alpha} · dropout ${c.lora.dropout} · targets ${c.lora.targets.join(',')} · ${human(c.lora.parameters)} adapter parameters · base ${c.lora.base}`)
    if (c.training) out.push(`  training: ${c.training.stage ?? ''} step ${c.training.global_step} · epoch ${c.training.epoch?.toFixed(2)} · seed ${c.training.seed}`)
    if (c.provenance) out.push(`  recipe ${c.provenance.recipe}${c.provenance.overrides?.length ? ` + ${c.provenance.overrides.join(' ')}` : ''}`)
    if (a.tensors || a.stats) {
      out.push('')
      for (const t of c.tensors) {
        const st = t.stats ? `  mean ${num(t.stats.mean)} std ${num(t.stats.std)} min ${num(t.stats.min)} max ${num(t.stats.max)}${t.stats.nan || t.stats.inf ? `  NaN ${t.stats.nan} Inf ${t.stats.inf}` : ''}` : ''
        out.push(`  ${t.name.padEnd(48)} ${t.dtype.padEnd(5)} [${t.shape.join(', ')}]${st}`)
      }
    }
    out.push('')
  }
  if (r.last) {
    out.push('last values')
    for (const [k, v] of Object.entries(r.last)) if (k !== 'epoch') out.push(`  ${k.padEnd(28)} ${num(v.value).padStart(12)}   (step ${v.step})`)
    out.push('')
    for (const p of PANELS) {
      for (const k of p.series) {
        const pts = series(r.history!, k)
        if (pts.length < 2) continue
        out.push(k)
        out.push(...asciiChart(pts).map((l) => `  ${l}`))
      }
    }
  }
  if (r.compare) {
    out.push(`relative change ‖A−B‖/‖B‖ against ${r.compare.other} (largest first)`)
    for (const t of r.compare.tensors.slice(0, a.tensors ? undefined : 15)) out.push(`  ${t.name.padEnd(48)} ${t.relative.toExponential(3)}`)
  }
  if (a.plot) out.push(`plot written to ${a.plot}`)
  return out.join('\n')
}
