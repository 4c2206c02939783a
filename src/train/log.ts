/**
 * Where a run's logged rows go, all from one `record` call: `metrics.jsonl` (one JSON line per row, appended and
 * flushed, for scripts), TensorBoard event files under `runs/` (`train/…`, `eval/…`), and the in-memory
 * log_history that every checkpoint's trainer_state.json carries. The spinner is separate (progress.ts).
 */
import { appendFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { BatchStats } from '../preference/objective.ts'
import { EventWriter } from './tfevents.ts'

export type Row = Record<string, number>

export class RunLog {
  readonly history: Row[]
  private readonly metricsPath: string
  private readonly events: EventWriter

  /** Start the run's log; a resumed run passes the log_history of its checkpoint, which metrics.jsonl is reset to. */
  constructor(runDir: string, history: Row[] = []) {
    this.history = [...history]
    this.metricsPath = join(runDir, 'metrics.jsonl')
    writeFileSync(this.metricsPath, this.history.map((r) => JSON.stringify(r) + '\n').join(''))
    this.events = new EventWriter(join(runDir, 'runs'))
  }

  record(row: Row): void {
    this.history.push(row)
    appendFileSync(this.metricsPath, JSON.stringify(row) + '\n')
    this.events.scalars(row.step!, Object.fromEntries(Object.entries(row).filter(([k]) => k !== 'step')))
  }
}

/** What the loop accumulates between two logged rows. */
export class Window {
  batches: BatchStats[] = []
  gradNorms: number[] = []
  private started = performance.now()

  /** Take the window's contents and start a new one; `seconds` is the time since the previous take. */
  take(): { batches: BatchStats[]; gradNorms: number[]; seconds: number } {
    const out = { batches: this.batches, gradNorms: this.gradNorms, seconds: (performance.now() - this.started) / 1000 }
    this.batches = []
    this.gradNorms = []
    this.started = performance.now()
    return out
  }
}

export const round4 = (x: number) => Math.round(x * 1e4) / 1e4
export const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length)
