#!/usr/bin/env node
/**
 * The `align` command line (cmd-ts). Each subcommand parses its flags, loads its recipe section and calls
 * one function; AlignErrors print as one line `align: error: …` with exit status 1.
 */
import { binary, command, flag, multioption, number, oneOf, option, optional, positional, restPositionals, run, string, subcommands, array } from 'cmd-ts'
import { AlignError } from './errors.ts'
import { applyOverride, listRecipes, loadRecipe } from './recipe.ts'

const overrides = restPositionals({ type: string, displayName: 'key=value', description: 'recipe overrides, e.g. binarize.min_margin=1 (type-checked; unknown keys are errors)' })

const backendOpt = option({ type: string, long: 'backend', defaultValue: () => process.env.ALIGN_BACKEND ?? 'auto', defaultValueIsSerializable: true, description: 'auto | tfjs-node-gpu | tfjs-node | wasm | cpu' })

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
  description: 'the main job on the shipped sample: binarize data/ultrafeedback -> SFT a tiny policy -> DPO -> inspect',
  args: { out: option({ type: string, long: 'out', defaultValue: () => 'checkpoints/demo', defaultValueIsSerializable: true, description: 'run directory' }), backend: backendOpt },
  handler: async (a) => (await import('./demo.ts')).demo(a.out, a.backend),
})

const infoCmd = command({
  name: 'info',
  description: 'which tfjs backend is active, and why each other one was skipped',
  args: { backend: backendOpt, json: flag({ long: 'json', description: 'machine-readable output' }) },
  handler: async (a) => {
    const { initBackend, describeBackend } = await import('./model/backend.ts')
    const tf = await import('@tensorflow/tfjs')
    const b = await initBackend(a.backend)
    const versions = { align: (await import('../package.json', { with: { type: 'json' } })).default.version, node: process.version, tfjs: tf.version.tfjs }
    if (a.json) process.stdout.write(JSON.stringify({ ...b, versions }, null, 2) + '\n')
    else process.stdout.write(`align ${versions.align} · node ${versions.node} · tfjs ${versions.tfjs}\n${describeBackend(b)}\n`)
  },
})

function trainCommand(stage: 'sft' | 'dpo') {
  return command({
    name: stage === 'dpo' ? 'train' : 'sft',
    description: stage === 'dpo' ? 'DPO on binarized pairs (recipe sections model, data, dpo, lora)' : 'supervised fine-tuning on the chosen conversations (recipe sections model, data, sft)',
    args: {
      recipe: option({ type: string, long: 'recipe', short: 'r', description: `recipe name (${listRecipes().join(', ')}) or path to a YAML file` }),
      backend: backendOpt,
      resume: option({ type: optional(string), long: 'resume', description: 'latest, or a checkpoint-<step> directory' }),
      dryRun: flag({ long: 'dry-run', description: 'resolve the recipe, tokenize, print step counts and the memory plan; train nothing' }),
      overrides,
    },
    handler: async (a) => {
      const { TRAIN_SCHEMA } = await import('./train/schema.ts')
      const { train } = await import('./train/loop.ts')
      const recipe = loadRecipe(a.recipe, TRAIN_SCHEMA, a.overrides)
      const r = await train({ stage, recipe, backend: a.backend, resume: a.resume, dryRun: a.dryRun })
      if (r.plan) process.stdout.write(r.plan + '\n')
    },
  })
}

const inspectCmd = command({
  name: 'inspect',
  description: 'summarize a checkpoint, adapter or run directory: config, parameters, tensors, LoRA, provenance, curves; compare two',
  args: {
    dir: positional({ type: string, displayName: 'dir', description: 'HF checkpoint, PEFT adapter, or run directory' }),
    other: positional({ type: optional(string), displayName: 'other-dir', description: 'second checkpoint: per-tensor relative change' }),
    json: flag({ long: 'json', description: 'everything as JSON on stdout' }),
    stats: flag({ long: 'stats', description: 'per-tensor mean/std/min/max and NaN/Inf counts (reads every tensor)' }),
    tensors: flag({ long: 'tensors', description: 'list every tensor' }),
    plot: option({ type: optional(string), long: 'plot', description: 'write the curves as an SVG file' }),
  },
  handler: async (a) => {
    const { inspect } = await import('./inspect/index.ts')
    process.stdout.write(inspect(a).text + '\n')
  },
})

export const app = subcommands({
  name: 'align',
  description: 'DPO fine-tuning orchestrator: binarize UltraFeedback, train a Mistral-like policy (Zephyr recipes), inspect the result',
  cmds: { binarize: binarizeCmd, inspect: inspectCmd, sft: trainCommand('sft'), train: trainCommand('dpo'), info: infoCmd, demo: demoCmd },
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
