// bench/padding: how much of a DPO micro-batch is padding, on real data, for TRL's concatenated rows and align's
// packed pairs, with and without group_by_length. The shipped UltraFeedback sample is binarized with the zephyr
// recipe and tokenized as its DPO stage (real Mistral tokenizer, max_length 1024, max_prompt_length 512).
// "slots" = B·T token slots relative to the concatenated layout; "pad" = the padding share of them.
// Usage: npx tsx bench/padding.ts
import { mkdirSync } from 'node:fs'
import { binarize, BINARIZE_SECTION, type BinarizeOptions } from '../src/binarize/index.ts'
import { PRESETS, parseConfig } from '../src/model/config.ts'
import { loadTokenizer } from '../src/model/tokenizer.ts'
import { loadRecipe } from '../src/recipe.ts'
import { Rng } from '../src/rng.ts'
import { packPairs, pairBatch, padBatch, pairSequences } from '../src/preference/batch.ts'
import type { SeqBatch } from '../src/model/logprobs.ts'
import { loadPairs, pairTokens } from '../src/preference/pairs.ts'
import { epochBatches, lengthGroupedOrder } from '../src/train/sampler.ts'

const out = 'bench/out/zephyr-sample'
mkdirSync('bench/out', { recursive: true })
const options = { ...(loadRecipe('zephyr', { binarize: BINARIZE_SECTION }).values.binarize as unknown as BinarizeOptions), test_size: 55 }
await binarize({ inputs: ['data/ultrafeedback/ultrafeedback-sample.parquet'], out, formats: ['parquet'], recipeName: 'zephyr', options, quiet: true })
const { pairs } = await loadPairs(`${out}/train_prefs.parquet`, loadTokenizer('data/tokenizer'), { maxLength: 1024, maxPromptLength: 512 })
const config = parseConfig(PRESETS['mistral-7b']!, 'mistral-7b')
const lengths = pairs.map(pairTokens) // as align train groups them
const mean = (f: (i: number) => number) => Math.round(pairs.reduce((a, _, i) => a + f(i), 0) / pairs.length)
console.log(`${pairs.length} pairs; mean prompt ${mean((i) => pairs[i]!.promptIds.length)}, chosen ${mean((i) => pairs[i]!.chosenIds.length)}, rejected ${mean((i) => pairs[i]!.rejectedIds.length)} tokens`)
for (const batchSize of [2, 8]) {
  for (const grouped of [false, true]) {
    let order = Rng.fromKey('42:epoch:0').shuffle([...pairs.keys()])
    if (grouped) order = lengthGroupedOrder(order, lengths, batchSize)
    const layouts: [string, (ps: typeof pairs) => SeqBatch][] = [['concatenated', (ps) => padBatch(pairSequences(ps), 0)], ['packed', (ps) => packPairs(ps, 0)], ['align (auto)', (ps) => pairBatch(ps, 0, config)]]
    const sums = layouts.map(() => ({ real: 0, slots: 0 }))
    for (const b of epochBatches(order, batchSize)) {
      layouts.forEach(([, make], k) => {
        const batch = make(b.map((i) => pairs[i]!))
        sums[k]!.real += batch.tokens
        sums[k]!.slots += batch.B * batch.T
      })
    }
    const cells = layouts.map(([name], k) => `${name}: slots ${(sums[k]!.slots / sums[0]!.slots).toFixed(2)}, pad ${(1 - sums[k]!.real / sums[k]!.slots).toFixed(2)}`)
    console.log(`micro-batch ${batchSize}, group_by_length ${grouped ? 'on ' : 'off'} | ${cells.join(' | ')}`)
  }
}
