// Recipes: every shipped recipe loads; overrides are type-checked; unknown keys name file and line.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { BINARIZE_SECTION } from '../src/binarize/index.ts'
import { listRecipes, loadRecipe } from '../src/recipe.ts'
import { rejects, tmp } from './helpers.ts'

const schema = { binarize: BINARIZE_SECTION }

test('every shipped recipe loads and its binarize section is complete', () => {
  const names = listRecipes()
  for (const n of ['zephyr', 'argilla', 'best-worst', 'all-pairs']) assert.ok(names.includes(n), n)
  for (const n of names) {
    const r = loadRecipe(n, schema)
    assert.equal(Object.keys(r.values.binarize!).sort(), Object.keys(BINARIZE_SECTION).sort())
  }
  const z = loadRecipe('zephyr', schema).values.binarize!
  assert.is(z.score, 'overall')
  assert.is(z.rejected, 'random_other')
  assert.is(z.test_size, 2000)
  assert.is(z.seed, 42)
  assert.equal(z.exclude_sources, ['truthful_qa'])
})

test('overrides: typed, dotted or unique short keys, lists from commas', () => {
  const r = loadRecipe('zephyr', schema, ['binarize.min_margin=1.5', 'drop_ties=true', 'exclude_sources=truthful_qa,false_qa', 'score=mean_of_aspects'])
  assert.is(r.values.binarize!.min_margin, 1.5)
  assert.is(r.values.binarize!.drop_ties, true)
  assert.equal(r.values.binarize!.exclude_sources, ['truthful_qa', 'false_qa'])
  assert.is(r.values.binarize!.score, 'mean_of_aspects')
})

test('override errors: wrong type, bad enum, unknown key with suggestion, not key=value', async () => {
  await rejects(() => loadRecipe('zephyr', schema, ['min_margin=abc']), /binarize\.min_margin: expected a number >= 0|binarize\.min_margin: expected a number/, /"abc"/)
  await rejects(() => loadRecipe('zephyr', schema, ['drop_ties=maybe']), /expected true or false/)
  await rejects(() => loadRecipe('zephyr', schema, ['score=best']), /one of overall \| mean_of_aspects/)
  await rejects(() => loadRecipe('zephyr', schema, ['binarize.seeed=1']), /unknown key binarize\.seeed; did you mean seed\?/)
  await rejects(() => loadRecipe('zephyr', schema, ['seed']), /not key=value/)
  await rejects(() => loadRecipe('zephyr', schema, ['seed=1.5']), /expected an integer/)
  await rejects(() => loadRecipe('no-such-recipe', schema), /recipe "no-such-recipe" not found/, /known recipes: .*zephyr/)
})

test('a recipe file with an unknown key or a bad value names the file and line', async () => {
  const dir = tmp()
  const p = join(dir, 'mine.yaml')
  writeFileSync(p, '# my recipe\nbinarize:\n  score: overall\n  min_marign: 1\n')
  await rejects(() => loadRecipe(p, schema), /mine\.yaml:4: unknown key binarize\.min_marign; did you mean min_margin\?/)
  writeFileSync(p, 'binarize:\n  test_size: -3\n')
  await rejects(() => loadRecipe(p, schema), /mine\.yaml:2: binarize\.test_size: expected a number >= 0, got -3/)
  writeFileSync(p, 'binarize:\n  score: [overall\n')
  await rejects(() => loadRecipe(p, schema), /mine\.yaml:\d+: invalid YAML/)
})

test.run()
