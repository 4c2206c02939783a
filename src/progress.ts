/**
 * Progress for humans: an ora spinner on a TTY that reports a width, plain lines (at most every few seconds)
 * otherwise. It writes to stderr so stdout stays clean for tables and `--json`.
 */
import ora, { type Ora } from 'ora'

export class Progress {
  private spinner: Ora | undefined
  private lastPlain = 0
  private readonly start = Date.now()

  private readonly quiet: boolean
  private readonly plainEveryMs: number

  constructor(private readonly label: string, opts: { quiet?: boolean; plainEveryMs?: number } = {}) {
    this.quiet = opts.quiet ?? false
    this.plainEveryMs = opts.plainEveryMs ?? 5000
    // a spinner only on a real terminal with a width: ora on a 0-column terminal computes unbounded lines to clear
    if (!this.quiet && process.stderr.isTTY && !process.env.CI && (process.stderr.columns ?? 0) > 0) this.spinner = ora({ text: label, stream: process.stderr }).start()
  }

  /** `done` of `total` units (total may be unknown); `extra` is appended to the line. */
  update(done: number, total: number | undefined, unit: string, extra = ''): void {
    const elapsed = (Date.now() - this.start) / 1000
    const rate = done / Math.max(elapsed, 1e-3)
    const pct = total ? ` ${((100 * done) / total).toFixed(0)}%` : ''
    const eta = total && rate > 0 ? ` · ETA ${formatSeconds((total - done) / rate)}` : ''
    const text = `${this.label}${pct} · ${done.toLocaleString('en-US')}${total ? '/' + total.toLocaleString('en-US') : ''} ${unit} · ${rate >= 10 ? Math.round(rate).toLocaleString('en-US') : rate.toFixed(2)} ${unit}/s${eta}${extra}`
    if (this.spinner) this.spinner.text = text
    else if (!this.quiet && Date.now() - this.lastPlain >= this.plainEveryMs) {
      this.lastPlain = Date.now()
      process.stderr.write(text + '\n')
    }
  }

  succeed(text: string): void {
    if (this.spinner) this.spinner.succeed(text)
    else if (!this.quiet) process.stderr.write(text + '\n')
  }

  fail(text: string): void {
    if (this.spinner) this.spinner.fail(text)
    else if (!this.quiet) process.stderr.write(text + '\n')
  }
}

export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return '?'
  if (s < 60) return `${s.toFixed(0)}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`
}
