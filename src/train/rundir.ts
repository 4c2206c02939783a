/**
 * A run directory has one owner at a time, and a fresh run never silently takes over another run's files.
 *   - lock: `<run>/.align.lock` holds the owner's pid, created exclusively; a lock whose process is gone is taken
 *     over with a note (a killed run leaves one behind).
 *   - a fresh run (no --resume) into a directory holding checkpoints, final weights or metrics.jsonl is refused unless
 *     `overwrite_output_dir` (HF TrainingArguments' name) is set, which removes the old run's files first.
 *   - temp directories a killed save left behind (`.checkpoint-N.tmp-<pid>` of a dead pid) are removed, said so.
 *   - SIGINT and SIGTERM (what schedulers and preemption send) ask the loop to stop after the current step, with a
 *     checkpoint; a second signal exits at once without writing one. One during setup (data, reference log-probs,
 *     workers), before the loop's first step, exits at once with a line: there is nothing to save yet.
 */
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { AlignError } from '../errors.ts'
import { processAlive, removeStaleTemps } from '../files.ts'
import { listCheckpoints } from '../checkpoint/runs.ts'

const LOCK = '.align.lock'


function takeLock(runDir: string, log: (s: string) => void): () => void {
  const path = join(runDir, LOCK)
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx')
      writeSync(fd, JSON.stringify({ pid: process.pid, started: new Date().toISOString() }) + '\n')
      closeSync(fd)
      return () => rmSync(path, { force: true })
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
      let owner = NaN
      try {
        owner = JSON.parse(readFileSync(path, 'utf8')).pid
      } catch {
        // unreadable lock: treat as stale
      }
      if (Number.isInteger(owner) && processAlive(owner)) throw new AlignError(`${runDir} is being written by another align run (pid ${owner}, lock ${path}); wait for it to finish, stop it, or choose another output_dir`)
      log(`${runDir}: took over a stale lock of pid ${Number.isNaN(owner) ? '?' : owner} (no longer running)`)
      rmSync(path, { force: true })
    }
  }
  throw new AlignError(`${path}: could not take the run lock; remove it if no align run is using ${runDir}`)
}

/** The files of a previous run in `runDir`: its checkpoints, final weights and logs. */
function previousRun(runDir: string): string[] {
  const ckpts = listCheckpoints(runDir).map((c) => `checkpoint-${c.step}`)
  return [...ckpts, ...['model.safetensors', 'model.safetensors.index.json', 'adapter_model.safetensors', 'metrics.jsonl', 'trainer_state.json'].filter((f) => existsSync(join(runDir, f)))]
}

/**
 * Claim `runDir` for this process: create it, take the lock, clean dead temp dirs, and refuse (or, with
 * `overwrite`, clear) another run's files when this run is fresh. Returns the release function.
 */
export function claimRunDir(runDir: string, o: { resume: boolean; overwrite: boolean; log: (s: string) => void }): () => void {
  mkdirSync(runDir, { recursive: true })
  const release = takeLock(runDir, o.log)
  try {
    for (const t of removeStaleTemps(runDir)) o.log(`${runDir}: removed ${t}, left by a save that was killed`)
    const old = previousRun(runDir)
    if (!o.resume && old.length) {
      if (!o.overwrite) throw new AlignError(`${runDir} already holds a run (${old.slice(0, 3).join(', ')}${old.length > 3 ? ', …' : ''}); continue it with --resume latest, choose another output_dir, or add overwrite_output_dir=true to replace it`)
      for (const f of readdirSync(runDir)) if (f !== LOCK) rmSync(join(runDir, f), { recursive: true, force: true })
      o.log(`${runDir}: overwrite_output_dir: removed the previous run (${old.join(', ')})`)
    }
    return release
  } catch (e) {
    release()
    throw e
  }
}

export interface Signals {
  /** the first SIGINT/SIGTERM received since the loop started */
  signal: () => NodeJS.Signals | undefined
  /** the loop runs: from now on a signal asks it to stop after the current step */
  loopStarted: () => void
  stop: () => void
}

/**
 * Watch SIGINT and SIGTERM for a run. Before `loopStarted`, a signal runs `release` (the run lock) and exits at once:
 * setup has trained nothing, so there is nothing to save. After, the first asks the loop to stop after its current
 * step (`signal()`), and a second exits at once.
 */
export function watchSignals(release: () => void): Signals {
  let received: NodeJS.Signals | undefined
  let looping = false
  const on = (sig: NodeJS.Signals) => {
    if (!looping || received) {
      process.stderr.write(looping ? `align: ${sig} again: stopped at once, without writing a checkpoint (the last complete one is kept)\n` : `align: ${sig} during setup, before the first step: stopped; nothing was trained, so nothing was saved\n`)
      if (!looping) release()
      process.exit(sig === 'SIGTERM' ? 143 : 130)
    }
    received = sig
  }
  process.on('SIGINT', on)
  process.on('SIGTERM', on)
  return { signal: () => received, loopStarted: () => void (looping = true), stop: () => void (process.off('SIGINT', on), process.off('SIGTERM', on)) }
}
