/**
 * `npm run demo`: the main job on the shipped sample, end to end, with the `tiny` recipe:
 *   binarize data/ultrafeedback → SFT a tiny Mistral-like policy on the chosen conversations → DPO from the
 *   SFT weights → inspect the DPO run (terminal charts + curves.svg).
 * Everything lands under checkpoints/demo/ (override with --out).
 */
import { resolve } from 'node:path'
import { binarize, BINARIZE_SECTION, type BinarizeOptions } from '../binarize/index.ts'
import { SHIPPED_SAMPLE } from '../paths.ts'
import { loadRecipe } from '../recipe.ts'

export async function demo(out = 'checkpoints/demo', backend?: string, workers: number | 'auto' = 'auto'): Promise<void> {
  const started = Date.now()
  const dir = resolve(out)
  const step = (s: string) => process.stderr.write(`\n== ${s}\n`)

  step('1/4 binarize data/ultrafeedback (recipe tiny: the zephyr rule, 100 held-out pairs)')
  const b = loadRecipe('tiny', { binarize: BINARIZE_SECTION })
  const stats = await binarize({ inputs: [SHIPPED_SAMPLE], out: `${dir}/data`, formats: ['parquet'], recipeName: 'tiny', options: b.values.binarize as unknown as BinarizeOptions })
  process.stderr.write(`${stats.rows_read} rows -> ${stats.pairs.train_prefs} train / ${stats.pairs.test_prefs} test pairs\n`)

  const { TRAIN_SCHEMA } = await import('../train/schema.ts')
  const { train } = await import('../train/loop.ts')
  step('2/4 SFT of a tiny Mistral-like policy on the chosen conversations')
  const sft = await train({ stage: 'sft', backend, workers, recipe: loadRecipe('tiny', TRAIN_SCHEMA, [`data.pairs=${dir}/data`, `sft.output_dir=${dir}/sft`]) })

  step('3/4 DPO from the SFT policy')
  const dpo = await train({ stage: 'dpo', backend, workers, recipe: loadRecipe('tiny', TRAIN_SCHEMA, [`data.pairs=${dir}/data`, `model.policy=${sft.finalDir}`, `dpo.output_dir=${dir}/dpo`]) })

  step('4/4 inspect the DPO run')
  const { inspect } = await import('../inspect/index.ts')
  process.stdout.write((await inspect({ dir: `${dir}/dpo`, plot: `${dir}/dpo/curves.svg` })).text + '\n')

  const last = (k: string) => [...dpo.logHistory].reverse().find((r) => r[k] !== undefined)?.[k]
  const trainLoss = last('train_loss')!
  const acc = last('eval_rewards/accuracies')!
  const minutes = (Date.now() - started) / 60000
  process.stdout.write(`\ndemo: ${minutes.toFixed(1)} min · DPO train_loss ${trainLoss.toFixed(4)} (mean over training; ln 2 = 0.6931) · eval_rewards/accuracies ${acc.toFixed(3)} · eval_loss ${last('eval_loss')!.toFixed(4)}\n`)
  process.stdout.write(`outputs: ${dir}/{data,sft,dpo}; curves: ${dir}/dpo/curves.svg\n`)
}
