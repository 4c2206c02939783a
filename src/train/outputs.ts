/**
 * What a finished run leaves at output_dir beside its weights, as the HF Trainer and alignment-handbook do:
 *   train_results.json, eval_results.json, all_results.json   (`Trainer.save_metrics` names and keys)
 *   README.md                                                  a model card: base model, data, recipe, metrics
 *   align_provenance.json                                      versions, backend, recipe, data sha256s, identities
 */
import { execFileSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import * as tf from '@tensorflow/tfjs'
import { PACKAGE_DIR } from '../paths.ts'
import { readJson } from '../files.ts'
import { modelIdentity } from '../preference/reference.ts'
import type { Row } from './log.ts'
import type { Run } from './setup.ts'

const json = (dir: string, name: string, v: unknown) => writeFileSync(join(dir, name), JSON.stringify(v, null, 2) + '\n')
const lastRow = (h: Row[], key: string) => [...h].reverse().find((r) => r[key] !== undefined)

/** The git commit of the working directory, when it is a repository. */
function gitCommit(): string | null {
  try {
    return execFileSync('git', ['rev-parse', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
  } catch {
    return null
  }
}

export function writeRunOutputs(run: Run, history: Row[]): void {
  const dir = run.runDir
  const summary = lastRow(history, 'train_loss') ?? {}
  const ev = lastRow(history, 'eval_loss') ?? {}
  const train = { epoch: summary.epoch, train_loss: summary.train_loss, train_runtime: summary.train_runtime, train_samples: run.data.train.stats.pairs, train_samples_per_second: summary.train_samples_per_second, train_steps_per_second: summary.train_steps_per_second }
  const evalResults = Object.keys(ev).length ? { ...Object.fromEntries(Object.entries(ev).filter(([k]) => k.startsWith('eval_'))), epoch: ev.epoch, eval_samples: run.data.eval.stats.pairs } : {}
  json(dir, 'train_results.json', train)
  json(dir, 'eval_results.json', evalResults)
  json(dir, 'all_results.json', { ...train, ...evalResults })
  const v = run.o.recipe.values
  const provenance = {
    align: readJson(join(PACKAGE_DIR, 'package.json')).version, node: process.version, tfjs: tf.version.tfjs, backend: run.backend.active,
    git_commit: gitCommit(), created: new Date().toISOString(), stage: run.o.stage, seed: run.args.seed,
    recipe: { path: run.o.recipe.path, overrides: run.o.recipe.overrides, values: v },
    policy: { spec: v.model.policy, identity: modelIdentity(v.model.policy) },
    reference: run.o.stage === 'dpo' ? { spec: v.model.reference ?? v.model.policy, mode: v.dpo.reference_mode } : null,
    tokenizer: { dir: run.tokenizerDir, chat_template_source: run.tok.templateSource },
    data: Object.fromEntries(Object.entries(run.data).map(([k, s]) => [k, { file: s.file, sha256: s.sha256, ...s.stats }])),
  }
  json(dir, 'align_provenance.json', provenance)
  writeFileSync(join(dir, 'README.md'), modelCard(run, train, evalResults))
}

function modelCard(run: Run, train: Record<string, unknown>, evalResults: Record<string, unknown>): string {
  const v = run.o.recipe.values
  const a = run.args as Record<string, unknown>
  const stage = run.o.stage === 'dpo' ? 'DPO' : 'SFT'
  const keys = ['learning_rate', 'lr_scheduler_type', 'warmup_ratio', 'num_train_epochs', 'max_steps', 'per_device_train_batch_size', 'gradient_accumulation_steps', 'optim', 'weight_decay', 'max_grad_norm', 'max_length', 'seed', ...(run.o.stage === 'dpo' ? ['beta', 'loss_type', 'label_smoothing', 'max_prompt_length', 'reference_mode'] : [])]
  const fmt = (x: unknown) => (typeof x === 'number' ? String(Math.round(x * 1e6) / 1e6) : String(x))
  const metrics = Object.entries({ ...train, ...evalResults }).filter(([, x]) => x !== undefined)
  return [
    '---',
    `base_model: ${JSON.stringify(v.model.policy)}`,
    `library_name: transformers`,
    `tags: [align, ${run.o.stage}, ${v.lora.enabled ? 'peft, lora, ' : ''}trl-compatible]`,
    `datasets: [${JSON.stringify(run.data.train.file)}]`,
    '---',
    '',
    `# ${run.runDir.split('/').pop()}`,
    '',
    `${stage}${v.lora.enabled ? ' (LoRA adapters, PEFT layout)' : ''} of \`${v.model.policy}\` on \`${run.data.train.file}\` (${run.data.train.stats.pairs} pairs; eval ${run.data.eval.stats.pairs}), trained with align's recipe \`${run.o.recipe.name}\`${run.o.recipe.overrides.length ? ` + \`${run.o.recipe.overrides.join(' ')}\`` : ''} on the ${run.backend.active} backend.`,
    '',
    '## Training hyperparameters',
    '',
    '| key | value |',
    '|---|---|',
    ...keys.map((k) => `| ${k} | ${fmt(a[k])} |`),
    ...(v.lora.enabled ? [`| lora r / alpha / dropout | ${v.lora.r} / ${v.lora.alpha} / ${v.lora.dropout} |`, `| lora target_modules | ${v.lora.target_modules.join(', ')} |`] : []),
    '',
    '## Results',
    '',
    '| metric | value |',
    '|---|---|',
    ...metrics.map(([k, x]) => `| ${k} | ${fmt(x)} |`),
    '',
    '## How it was produced',
    '',
    '```sh',
    `align ${run.o.stage === 'dpo' ? 'train' : 'sft'} --recipe ${run.o.recipe.path}${run.o.recipe.overrides.length ? ' ' + run.o.recipe.overrides.join(' ') : ''}`,
    '```',
    '',
    'Versions, data sha256s and identities: `align_provenance.json`. Per-step metrics: `metrics.jsonl`, `trainer_state.json`, TensorBoard `runs/`.',
    '',
  ].join('\n')
}
