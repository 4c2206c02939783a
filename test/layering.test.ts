// The code map as a test: which folder of src/ may import which. Read from the import statements of every file,
// static and dynamic, so a new upward import fails here instead of growing silently.
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { ROOT } from './helpers.ts'

const SRC = join(ROOT, 'src')
const files = (dir: string): string[] => readdirSync(dir).flatMap((f) => (statSync(join(dir, f)).isDirectory() ? files(join(dir, f)) : f.endsWith('.ts') ? [join(dir, f)] : []))

/** Every module a file imports: relative ones as paths under src/, packages by name. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8')
  const specs = [...text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"\n]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)|(?:^|\n)\s*import\s+['"]([^'"]+)['"]/g)].map((m) => m[1] ?? m[2] ?? m[3]!)
  return specs.map((s) => (s.startsWith('.') ? relative(SRC, resolve(dirname(file), s)) : s))
}

const folderOf = (path: string) => (path.includes('/') ? path.split('/')[0]! : '.')

// what each folder may not import (a folder of src/, or a package)
const FORBIDDEN: Record<string, string[]> = {
  model: ['preference', 'train', 'commands', 'binarize', 'inspect', 'recipe.ts'],
  preference: ['train', 'commands', 'binarize', 'inspect'],
  train: ['commands', 'binarize', 'inspect'],
  checkpoint: ['@tensorflow/tfjs', 'model', 'preference', 'train', 'commands'],
  binarize: ['@tensorflow/tfjs', 'model', 'preference', 'train', 'commands'],
  inspect: ['@tensorflow/tfjs', 'model', 'preference', 'train', 'commands'],
}

test('imports respect the code map (README "Code map")', () => {
  const violations: string[] = []
  for (const file of files(SRC)) {
    const rel = relative(SRC, file)
    const rules = FORBIDDEN[folderOf(rel)] ?? []
    for (const imp of importsOf(file)) {
      if (rules.some((r) => imp === r || imp.startsWith(r + '/'))) violations.push(`${rel} imports ${imp}`)
    }
  }
  assert.equal(violations, [])
})

// the backend is known in one place: model/backend.ts picks it, webgpu.ts and wasm-kernels.ts adapt their own
const BACKEND_FILES = ['model/backend.ts', 'model/webgpu.ts', 'model/wasm-kernels.ts']
const BACKEND_CODE = /getBackend\(|setBackend\(|findBackend\(|registerKernel\(|['"](webgpu|wasm|tensorflow|cpu)['"]|@tensorflow\/tfjs-(backend|node)/

test('only model/backend.ts (and the two backend adapters) names a backend or asks which one runs', () => {
  const found = files(SRC).filter((f) => !BACKEND_FILES.includes(relative(SRC, f))).flatMap((f) =>
    readFileSync(f, 'utf8').split('\n').flatMap((line, i) => (BACKEND_CODE.test(line.replace(/\/\/.*$|^\s*\*.*$/, '')) ? [`${relative(SRC, f)}:${i + 1}: ${line.trim()}`] : [])))
  assert.equal(found, [])
  assert.ok(BACKEND_CODE.test("if (tf.getBackend() === 'webgpu')"), 'the pattern sees a backend check')
})

test('the rule finds a violation when there is one (the parser sees static, dynamic and re-exports)', () => {
  const probe = join(SRC, 'model', 'mistral.ts')
  assert.ok(importsOf(probe).includes('model/autograd.ts'))
  assert.ok(importsOf(probe).includes('@tensorflow/tfjs'))
  assert.ok(importsOf(join(SRC, 'cli.ts')).includes('commands/eval.ts'), 'dynamic import seen')
  assert.ok(importsOf(join(SRC, 'train', 'loop.ts')).includes('train/setup.ts'), 'export … from seen')
})

test.run()
