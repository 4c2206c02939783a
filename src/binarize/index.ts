/**
 * `align binarize`: UltraFeedback rows -> chosen/rejected pairs, split into train_prefs / test_prefs.
 *
 * read (row group by row group) -> parse -> rule -> spool; then sample the test split from the spool and
 * write each split. Same inputs + recipe + seed => byte-identical files.
 */
import { createHash } from 'node:crypto'
import { createReadStream, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { AlignError } from '../errors.ts'
import { readRows } from '../rows.ts'
import { Progress } from '../progress.ts'
import type { Section } from '../recipe.ts'
import { Rng } from '../rng.ts'
import { countRows, expandInputs, readBatches } from './read.ts'
import { REJECTED, SCORES, binarizeRow, type RuleOptions } from './rules.ts'
import { countHist, emptyStats, sortHistograms, type BinarizeStats } from './stats.ts'
import { parseRow } from './ultrafeedback.ts'
import { OutputDir, Spool, pairRecord, promptId, writeSplits } from './write.ts'

/** The recipe's `binarize:` section. */
export const BINARIZE_SECTION: Section = {
  score: { type: { kind: 'enum', choices: SCORES }, default: 'overall', doc: 'what ranks completions: overall_score (critique, 1-10), the mean of the 4 aspect ratings, a weighted mean, or one aspect (1-5)' },
  aspect_weights: { type: { kind: 'weights' }, default: { helpfulness: 1, honesty: 1, instruction_following: 1, truthfulness: 1 }, doc: 'weights for score: weighted' },
  rejected: { type: { kind: 'enum', choices: REJECTED }, default: 'random_other', doc: 'how the rejected completion is picked' },
  min_margin: { type: { kind: 'number', min: 0 }, default: 0, doc: 'drop pairs whose score_chosen - score_rejected is below this' },
  drop_ties: { type: { kind: 'boolean' }, default: false, doc: 'drop pairs with score_chosen == score_rejected' },
  drop_empty_responses: { type: { kind: 'boolean' }, default: false, doc: 'remove completions whose response is empty or whitespace' },
  dedupe_responses: { type: { kind: 'boolean' }, default: false, doc: 'remove completions whose response repeats an earlier one of the same prompt' },
  exclude_sources: { type: { kind: 'strings' }, default: [], doc: 'drop rows of these sources (e.g. truthful_qa)' },
  exclude_prompts_file: { type: { kind: 'string' }, default: null, nullable: true, doc: 'drop rows whose instruction equals a prompt in this file (.txt one per line, .jsonl/.parquet with a question, prompt or instruction column): H4 uses the TruthfulQA questions' },
  fix_overall_score_bug: { type: { kind: 'boolean' }, default: false, doc: 'treat overall_score 10 with fine-grained <= 2 as 1 (OpenBMB fix of 2023-12-29)' },
  test_size: { type: { kind: 'number', min: 0 }, default: 0, doc: 'pairs in test_prefs: a count (>= 1) or a fraction (< 1)' },
  seed: { type: { kind: 'integer' }, default: 42, doc: 'seeds the rejected draws and the test split' },
}

export interface BinarizeOptions extends RuleOptions {
  exclude_prompts_file: string | null
  test_size: number
  seed: number
}

export interface BinarizeArgs {
  inputs: string[]
  out: string
  formats: ('parquet' | 'jsonl')[]
  recipeName: string
  options: BinarizeOptions
  /** no spinner or progress lines (tests, library use) */
  quiet?: boolean
}

export async function binarize(args: BinarizeArgs): Promise<BinarizeStats> {
  const o = args.options
  if (o.score === 'weighted' && Object.values(o.aspect_weights).every((w) => w === 0)) {
    throw new AlignError('binarize.aspect_weights: every weight is 0; give at least one aspect a positive weight')
  }
  const files = expandInputs(args.inputs)
  const stats = emptyStats(args.recipeName, { ...o })
  const rules: RuleOptions = o.exclude_prompts_file ? { ...o, excludedPrompts: await readPromptList(o.exclude_prompts_file) } : o
  const dir = new OutputDir(args.out)
  const onSignal = () => {
    dir.abort()
    process.exit(130)
  }
  process.once('SIGINT', onSignal)
  try {
    const totals = await Promise.all(files.map(countRows))
    const knownTotal = totals.every((t) => t !== undefined) ? totals.reduce((a, b) => a! + b!, 0) : undefined
    const totalBytes = files.reduce((a, f) => a + f.bytes, 0)
    const progress = new Progress('binarize', { quiet: args.quiet })
    const spool = new Spool(join(dir.tmp, 'pairs.spool.jsonl'))
    let bytesBefore = 0
    for (const file of files) {
      let rows = 0
      const hashing = sha256File(file.path)
      for await (const batch of readBatches(file)) {
        for (const [i, raw] of batch.rows.entries()) {
          const row = parseRow(raw, batch.where(i))
          const id = promptId(row.instruction)
          const src = (stats.sources[row.source] ??= { rows: 0, pairs: 0, dropped: 0 })
          src.rows++
          const result = binarizeRow(row, rules, () => Rng.fromKey(`${o.seed}:${id}`))
          if ('drop' in result) {
            stats.dropped[result.drop]++
            src.dropped++
            continue
          }
          for (const { chosen, rejected } of result.pairs) {
            spool.push(pairRecord(row.instruction, id, row.source, chosen, rejected))
            src.pairs++
            countHist(stats.histograms.score_chosen, chosen.score)
            countHist(stats.histograms.score_rejected, rejected.score)
            countHist(stats.histograms.margin, chosen.score - rejected.score)
          }
        }
        rows += batch.rows.length
        stats.rows_read += batch.rows.length
        const pairs = ` · ${spool.count.toLocaleString('en-US')} pairs`
        if (knownTotal) progress.update(stats.rows_read, knownTotal, 'rows', pairs) // parquet footers give row counts
        else progress.update(bytesBefore + batch.bytesDone, totalBytes, 'bytes', pairs) // JSONL: bytes read
      }
      bytesBefore += file.bytes
      stats.inputs.push({ path: file.path, format: file.format, bytes: file.bytes, sha256: await hashing, rows })
    }
    spool.close()

    const total = spool.count
    const testCount = o.test_size >= 1 ? Math.floor(o.test_size) : Math.round(o.test_size * total)
    if (total === 0) throw new AlignError(`no pairs survived the rules (${files.length} file(s), ${stats.rows_read} rows read); see the drop reasons with --json or loosen the recipe`)
    if (testCount >= total) {
      throw new AlignError(`test_size ${o.test_size} leaves no training pairs (${total} pairs in all); pass --test-size with a smaller count or a fraction such as 0.1`)
    }
    const test = new Set(Rng.fromKey(`${o.seed}:split`).sample(total, testCount))
    writeSplits(spool.path, dir.tmp, args.formats, (i) => test.has(i))
    stats.pairs_total = total
    stats.pairs = { train_prefs: total - testCount, test_prefs: testCount }
    sortHistograms(stats)
    writeFileSync(join(dir.tmp, 'stats.json'), JSON.stringify(stats, null, 2) + '\n')
    rmSync(spool.path)
    dir.commit()
    progress.succeed(`binarize: ${total.toLocaleString('en-US')} pairs from ${stats.rows_read.toLocaleString('en-US')} rows -> ${args.out}`)
    return stats
  } catch (e) {
    dir.abort()
    throw e
  } finally {
    process.off('SIGINT', onSignal)
  }
}

function sha256File(path: string): Promise<string> {
  return new Promise((res, rej) => {
    const h = createHash('sha256')
    createReadStream(path)
      .on('data', (d) => h.update(d))
      .on('end', () => res(h.digest('hex')))
      .on('error', rej)
  })
}

/** Prompts to exclude: a .txt file (one per line) or JSONL / parquet rows with a question, prompt or instruction column. */
export async function readPromptList(path: string): Promise<Set<string>> {
  if (!existsSync(path)) throw new AlignError(`binarize.exclude_prompts_file ${path}: no such file`)
  // .txt holds single-line prompts, matched exactly; prompts with newlines need .jsonl / .parquet
  if (path.endsWith('.txt')) return new Set(readFileSync(path, 'utf8').split('\n').map((l) => l.replace(/\r$/, '')).filter(Boolean))
  const rows = await readRows(path)
  const out = new Set<string>()
  rows.forEach((r, i) => {
    const v = typeof r === 'string' ? r : (r.question ?? r.prompt ?? r.instruction)
    if (typeof v !== 'string') throw new AlignError(`${path} row ${i + 1}: no question, prompt or instruction string`)
    out.add(v)
  })
  return out
}
