// Shared test helpers: temp dirs, fixture paths, and asserting on AlignError messages.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as assert from 'uvu/assert'
import { AlignError } from '../src/errors.ts'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
export const FIXTURES = join(ROOT, 'test', 'fixtures')

/** temp dirs made by this test process, removed when it exits (a run left ~30 dirs, ~0.3 GB each, before) */
const made: string[] = []
process.on('exit', () => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true })
})

/** Whether process `pid` is alive (signal 0 checks without sending; EPERM: alive, someone else's). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/**
 * A test process killed outright (SIGKILL, OOM) cannot remove its dirs on exit: the next one removes them — every
 * `<prefix><pid>-*` of a process no longer alive.
 */
function sweep(prefix: string): void {
  for (const name of readdirSync(tmpdir())) {
    const pid = name.startsWith(prefix) ? Number(/^(\d+)-/.exec(name.slice(prefix.length))?.[1]) : NaN
    if (pid > 0 && pid !== process.pid && !alive(pid)) rmSync(join(tmpdir(), name), { recursive: true, force: true })
  }
}
const swept = new Set<string>()

/** A fresh temp dir (`<prefix><pid>-XXXXXX`), removed when the test process exits. */
export function tmp(prefix = 'align-test-'): string {
  if (!swept.has(prefix)) (swept.add(prefix), sweep(prefix))
  const dir = mkdtempSync(join(tmpdir(), `${prefix}${process.pid}-`))
  made.push(dir)
  return dir
}

/** Run `fn`, expect an AlignError whose one-line message matches every pattern. */
export async function rejects(fn: () => unknown, ...patterns: RegExp[]): Promise<string> {
  try {
    await fn()
  } catch (e) {
    if (!(e instanceof AlignError)) throw e
    assert.not.match(e.message, /\n/, 'error message must be one line')
    for (const p of patterns) assert.match(e.message, p)
    return e.message
  }
  throw new assert.Assertion({ message: `expected an AlignError matching ${patterns.join(', ')}`, operator: 'rejects', generated: false, expects: 'error', actual: 'none' } as never)
}
