// Binarization rules on hand-built rows, each expected pair checked by hand.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { binarizeRow, meanOfAspects, overallScore, type RuleOptions } from '../src/binarize/rules.ts'
import type { Completion, UFRow } from '../src/binarize/ultrafeedback.ts'
import { Rng } from '../src/rng.ts'

type R = number | null
function comp(response: string, overall: number | null, ratings: [R, R, R, R], model = 'm-' + response): Completion {
  const [helpfulness, honesty, instruction_following, truthfulness] = ratings
  const rated = ratings.filter((r): r is number => r !== null)
  return { model, response, overallScore: overall, fineGrainedScore: rated.length ? rated.reduce((a, b) => a + b) / rated.length : null, ratings: { helpfulness, honesty, instruction_following, truthfulness } }
}
const row = (completions: Completion[], source = 'sharegpt'): UFRow => ({ source, instruction: 'Q?', completions })
const base: RuleOptions = {
  score: 'overall', aspect_weights: { helpfulness: 1, honesty: 1, instruction_following: 1, truthfulness: 1 }, rejected: 'random_other',
  min_margin: 0, drop_ties: false, drop_empty_responses: false, dedupe_responses: false, exclude_sources: ['truthful_qa'], fix_overall_score_bug: true,
}
const zephyr = base
const argilla: RuleOptions = { ...base, score: 'mean_of_aspects', rejected: 'random_lower', drop_ties: true, fix_overall_score_bug: false }
const rngOf = (seed: number) => () => Rng.fromKey(String(seed))
function pairs(r: UFRow, o: RuleOptions, seed = 1): [string, string][] | string {
  const res = binarizeRow(r, o, rngOf(seed))
  return 'drop' in res ? res.drop : res.pairs.map((p) => [p.chosen.response, p.rejected.response])
}

test('overall_score bug fix: 10 with fine-grained <= 2 becomes 1, others untouched', () => {
  assert.is(overallScore(comp('a', 10, [1, 1, 2, 1]), true), 1) // fg 1.25
  assert.is(overallScore(comp('a', 10, [1, 1, 2, 1]), false), 10)
  assert.is(overallScore(comp('a', 10, [5, 5, 5, 5]), true), 10)
  assert.is(overallScore(comp('a', 10, [2, 2, 3, 3]), true), 10) // fg 2.5: re-annotated upstream, kept here
  assert.is(overallScore(comp('a', 7, [1, 1, 1, 1]), true), 7)
})

test('mean of aspects skips N/A; all N/A has no score', () => {
  assert.is(meanOfAspects({ helpfulness: 4, honesty: null, instruction_following: 5, truthfulness: 3 }), 4)
  assert.is(meanOfAspects({ helpfulness: null, honesty: null, instruction_following: null, truthfulness: null }), null)
})

test('zephyr: chosen is the first highest overall_score; rejected uniform over the others, ties kept', () => {
  const r = row([comp('a', 7, [3, 3, 3, 3]), comp('b', 9, [4, 4, 4, 4]), comp('c', 9, [5, 5, 5, 5]), comp('d', 2, [1, 1, 1, 1])])
  const seen = new Map<string, number>()
  for (let seed = 0; seed < 600; seed++) {
    const p = pairs(r, zephyr, seed) as [string, string][]
    assert.is(p.length, 1)
    assert.is(p[0]![0], 'b') // first of the two 9s
    seen.set(p[0]![1], (seen.get(p[0]![1]) ?? 0) + 1)
  }
  assert.equal([...seen.keys()].sort(), ['a', 'c', 'd']) // 'c' ties with the chosen score and is kept
  for (const n of seen.values()) assert.ok(n > 150 && n < 250, `uniform draw, got ${[...seen.values()]}`)
})

test('zephyr: an exact copy of the chosen completion is never the rejected one (H4 redraw)', () => {
  const best = comp('best', 10, [5, 5, 5, 5], 'gpt-4')
  const r = row([best, { ...best }, comp('x', 3, [2, 1, 2, 1])])
  for (let seed = 0; seed < 50; seed++) assert.equal(pairs(r, zephyr, seed), [['best', 'x']])
  assert.is(pairs(row([best, { ...best }]), zephyr), 'duplicate')
})

test('zephyr: fewer than 2 completions, truthful_qa source, and the fixed bug change the outcome', () => {
  assert.is(pairs(row([comp('a', 9, [5, 5, 5, 5])]), zephyr), 'fewer_than_2_completions')
  assert.is(pairs(row([comp('a', 9, [5, 5, 5, 5]), comp('b', 3, [1, 1, 1, 1])], 'truthful_qa'), zephyr), 'excluded_source')
  // the buggy 10 (fg 1.25) would win without the fix; with it, 'good' (8) is chosen
  const r = row([comp('buggy', 10, [1, 1, 2, 1]), comp('good', 8, [4, 4, 4, 4])])
  assert.equal(pairs(r, zephyr), [['good', 'buggy']])
  assert.equal(pairs(r, { ...zephyr, fix_overall_score_bug: false }), [['buggy', 'good']])
})

test('argilla: mean rating, rejected strictly lower, ties and all-N/A handled', () => {
  const r = row([comp('a', 1, [4, 4, 4, 4]), comp('b', 1, [5, null, 5, 5]), comp('c', 1, [5, 4, 5, 4]), comp('d', 1, [null, null, null, null])])
  // means: a 4, b 5 (N/A skipped), c 4.5, d none -> chosen b, rejected in {a, c}
  const rej = new Set<string>()
  for (let seed = 0; seed < 100; seed++) {
    const p = pairs(r, argilla, seed) as [string, string][]
    assert.is(p[0]![0], 'b')
    rej.add(p[0]![1])
  }
  assert.equal([...rej].sort(), ['a', 'c'])
  assert.is(pairs(row([comp('a', 9, [4, 4, 4, 4]), comp('b', 2, [4, 4, 4, 4])]), argilla), 'tie')
  assert.is(pairs(row([comp('a', 9, [4, 4, 4, 4]), comp('b', 2, [null, null, null, null])]), argilla), 'no_score')
  // margin: only completions at least 1 below the best qualify
  assert.equal(pairs(r, { ...argilla, min_margin: 1 }), [['b', 'a']])
  assert.is(pairs(r, { ...argilla, min_margin: 2 }), 'below_margin')
})

test('best-worst: lowest score, first of equal lows; margin and ties', () => {
  const o: RuleOptions = { ...argilla, rejected: 'lowest' }
  const r = row([comp('a', 1, [3, 3, 3, 3]), comp('b', 1, [5, 5, 5, 5]), comp('c', 1, [2, 2, 2, 2]), comp('d', 1, [2, 2, 2, 2])])
  assert.equal(pairs(r, o), [['b', 'c']])
  assert.equal(pairs(r, { ...o, min_margin: 3 }), [['b', 'c']])
  assert.is(pairs(r, { ...o, min_margin: 3.5 }), 'below_margin')
})

test('all-pairs: every pair with difference >= margin, better completion first', () => {
  const o: RuleOptions = { ...argilla, rejected: 'all_pairs', min_margin: 1 }
  const r = row([comp('a', 1, [3, 3, 3, 3]), comp('b', 1, [5, 5, 5, 5]), comp('c', 1, [2, 2, 2, 2]), comp('d', 1, [5, 4, 4, 4])])
  // scores a 3, b 5, c 2, d 4.25 -> in index order: (b,a) 2, (a,c) 1, (d,a) 1.25, (b,c) 3, [(b,d) 0.75 < 1], (d,c) 2.25
  assert.equal(pairs(r, o), [['b', 'a'], ['a', 'c'], ['d', 'a'], ['b', 'c'], ['d', 'c']])
  assert.is(pairs(row([comp('a', 1, [3, 3, 3, 3]), comp('b', 1, [3, 3, 3, 3])]), o), 'tie')
})

test('weighted and single-aspect scores', () => {
  const r = row([comp('a', 1, [5, 1, 1, 1]), comp('b', 1, [1, 5, 5, 5])])
  assert.equal(pairs(r, { ...argilla, score: 'helpfulness' }), [['a', 'b']])
  assert.equal(pairs(r, { ...argilla, score: 'mean_of_aspects' }), [['b', 'a']])
  assert.equal(pairs(r, { ...argilla, score: 'weighted', aspect_weights: { helpfulness: 10, honesty: 1 } }), [['a', 'b']])
})

test('empty responses and duplicates are filtered before pairing when asked', () => {
  const r = row([comp('same', 9, [5, 5, 5, 5]), comp('same', 5, [3, 3, 3, 3], 'other'), comp('  ', 2, [null, null, null, null])])
  assert.is(pairs(r, { ...zephyr, drop_empty_responses: true, dedupe_responses: true }), 'duplicate')
  assert.is(pairs(row([comp('x', 9, [5, 5, 5, 5]), comp('', 1, [null, null, null, null])]), { ...zephyr, drop_empty_responses: true }), 'empty_response')
  assert.equal(pairs(row([comp('x', 9, [5, 5, 5, 5]), comp('', 1, [null, null, null, null])]), zephyr), [['x', '']])
})

test('the same text on both sides (two empty responses from different models) is dropped and counted', () => {
  const r = row([comp('', 4, [2, 2, 2, 2], 'model-a'), comp('', 4, [2, 2, 2, 2], 'model-b')])
  assert.is(pairs(r, zephyr), 'identical_responses') // H4's redraw compares (score, text, model): a different model passes it
  assert.is(pairs(row([comp('', 6, [3, 3, 3, 3], 'x'), comp('', 2, [1, 1, 1, 1], 'y')]), { ...base, rejected: 'lowest' }), 'identical_responses')
  assert.equal(pairs(row([comp('a', 6, [3, 3, 3, 3]), comp('b', 2, [1, 1, 1, 1])]), { ...base, rejected: 'lowest' }), [['a', 'b']])
})

test.run()
