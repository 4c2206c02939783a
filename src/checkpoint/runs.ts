/**
 * Run directories: `checkpoint-<step>/` children (each complete, being renamed into place when written), listed,
 * pruned to the last N. No tfjs here: inspect uses it.
 */
import { existsSync, readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'

export const checkpointName = (step: number) => `checkpoint-${step}`

/** Complete checkpoints of a run, oldest first. */
export function listCheckpoints(runDir: string): { step: number; dir: string }[] {
  if (!existsSync(runDir)) return []
  return readdirSync(runDir)
    .map((f) => /^checkpoint-(\d+)$/.exec(f))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ step: Number(m[1]), dir: join(runDir, m[0]) }))
    .sort((a, b) => a.step - b.step)
}

/** Delete all but the last `keep` checkpoints (0 keeps all). */
export function pruneCheckpoints(runDir: string, keep: number): void {
  if (keep <= 0) return
  const all = listCheckpoints(runDir)
  for (const c of all.slice(0, Math.max(0, all.length - keep))) rmSync(c.dir, { recursive: true, force: true })
}

