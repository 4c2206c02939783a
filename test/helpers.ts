// Shared test helpers: temp dirs, fixture paths, and asserting on AlignError messages.
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as assert from 'uvu/assert'
import { AlignError } from '../src/errors.ts'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
export const FIXTURES = join(ROOT, 'test', 'fixtures')

export function tmp(prefix = 'align-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix))
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
