/**
 * Files that are written whole or not at all, and JSON read with a one-line error. Every writer in align goes
 * through here: the content is written to a temp path beside the target (`.<name>.tmp-<pid>`, same filesystem)
 * and renamed into place, so a reader — or a resumed run — never sees a half-written file or directory.
 * No tfjs here (binarize and inspect use it).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { basename, dirname, join, resolve } from 'node:path'
import { AlignError } from './errors.ts'

/** Parse a JSON file; a missing or invalid file is an AlignError naming it. */
export function readJson(path: string): Record<string, any> {
  if (!existsSync(path)) throw new AlignError(`${path}: not found`)
  try {
    return JSON.parse(readFileSync(path, 'utf8'))
  } catch (e) {
    throw new AlignError(`${path}: not valid JSON (${(e as Error).message})`)
  }
}

/** The temp path a write of `target` goes to before it is renamed into place. */
export function tempPath(target: string): string {
  return join(dirname(resolve(target)), `.${basename(target)}.tmp-${process.pid}`)
}

/** Move a finished temp file or directory onto `target` (an existing directory there is replaced). */
export function commitTemp(tmp: string, target: string): void {
  mkdirSync(dirname(resolve(target)), { recursive: true })
  if (statSync(tmp).isDirectory()) rmSync(target, { recursive: true, force: true })
  renameSync(tmp, target)
}

/**
 * Write `target` atomically: `write(tmp)` fills the temp path (a file, or a directory it creates), which then
 * replaces `target` (its parent directory is created). On any error the temp path is removed and the error
 * rethrown; `target` is untouched.
 */
export function writeAtomic<T>(target: string, write: (tmp: string) => T): T {
  const tmp = tempPath(target)
  mkdirSync(dirname(tmp), { recursive: true })
  rmSync(tmp, { recursive: true, force: true })
  const fail = (e: unknown): never => {
    rmSync(tmp, { recursive: true, force: true })
    throw e
  }
  try {
    const out = write(tmp)
    // an async writer (tensor data read back from a device) commits when it has finished
    if (out instanceof Promise) return out.then((v) => (commitTemp(tmp, target), v)).catch(fail) as T
    commitTemp(tmp, target)
    return out
  } catch (e) {
    return fail(e)
  }
}

/** Write a text or binary file atomically. */
export function writeFileAtomic(path: string, data: string | Uint8Array): void {
  writeAtomic(path, (tmp) => writeFileSync(tmp, data))
}

/** Whether process `pid` exists (EPERM: it does, owned by someone else). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** Remove the temp paths in `dir` that a process which no longer runs left behind (a killed write); returns their names. */
export function removeStaleTemps(dir: string): string[] {
  if (!existsSync(dir)) return []
  const stale = readdirSync(dir).filter((f) => {
    const m = /^\..+\.tmp-(\d+)$/.exec(f)
    return m !== null && Number(m[1]) !== process.pid && !processAlive(Number(m[1]))
  })
  for (const f of stale) rmSync(join(dir, f), { recursive: true, force: true })
  return stale
}
