#!/usr/bin/env node
/**
 * The `align` command line (cmd-ts): it only wires flags to the functions that do the work (binarize/,
 * train/, inspect/, commands/), each loaded when its subcommand runs. AlignErrors print as one line
 * `align: error: …` with exit status 1.
 */
import { binary, command, flag, multioption, number, oneOf, option, optional, positional, restPositionals, runSafely, string, subcommands, array } from 'cmd-ts'
import { AlignError, explainAbort } from './errors.ts'
import { applyOverride, listRecipes, loadRecipe, nearest } from './recipe.ts'

const overrides = restPositionals({ type: string, displayName: 'key=value', description: 'recipe overrides, e.g. binarize.min_margin=1 (type-checked; unknown keys are errors)' })

const workersOpt = option({ type: string, long: 'workers', defaultValue: () => process.env.ALIGN_WORKERS ?? 'auto', defaultValueIsSerializable: true, description: 'data-parallel workers: N, or auto (the cores on CPU backends); numbers are the same for any N' })
const workersOf = (w: string): number | 'auto' => (w === 'auto' ? 'auto' : Number(w))

const backendOpt = option({ type: string, long: 'backend', defaultValue: () => process.env.ALIGN_BACKEND ?? 'auto', defaultValueIsSerializable: true, description: 'auto | tfjs-node-gpu | tfjs-node | webgpu | wasm | cpu' })

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
  args: { out: option({ type: string, long: 'out', defaultValue: () => 'checkpoints/demo', defaultValueIsSerializable: true, description: 'run directory' }), backend: backendOpt, workers: workersOpt },
  handler: async (a) => (await import('./commands/demo.ts')).demo(a.out, a.backend, workersOf(a.workers)),
})

const infoCmd = command({
  name: 'info',
  description: 'which tfjs backend is active, and why each other one was skipped',
  args: { backend: backendOpt, workers: workersOpt, json: flag({ long: 'json', description: 'machine-readable output' }) },
  handler: async (a) => {
    const { initBackend, describeBackend } = await import('./model/backend.ts')
    const { workerCount } = await import('./train/workers.ts')
    const tf = await import('@tensorflow/tfjs')
    const b = await initBackend(a.backend)
    const workers = workerCount(workersOf(a.workers), b)
    const versions = { align: VERSION, node: process.version, tfjs: tf.version.tfjs }
    if (a.json) process.stdout.write(JSON.stringify({ ...b, workers, versions }, null, 2) + '\n')
    else process.stdout.write(`align ${versions.align} · node ${versions.node} · tfjs ${versions.tfjs}\n${describeBackend(b)}\n  workers: ${workers.n} (${workers.why}); each holds a replica of the model and its own backend\n`)
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
      workers: workersOpt,
      dryRun: flag({ long: 'dry-run', description: 'resolve the recipe, tokenize, print step counts and the memory plan; train nothing' }),
      json: flag({ long: 'json', description: 'print a JSON summary of the run on stdout at the end' }),
      overrides,
    },
    handler: async (a) => {
      const { TRAIN_SCHEMA } = await import('./train/schema.ts')
      const { train } = await import('./train/loop.ts')
      const recipe = loadRecipe(a.recipe, TRAIN_SCHEMA, a.overrides)
      const r = await train({ stage, recipe, backend: a.backend, resume: a.resume, dryRun: a.dryRun, workers: workersOf(a.workers) })
      if (r.plan && !a.json) process.stdout.write(r.plan + '\n')
      if (a.json) {
        const last = (k: string) => [...r.logHistory].reverse().find((x) => x[k] !== undefined)?.[k]
        const metrics = Object.fromEntries(['train_loss', 'eval_loss', 'eval_rewards/accuracies', 'eval_rewards/margins'].map((k) => [k, last(k)]).filter(([, v]) => v !== undefined))
        process.stdout.write(JSON.stringify({ stage, run_dir: r.runDir, final_dir: r.finalDir ?? null, interrupted: r.interrupted ?? false, steps: last('step') ?? 0, backend: r.backend.active, metrics, data: r.dataStats, plan: r.plan ?? null }) + '\n')
      }
      if (r.interrupted) process.exitCode = r.signal === 'SIGTERM' ? 143 : 130
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
    plot: option({ type: optional(string), long: 'plot', description: 'write the curves to an .svg or .png file (with other-dir a run too: both overlaid)' }),
    smooth: option({ type: optional(number), long: 'smooth', description: 'EMA smoothing of the training curves in the plot, in [0, 1) (0.6 as TensorBoard)' }),
  },
  handler: async (a) => {
    const { inspect } = await import('./inspect/index.ts')
    process.stdout.write((await inspect(a)).text + '\n')
  },
})

const evalCmd = command({
  name: 'eval',
  description: 'DPO metrics (TRL names) of a policy against a reference on a pairs file; per-pair log-probs and rewards',
  args: {
    policy: option({ type: string, long: 'policy', description: 'policy checkpoint or LoRA adapter directory' }),
    reference: option({ type: optional(string), long: 'reference', description: 'reference checkpoint (default for an adapter: its base with adapters disabled)' }),
    pairs: option({ type: string, long: 'pairs', description: 'binarize output file (parquet/jsonl), text pairs, or pre-tokenized prompt_ids/chosen_ids/rejected_ids' }),
    beta: option({ type: number, long: 'beta', defaultValue: () => 0.1, defaultValueIsSerializable: true, description: 'DPO beta' }),
    loss: option({ type: oneOf(['sigmoid', 'ipo', 'hinge'] as const), long: 'loss', defaultValue: () => 'sigmoid' as const, defaultValueIsSerializable: true, description: 'loss type' }),
    labelSmoothing: option({ type: number, long: 'label-smoothing', defaultValue: () => 0, defaultValueIsSerializable: true, description: 'conservative DPO epsilon' }),
    maxLength: option({ type: number, long: 'max-length', defaultValue: () => 1024, defaultValueIsSerializable: true, description: 'max prompt + completion tokens' }),
    maxPromptLength: option({ type: number, long: 'max-prompt-length', defaultValue: () => 512, defaultValueIsSerializable: true, description: 'max prompt tokens' }),
    batchSize: option({ type: number, long: 'batch-size', defaultValue: () => 8, defaultValueIsSerializable: true, description: 'pairs per forward pass' }),
    out: option({ type: optional(string), long: 'out', description: 'per-pair JSONL output' }),
    json: flag({ long: 'json', description: 'metrics as JSON' }),
    workers: workersOpt,
    backend: backendOpt,
  },
  handler: async (a) => {
    const { evaluatePairs } = await import('./commands/eval.ts')
    const { metrics } = await evaluatePairs({ ...a, quiet: false, workers: workersOf(a.workers) })
    process.stdout.write(a.json ? JSON.stringify(metrics, null, 2) + '\n' : Object.entries(metrics).map(([k, v]) => `${k.padEnd(22)} ${Number.isInteger(v) ? v : v.toFixed(6)}`).join('\n') + '\n')
  },
})

const sampleCmd = command({
  name: 'sample',
  description: 'generate from a checkpoint (or adapter) with the chat template and a KV cache; streams tokens',
  args: {
    dir: positional({ type: string, displayName: 'dir', description: 'checkpoint or LoRA adapter directory' }),
    prompt: option({ type: string, long: 'prompt', short: 'p', description: 'the user message' }),
    maxNewTokens: option({ type: number, long: 'max-new-tokens', defaultValue: () => 128, defaultValueIsSerializable: true, description: 'tokens to generate' }),
    temperature: option({ type: number, long: 'temperature', defaultValue: () => 0, defaultValueIsSerializable: true, description: '0 = greedy' }),
    topP: option({ type: number, long: 'top-p', defaultValue: () => 1, defaultValueIsSerializable: true, description: 'nucleus sampling mass' }),
    seed: option({ type: number, long: 'seed', defaultValue: () => 0, defaultValueIsSerializable: true, description: 'sampling seed' }),
    raw: flag({ long: 'raw', description: 'no chat template: continue the prompt text as is' }),
    system: option({ type: optional(string), long: 'system', description: 'a system message first (--system "" for the empty one the Zephyr recipes train with)' }),
    backend: backendOpt,
  },
  handler: async (a) => void (await (await import('./commands/sample.ts')).sample(a)),
})

const benchCmd = subcommands({
  name: 'bench',
  description: 'speed measurements',
  cmds: {
    dpo: command({
      name: 'dpo',
      description: 'one DPO optimizer step (forward + backward + AdamW) on pre-tokenized pairs; prints pairs/s, tokens/s, step_ms',
      args: {
        model: option({ type: string, long: 'model', description: 'config.json path or preset:<name> (random weights)' }),
        pairs: option({ type: string, long: 'pairs', description: 'JSONL with prompt_ids, chosen_ids, rejected_ids (optional reference_*_logp)' }),
        batchPairs: option({ type: number, long: 'batch-pairs', defaultValue: () => 4, defaultValueIsSerializable: true, description: 'pairs per step' }),
        steps: option({ type: number, long: 'steps', defaultValue: () => 5, defaultValueIsSerializable: true, description: 'timed steps' }),
        warmup: option({ type: number, long: 'warmup', defaultValue: () => 1, defaultValueIsSerializable: true, description: 'untimed steps first' }),
        layout: option({ type: oneOf(['auto', 'packed', 'concatenated'] as const), long: 'layout', defaultValue: () => 'auto' as const, defaultValueIsSerializable: true, description: "auto: whichever needs fewer FLOPs per batch, as align train does; packed: the prompt run once per pair; concatenated: TRL's 2n rows" }),
        profile: flag({ long: 'profile', description: 'one more, profiled step: matMul GFLOP/s inside the step against the best plain matMul' }),
        workers: workersOpt,
        microBatches: option({ type: optional(number), long: 'micro-batches', description: "the micro-batches a step's pairs are split into (gradient accumulation), each taken by whichever worker is free (default: one per worker)" }),
        paired: flag({ long: 'paired', description: 'with workers: each step also run on one worker with the same micro-batches (weights checked bit-identical) and with its pairs as one micro-batch, timed apart: workers_scaling from steps next to each other in time' }),
        compareHandoff: flag({ long: 'compare-handoff', description: "with workers: each step also run by the same workers with the LM head's hand-off off (no replica computes head blocks for another), timed apart: handoff_speedup from steps next to each other in time" }),
        startAfter: option({ type: optional(string), long: 'start-after', description: 'after the warm-up, write <file>.ready.<pid> and wait for <file> to exist before the timed steps (a start barrier for processes timed side by side)' }),
        json: flag({ long: 'json', description: 'one JSON object' }),
        backend: backendOpt,
      },
      handler: async (a) => {
        const { benchDpo } = await import('./commands/bench.ts')
        const r = await benchDpo({ ...a, workers: workersOf(a.workers) })
        process.stdout.write(a.json ? JSON.stringify(r) + '\n' : Object.entries(r).map(([k, v]) => `${k.padEnd(18)} ${v}`).join('\n') + '\n')
      },
    }),
  },
})

const exportCmd = command({
  name: 'export',
  description: "write the recipe for alignment-handbook on GPUs: handbook config(s), accelerate DeepSpeed ZeRO-3 config, launch.sh, the pairs in the Hub layout",
  args: {
    recipe: option({ type: string, long: 'recipe', short: 'r', description: `recipe name (${listRecipes().join(', ')}) or path to a YAML file` }),
    to: option({ type: oneOf(['handbook'] as const), long: 'to', defaultValue: () => 'handbook' as const, defaultValueIsSerializable: true, description: 'target engine' }),
    out: option({ type: string, long: 'out', short: 'o', description: 'directory to write' }),
    gpus: option({ type: number, long: 'gpus', defaultValue: () => 8, defaultValueIsSerializable: true, description: 'accelerate num_processes' }),
    overrides,
  },
  handler: async (a) => {
    const { TRAIN_SCHEMA } = await import('./train/schema.ts')
    const { exportHandbook } = await import('./commands/export.ts')
    const { resolveRecipePath } = await import('./recipe.ts')
    const { readFileSync } = await import('node:fs')
    const YAML = (await import('yaml')).default
    const recipe = loadRecipe(a.recipe, TRAIN_SCHEMA, a.overrides)
    const raw = YAML.parse(readFileSync(resolveRecipePath(a.recipe), 'utf8')) as Record<string, unknown> | null
    for (const f of exportHandbook(recipe, { out: a.out, gpus: a.gpus, hasSft: raw !== null && 'sft' in raw })) process.stdout.write(f + '\n')
  },
})

const VERSION = (await import('../package.json', { with: { type: 'json' } })).default.version

const COMMANDS = { binarize: binarizeCmd, inspect: inspectCmd, eval: evalCmd, sample: sampleCmd, sft: trainCommand('sft'), train: trainCommand('dpo'), info: infoCmd, bench: benchCmd, demo: demoCmd, export: exportCmd }

export const app = subcommands({
  name: 'align',
  description: 'DPO fine-tuning orchestrator: binarize UltraFeedback, train a Mistral-like policy (Zephyr recipes), inspect the result',
  version: VERSION,
  cmds: COMMANDS,
})

const SYSTEM_ERRORS: Record<string, string> = {
  ENOSPC: 'no space left on the device', EACCES: 'permission denied', EPERM: 'operation not permitted', EROFS: 'read-only file system',
  ENOTDIR: 'a part of the path is a file, not a directory', EISDIR: 'is a directory', ENOENT: 'no such file or directory', EEXIST: 'already exists', EMFILE: 'too many open files',
}

/** Every failure as one line: AlignErrors as they are, file-system errors naming the path, anything else as an internal error. */
export function errorLine(e: unknown): string {
  if (e instanceof AlignError) return `align: error: ${e.message}`
  const err = e as NodeJS.ErrnoException & { dest?: string }
  if (err?.code && SYSTEM_ERRORS[err.code]) return `align: error: ${err.syscall ?? 'file operation'} ${err.path ?? ''}${err.dest ? ` -> ${err.dest}` : ''}: ${SYSTEM_ERRORS[err.code]} (${err.code}); free space or fix the path and permissions, then run again`
  return `align: internal error: ${String(err?.message ?? e).split('\n')[0]!.slice(0, 300)} (ALIGN_DEBUG=1 prints the stack)`
}

/** "did you mean" for a mistyped subcommand or flag (cmd-ts reports both without a suggestion). */
function suggestion(args: string[]): string {
  const name = args[0]
  if (name === undefined || name.startsWith('-')) return ''
  if (!(name in COMMANDS)) {
    const near = nearest(name, Object.keys(COMMANDS))
    return near ? `did you mean \`align ${near}\`?` : `commands: ${Object.keys(COMMANDS).join(', ')}`
  }
  const cmd = COMMANDS[name as keyof typeof COMMANDS] as { helpTopics?: () => { usage: string }[] }
  const known = (cmd.helpTopics?.() ?? []).flatMap((t) => t.usage.split(/[ ,]+/)).filter((w) => w.startsWith('--'))
  for (const a of args.slice(1)) {
    const flagName = a.split('=')[0]!
    if (flagName.startsWith('--') && !known.includes(flagName)) {
      const near = nearest(flagName, known)
      if (near) return `did you mean ${near} (not ${flagName})?`
    }
  }
  return ''
}

export async function main(argv: string[]): Promise<void> {
  const args = argv.slice(2)
  if (args[0] === '--version' || args[0] === '-V') {
    process.stdout.write(`align ${VERSION}\n`)
    return
  }
  try {
    const result = await runSafely(binary(app), argv)
    if (result._tag === 'error') {
      const exit = result.error
      if (exit.config.exitCode === 0) return exit.run() // --help
      const hint = suggestion(args)
      process.stderr.write(exit.config.message + (hint ? `\nalign: ${hint}\n` : '\n'))
      process.exit(2) // a usage error, as POSIX utilities report it
    }
  } catch (thrown) {
    if (process.env.ALIGN_DEBUG) console.error(thrown)
    const e = explainAbort(thrown)
    process.stderr.write(errorLine(e) + '\n')
    process.exit(e instanceof AlignError || (e as NodeJS.ErrnoException)?.code ? 1 : 70)
  }
}

await main(process.argv)
