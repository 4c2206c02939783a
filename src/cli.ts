#!/usr/bin/env node
/**
 * The `align` command line (cmd-ts). Each subcommand parses its flags, loads its recipe section and calls
 * one function; AlignErrors print as one line `align: error: …` with exit status 1.
 */
import { binary, command, flag, multioption, number, oneOf, option, optional, restPositionals, run, string, subcommands, array } from 'cmd-ts'
import { AlignError } from './errors.ts'
import { applyOverride, listRecipes, loadRecipe } from './recipe.ts'

const overrides = restPositionals({ type: string, displayName: 'key=value', description: 'recipe overrides, e.g. binarize.min_margin=1 (type-checked; unknown keys are errors)' })

const binarizeCmd = command({
  name: 'binarize',
  description: 'UltraFeedback (openbmb schema, parquet or JSONL) -> chosen/rejected pairs in HuggingFaceH4/ultrafeedback_binarized schema',
  args: {
    input: multioption({ type: array(string), long: 'input', short: 'i', description: 'parquet/JSONL file, directory or glob (repeatable)' }),
    recipe: option({ type: string, long: 'recipe', short: 'r', defaultValue: () => 'zephyr', defaultValueIsSerializable: true, description: `recipe name (${listRecipes().join(', ')}) or path to a YAML file` }),
    out: option({ type: string, long: 'out', short: 'o', description: 'output directory (train_prefs/test_prefs files + stats.json)' }),
    format: option({ type: oneOf(['parquet', 'jsonl', 'both'] as const), long: 'format', defaultValue: () => 'parquet' as const, defaultValueIsSerializable: true, description: 'output format (parquet, like the Hub; jsonl; or both)' }),
    seed: option({ type: optional(number), long: 'seed', description: 'overrides binarize.seed' }),
    testSize: option({ type: optional(number), long: 'test-size', description: 'overrides binarize.test_size (count, or fraction < 1)' }),
    json: flag({ long: 'json', description: 'print the report as JSON on stdout' }),
    overrides,
  },
  handler: async (a) => {
    const { BINARIZE_SECTION, binarize } = await import('./binarize/index.ts')
    const { formatStats } = await import('./binarize/stats.ts')
    const schema = { binarize: BINARIZE_SECTION }
    const recipe = loadRecipe(a.recipe, schema, a.overrides)
    if (a.seed !== undefined) applyOverride(recipe.values, schema, `binarize.seed=${a.seed}`)
    if (a.testSize !== undefined) applyOverride(recipe.values, schema, `binarize.test_size=${a.testSize}`)
    const started = Date.now()
    const stats = await binarize({
      inputs: a.input,
      out: a.out,
      formats: a.format === 'both' ? ['parquet', 'jsonl'] : [a.format],
      recipeName: recipe.name,
      options: recipe.values.binarize as never,
    })
    process.stdout.write(a.json ? JSON.stringify(stats, null, 2) + '\n' : formatStats(stats, (Date.now() - started) / 1000) + '\n')
  },
})

const demoCmd = command({
  name: 'demo',
  description: 'the main job on the shipped sample: binarize data/ultrafeedback -> (train a tiny policy -> inspect)',
  args: { out: option({ type: string, long: 'out', defaultValue: () => 'checkpoints/demo', defaultValueIsSerializable: true, description: 'run directory' }) },
  handler: async (a) => (await import('./demo.ts')).demo(a.out),
})

export const app = subcommands({
  name: 'align',
  description: 'DPO fine-tuning orchestrator: binarize UltraFeedback, train a Mistral-like policy (Zephyr recipes), inspect the result',
  cmds: { binarize: binarizeCmd, demo: demoCmd },
})

export async function main(argv: string[]): Promise<void> {
  try {
    await run(binary(app), argv)
  } catch (e) {
    if (e instanceof AlignError) {
      process.stderr.write(`align: error: ${e.message}\n`)
      process.exit(1)
    }
    throw e
  }
}

await main(process.argv)
