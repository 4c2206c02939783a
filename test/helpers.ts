// Shared test helpers: temp dirs, fixture paths, and asserting on AlignError messages.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as assert from 'uvu/assert'
import { AlignError } from '../src/errors.ts'
import { removeStaleTemps, tempPath } from '../src/files.ts'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
export const FIXTURES = join(ROOT, 'test', 'fixtures')

/**
 * This test process's temp dirs live in one dir named as align's own temp paths are (files.ts `tempPath`:
 * `.align-test.tmp-<pid>`), removed when the process exits (a run left ~30 dirs, ~0.3 GB each, before); one killed
 * outright (SIGKILL, OOM) cannot, so the next test process removes it (`removeStaleTemps`).
 */
let parent: string | undefined
process.on('exit', () => {
  if (parent) rmSync(parent, { recursive: true, force: true })
})

/** A fresh temp dir, removed when the test process exits. */
export function tmp(prefix = 'align-test-'): string {
  if (!parent) {
    removeStaleTemps(tmpdir())
    parent = tempPath(join(tmpdir(), 'align-test'))
    mkdirSync(parent)
  }
  return mkdtempSync(join(parent, prefix))
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
