// `align binarize` end to end on the real-text UltraFeedback fixture (200 rows, zstd parquet + JSONL).
import { existsSync, readdirSync, readFileSync, writeFileSync, copyFileSync, truncateSync } from 'node:fs'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { spawnSync } from 'node:child_process'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { asyncBufferFromFile, parquetReadObjects } from 'hyparquet'
import { BINARIZE_SECTION, binarize, type BinarizeOptions } from '../src/binarize/index.ts'
import { promptId } from '../src/binarize/write.ts'
import { loadRecipe } from '../src/recipe.ts'
import { FIXTURES, ROOT, rejects, tmp } from './helpers.ts'

const PARQUET = join(FIXTURES, 'ultrafeedback', 'head200.zstd.parquet')
const JSONL = join(FIXTURES, 'ultrafeedback', 'head200.jsonl')
const rawRows = readFileSync(JSONL, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
const recipe = (name: string, ...overrides: string[]) => loadRecipe(name, { binarize: BINARIZE_SECTION }, overrides).values.binarize as unknown as BinarizeOptions
const run = (inputs: string[], options: BinarizeOptions, out = join(tmp(), 'out'), formats: ('parquet' | 'jsonl')[] = ['parquet', 'jsonl']) =>
  binarize({ inputs, out, formats, recipeName: 'test', options, quiet: true }).then((stats) => ({ stats, out }))
const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex')
const jsonl = (p: string) => readFileSync(p, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l))

test('prompt_id is sha256 of the UTF-8 prompt (H4 examples)', () => {
  const a = promptId('how can i develop a habit of drawing daily')
  assert.ok(a.startsWith('086b3e24') && a.endsWith('cd43'), a)
  const b = promptId('Which books are still banned in Canada?')
  assert.ok(b.startsWith('aeccf551') && b.endsWith('e090'), b)
})

// Stored expected outputs (test/fixtures/PROVENANCE.md): the zephyr run's pairs, and Argilla's own choice for
// each of the fixture's prompts (the real rows the fixture was built from).
const expected = (name: string) => jsonl(join(FIXTURES, 'ultrafeedback', 'expected', name))
const hash = (s: string) => createHash('sha256').update(s).digest('hex')
const summary = (split: string, p: any) => ({ split, prompt_id: p.prompt_id, score_chosen: p.score_chosen, score_rejected: p.score_rejected, chosen_model: p.chosen_model, rejected_model: p.rejected_model, chosen_sha256: hash(p.chosen[1].content), rejected_sha256: hash(p.rejected[1].content) })

test('zephyr on the fixture: the stored pairs and splits, and the drops the fixture plants (PROVENANCE)', async () => {
  const { stats, out } = await run([PARQUET], recipe('zephyr', 'test_size=20'))
  // planted: source truthful_qa on every row i % 50 == 7 (4 rows); 5 rows with a single completion
  assert.is(stats.rows_read, 200)
  assert.is(stats.dropped.excluded_source, 4)
  assert.is(stats.dropped.fewer_than_2_completions, 5)
  assert.equal(stats.pairs, { train_prefs: 171, test_prefs: 20 })
  const train = jsonl(join(out, 'train_prefs.jsonl'))
  const test_ = jsonl(join(out, 'test_prefs.jsonl'))
  assert.equal([...train.map((p) => summary('train_prefs', p)), ...test_.map((p) => summary('test_prefs', p))], expected('zephyr-test20.jsonl'))
  // H4 schema + source/models, messages == chosen, prompt_id = sha256(prompt)
  const r = train[0]
  assert.equal(Object.keys(r), ['prompt', 'prompt_id', 'chosen', 'rejected', 'messages', 'score_chosen', 'score_rejected', 'source', 'chosen_model', 'rejected_model'])
  assert.equal(r.chosen[0], { content: r.prompt, role: 'user' })
  assert.is(r.chosen[1].role, 'assistant')
  assert.equal(r.messages, r.chosen)
  assert.is(r.prompt_id, promptId(r.prompt))
  // row 3 of the fixture carries the overall_score bug (10 with fine-grained 1.25): it must not be chosen
  const bugRow = rawRows[3]
  const bug = bugRow.completions.find((c: any) => c.overall_score === 10)
  assert.ok(bug['fine-grained_score'] <= 2)
  const p3 = [...train, ...test_].find((p) => p.prompt === bugRow.instruction)
  assert.is.not(p3.chosen[1].content, bug.response)
  const saved = JSON.parse(readFileSync(join(out, 'stats.json'), 'utf8'))
  assert.equal(saved.dropped, stats.dropped)
  assert.is(saved.inputs[0].sha256, sha(PARQUET))
})

test('argilla on the fixture: 191 pairs whose chosen response and rating are Argilla-cleaned\'s own', async () => {
  const { stats, out } = await run([JSONL], recipe('argilla', 'test_size=0.1'), undefined, ['jsonl'])
  assert.is(stats.pairs_total, 191) // 200 - 4 truthful_qa - 5 single-completion rows; no ties in this sample
  assert.is(stats.pairs.test_prefs, 19)
  const real = new Map(expected('argilla-cleaned.jsonl').map((r) => [r.prompt_id, r]))
  const pairs = [...jsonl(join(out, 'train_prefs.jsonl')), ...jsonl(join(out, 'test_prefs.jsonl'))]
  const differentChoice: number[] = []
  for (const p of pairs) {
    const r = real.get(p.prompt_id)
    assert.is(p.score_chosen, r.rating_chosen, p.prompt)
    assert.ok(p.score_chosen > p.score_rejected)
    if (hash(p.chosen[1].content) !== r.chosen_sha256) differentChoice.push(rawRows.findIndex((x) => x.instruction === p.prompt))
  }
  // row 194: the fixture added a truncated copy ("What options do") rated like Argilla's chosen; first-best takes it
  assert.equal(differentChoice, [194])
})

test('parquet and JSONL input give byte-identical output; runs are deterministic; the seed matters', async () => {
  const o = recipe('zephyr', 'test_size=25')
  const a = await run([PARQUET], o)
  const b = await run([JSONL], o)
  const c = await run([PARQUET], o)
  for (const f of ['train_prefs.parquet', 'test_prefs.parquet', 'train_prefs.jsonl', 'test_prefs.jsonl']) {
    assert.is(sha(join(a.out, f)), sha(join(b.out, f)), f)
    assert.is(sha(join(a.out, f)), sha(join(c.out, f)), f)
  }
  assert.is(sha(join(a.out, 'stats.json')), sha(join(c.out, 'stats.json')))
  const d = await run([PARQUET], { ...o, seed: 7 })
  assert.is.not(sha(join(a.out, 'train_prefs.jsonl')), sha(join(d.out, 'train_prefs.jsonl')))
  assert.equal(readdirSync(a.out).sort(), ['stats.json', 'test_prefs.jsonl', 'test_prefs.parquet', 'train_prefs.jsonl', 'train_prefs.parquet'])
})

test('parquet output reads back (hyparquet) equal to the JSONL output, nested messages included', async () => {
  const { out } = await run([PARQUET], recipe('zephyr', 'test_size=10'))
  const rows = await parquetReadObjects({ file: await asyncBufferFromFile(join(out, 'test_prefs.parquet')) })
  assert.equal(rows, jsonl(join(out, 'test_prefs.jsonl')))
})

test('several inputs, directory and glob inputs are read in order', async () => {
  const dir = tmp()
  copyFileSync(PARQUET, join(dir, 'a.parquet'))
  copyFileSync(JSONL, join(dir, 'b.jsonl'))
  const o = recipe('zephyr', 'test_size=10')
  const viaDir = await run([dir], o)
  const viaGlob = await run([join(dir, '*.{parquet,jsonl}').replace('{parquet,jsonl}', '*')], o)
  assert.is(viaDir.stats.rows_read, 400)
  assert.equal(viaDir.stats.inputs.map((i) => i.format), ['parquet', 'jsonl'])
  assert.is(sha(join(viaDir.out, 'train_prefs.jsonl')), sha(join(viaGlob.out, 'train_prefs.jsonl')))
})

async function leavesNothing(out: string, fn: () => Promise<unknown>, ...patterns: RegExp[]) {
  await rejects(fn, ...patterns)
  assert.not.ok(existsSync(out), 'no output directory after an error')
  const parent = join(out, '..')
  assert.equal(readdirSync(parent).filter((f) => f.includes('.tmp-')), [], 'no temp directory left behind')
}

test('bad input: one-line errors naming file and row/column, and nothing left behind', async () => {
  const dir = tmp()
  const out = join(dir, 'out')
  const o = recipe('zephyr', 'test_size=5')
  const notParquet = join(dir, 'x.parquet')
  writeFileSync(notParquet, 'hello, I am a CSV file\n1,2,3\n')
  await leavesNothing(out, () => run([notParquet], o, out), /x\.parquet/, /not a parquet file/)
  const truncated = join(dir, 'trunc.parquet')
  copyFileSync(PARQUET, truncated)
  truncateSync(truncated, 100_000)
  await leavesNothing(out, () => run([truncated], o, out), /trunc\.parquet/, /truncated/)
  const lines = readFileSync(JSONL, 'utf8').split('\n')
  const missing = join(dir, 'missing.jsonl')
  writeFileSync(missing, [lines[0], JSON.stringify({ ...JSON.parse(lines[1]!), instruction: undefined })].join('\n'))
  await leavesNothing(out, () => run([missing], o, out), /missing\.jsonl line 2/, /missing column "instruction"/)
  const wrong = JSON.parse(lines[2]!)
  wrong.completions[1].annotations.honesty.Rating = 'great'
  const wrongType = join(dir, 'wrong.jsonl')
  writeFileSync(wrongType, [lines[0], lines[1], JSON.stringify(wrong)].join('\n'))
  await leavesNothing(out, () => run([wrongType], o, out), /wrong\.jsonl line 3/, /completions\[1\]\.annotations\.honesty\.Rating/, /"great"/)
  const cut = join(dir, 'cut.jsonl')
  writeFileSync(cut, lines[0] + '\n' + lines[1]!.slice(0, 500))
  await leavesNothing(out, () => run([cut], o, out), /cut\.jsonl line 2/, /invalid JSON/)
  await leavesNothing(out, () => run([PARQUET], recipe('zephyr', 'test_size=5000'), out), /test_size 5000/, /--test-size/)
  await leavesNothing(out, () => run([join(dir, 'nope.parquet')], o, out), /nope\.parquet: no such file/)
})

test('CLI: bad recipe key exits 1 with one line on stderr and writes nothing', () => {
  const out = join(tmp(), 'out')
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src', 'cli.ts'), 'binarize', '--input', PARQUET, '--out', out, 'binarize.min_margn=1'], { encoding: 'utf8', cwd: ROOT })
  assert.is(r.status, 1)
  assert.match(r.stderr, /^align: error: override: unknown key binarize\.min_margn; did you mean min_margin\?/m)
  assert.is(r.stderr.trim().split('\n').filter((l) => l.startsWith('align:')).length, 1)
  assert.not.ok(existsSync(out))
})

test('CLI: --json prints the report for scripts', () => {
  const out = join(tmp(), 'out')
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src', 'cli.ts'), 'binarize', '--input', PARQUET, '--out', out, '--test-size', '10', '--format', 'jsonl', '--json'], { encoding: 'utf8', cwd: ROOT })
  assert.is(r.status, 0, r.stderr)
  const stats = JSON.parse(r.stdout)
  assert.is(stats.rows_read, 200)
  assert.equal(readdirSync(out).sort(), ['stats.json', 'test_prefs.jsonl', 'train_prefs.jsonl'])
})

test('exclude_prompts_file drops rows whose instruction equals a listed prompt (H4\'s TruthfulQA question match)', async () => {
  const dir = tmp()
  const list = join(dir, 'questions.txt')
  const oneLine = rawRows.filter((r) => !r.instruction.includes('\n') && r.source !== 'truthful_qa' && r.completions.length >= 2).slice(0, 2).map((r) => r.instruction)
  writeFileSync(list, [...oneLine, 'a question nobody asked'].join('\n') + '\n')
  const { stats } = await run([PARQUET], recipe('zephyr', 'test_size=10', `binarize.exclude_prompts_file=${list}`))
  assert.is(stats.dropped.excluded_prompt, 2)
  const jl = join(dir, 'questions.jsonl')
  writeFileSync(jl, JSON.stringify({ question: rawRows.find((r) => r.instruction.includes('\n') && r.source !== 'truthful_qa' && r.completions.length >= 2).instruction }) + '\n')
  assert.is((await run([PARQUET], recipe('zephyr', 'test_size=10', `binarize.exclude_prompts_file=${jl}`))).stats.dropped.excluded_prompt, 1)
  await rejects(() => run([PARQUET], recipe('zephyr', 'test_size=10', `binarize.exclude_prompts_file=${join(dir, 'nope.txt')}`)), /exclude_prompts_file .*nope\.txt: no such file/)
})

test('test_size 0 writes an empty but valid test_prefs', async () => {
  const { stats, out } = await run([PARQUET], recipe('zephyr', 'test_size=0'))
  assert.is(stats.pairs.test_prefs, 0)
  assert.equal(await parquetReadObjects({ file: await asyncBufferFromFile(join(out, 'test_prefs.parquet')) }), [])
  assert.is(readFileSync(join(out, 'test_prefs.jsonl'), 'utf8'), '')
})

test.run()
