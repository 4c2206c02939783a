/**
 * `npm run demo`: the main job on the shipped sample, end to end. Today: binarize data/ultrafeedback with
 * the zephyr recipe (100 held-out pairs). Train and inspect steps join as they land.
 */
import { binarize, BINARIZE_SECTION, type BinarizeOptions } from './binarize/index.ts'
import { formatStats } from './binarize/stats.ts'
import { loadRecipe } from './recipe.ts'

export async function demo(out = 'checkpoints/demo'): Promise<void> {
  const started = Date.now()
  const recipe = loadRecipe('zephyr', { binarize: BINARIZE_SECTION }, ['binarize.test_size=100'])
  const stats = await binarize({ inputs: ['data/ultrafeedback'], out: `${out}/data`, formats: ['parquet', 'jsonl'], recipeName: 'zephyr', options: recipe.values.binarize as unknown as BinarizeOptions })
  process.stdout.write(formatStats(stats, (Date.now() - started) / 1000) + '\n')
}
