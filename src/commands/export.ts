/**
 * `align export --to handbook`: the same run for the established multi-GPU engine. Writes, into one directory,
 *   config_dpo.yaml (and config_sft.yaml when the recipe has an sft section)  the handbook's DPOConfig/SFTConfig,
 *       ModelConfig and ScriptArguments keys with the recipe's values (only keys its TrlParser accepts)
 *   zero3.yaml         accelerate's DeepSpeed ZeRO-3 config, the fields of the handbook's
 *                      recipes/accelerate_configs/zero3.yaml
 *   launch.sh          the `accelerate launch … scripts/{sft,dpo}.py --config …` commands
 *   datasets/<name>/   the recipe's pairs in the Hub's file layout, with the dataset card declaring its splits, so
 *                      `datasets.load_dataset(<that dir>)` finds train_prefs / test_prefs
 * `align inspect <output_dir>` reads what that run writes (trainer_state.json in HF's format).
 */
import { copyFileSync, existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs'
import { basename, join, resolve } from 'node:path'
import YAML from 'yaml'
import { AlignError } from '../errors.ts'
import type { LoadedRecipe } from '../recipe.ts'
import { splitFiles } from '../preference/datasets.ts'
import type { DpoArgs, TRAIN_SCHEMA, TrainerArgs } from '../train/schema.ts'

const SCHEDULE: Record<string, string> = { linear: 'linear', cosine: 'cosine', constant: 'constant_with_warmup' }

/**
 * Gradient accumulation on `gpus` devices that keeps the recipe's global batch (per-device batch × accumulation on
 * one device), and a note when it cannot be kept exactly.
 */
export function accumulationFor(a: TrainerArgs, gpus: number): { ga: number; note?: string } {
  const global = a.per_device_train_batch_size * a.gradient_accumulation_steps
  const ga = global / (gpus * a.per_device_train_batch_size)
  if (Number.isInteger(ga) && ga >= 1) return { ga }
  const near = Math.max(1, Math.round(ga))
  return { ga: near, note: `global batch ${global} cannot be kept on ${gpus} GPUs at per-device ${a.per_device_train_batch_size}: it becomes ${near * gpus * a.per_device_train_batch_size}` }
}

/** TrainingArguments keys shared by both stages, from a trainer section. */
function trainerKeys(a: TrainerArgs, gpus: number): Record<string, unknown> {
  return {
    bf16: true,
    do_eval: a.do_eval,
    eval_strategy: a.do_eval ? 'steps' : 'no',
    ...(a.do_eval && a.eval_steps > 0 ? { eval_steps: a.eval_steps } : {}),
    gradient_accumulation_steps: accumulationFor(a, gpus).ga,
    gradient_checkpointing: true,
    gradient_checkpointing_kwargs: { use_reentrant: false },
    learning_rate: a.learning_rate,
    log_level: 'info',
    logging_steps: a.logging_steps,
    lr_scheduler_type: SCHEDULE[a.lr_scheduler_type],
    max_steps: a.max_steps,
    num_train_epochs: a.num_train_epochs,
    optim: a.optim === 'adamw' ? 'adamw_torch' : 'rmsprop',
    adam_beta1: a.adam_beta1,
    adam_beta2: a.adam_beta2,
    adam_epsilon: a.adam_epsilon,
    weight_decay: a.weight_decay,
    max_grad_norm: a.max_grad_norm,
    group_by_length: a.group_by_length,
    output_dir: a.output_dir,
    per_device_train_batch_size: a.per_device_train_batch_size,
    per_device_eval_batch_size: a.per_device_eval_batch_size,
    report_to: ['tensorboard'],
    save_strategy: a.save_steps > 0 ? 'steps' : 'no',
    ...(a.save_steps > 0 ? { save_steps: a.save_steps } : {}),
    save_total_limit: a.save_total_limit,
    seed: a.seed,
    warmup_ratio: a.warmup_ratio,
  }
}

/** The recipe's pairs as a Hub-layout dataset directory; returns its path and split names. */
function exportDataset(r: LoadedRecipe<typeof TRAIN_SCHEMA>, out: string): { dir: string; train: string; test: string } {
  const d = r.values.data
  if (d.datasets.length) throw new AlignError(`align export: the recipe reads a mixture of datasets by id (data.datasets); the handbook reads those ids itself: write dataset_mixture by hand, or point data.pairs at one directory`)
  if (!existsSync(d.pairs) || !statSync(d.pairs).isDirectory()) throw new AlignError(`data.pairs ${d.pairs}: export needs a binarize output directory (train and eval splits); run align binarize --out ${d.pairs} first`)
  const dir = join(out, 'datasets', basename(resolve(d.pairs)))
  mkdirSync(join(dir, 'data'), { recursive: true })
  for (const split of [d.train_split, d.eval_split]) {
    const files = splitFiles(d.pairs, split)
    if (!files.every((f) => f.endsWith('.parquet'))) throw new AlignError(`${d.pairs}: split ${split} is JSONL; export copies parquet (binarize with --format parquet or both)`)
    files.forEach((f, i) => copyFileSync(f, join(dir, 'data', `${split}-${String(i).padStart(5, '0')}-of-${String(files.length).padStart(5, '0')}.parquet`)))
  }
  const card = { configs: [{ config_name: 'default', data_files: [d.train_split, d.eval_split].map((s) => ({ split: s, path: `data/${s}-*` })) }] }
  writeFileSync(join(dir, 'README.md'), `---\n${YAML.stringify(card)}---\n\nPreference pairs exported by align from ${d.pairs} (${r.path}).\n`)
  return { dir: resolve(dir), train: d.train_split, test: d.eval_split }
}

export function exportHandbook(r: LoadedRecipe<typeof TRAIN_SCHEMA>, o: { out: string; gpus: number; hasSft: boolean }): string[] {
  const v = r.values
  if (v.model.policy.startsWith('preset:')) throw new AlignError(`model.policy ${v.model.policy} is a random-init preset: export needs the SFT checkpoint's Hub id or directory (e.g. model.policy=alignment-handbook/zephyr-7b-sft-full)`)
  mkdirSync(o.out, { recursive: true })
  const data = exportDataset(r, o.out)
  const model = {
    model_name_or_path: v.model.policy,
    torch_dtype: 'bfloat16',
    ...(v.lora.enabled ? { use_peft: true, lora_r: v.lora.r, lora_alpha: v.lora.alpha, lora_dropout: v.lora.dropout, lora_target_modules: v.lora.target_modules } : {}),
  }
  const dataKeys = { dataset_name: data.dir, dataset_config: 'default', dataset_train_split: data.train, dataset_test_split: data.test, ...(v.model.chat_template ? { chat_template: v.model.chat_template } : {}) }
  const header = (stage: 'sft' | 'dpo') => {
    const a = stage === 'dpo' ? v.dpo : v.sft
    const acc = accumulationFor(a, o.gpus)
    const lines = [
      `# ${stage} config for alignment-handbook's scripts/${stage}.py, written by \`align export\` from ${r.path}${r.overrides.length ? ` + ${r.overrides.join(' ')}` : ''}.`,
      `# Every value is the align recipe's; bf16, gradient checkpointing and ZeRO-3 are the engine's own choices.`,
      `# Global batch ${a.per_device_train_batch_size * a.gradient_accumulation_steps} kept on ${o.gpus} GPUs: gradient_accumulation_steps ${acc.ga}.${acc.note ? ` NOTE: ${acc.note}` : ''}`,
      ...(v.data.auto_insert_empty_system_msg ? ['# The recipe inserts an empty system turn before each prompt (auto_insert_empty_system_msg); this handbook version has no such key.'] : []),
    ]
    return lines.join('\n') + '\n'
  }
  const dpo = v.dpo as DpoArgs
  const written: string[] = []
  const write = (name: string, text: string) => {
    writeFileSync(join(o.out, name), text)
    written.push(join(o.out, name))
  }
  const dpoConfig = { ...model, ...dataKeys, ...trainerKeys(dpo, o.gpus), beta: dpo.beta, loss_type: dpo.loss_type, label_smoothing: dpo.label_smoothing, max_length: dpo.max_length, max_prompt_length: dpo.max_prompt_length, precompute_ref_log_probs: dpo.reference_mode === 'precompute' }
  write('config_dpo.yaml', header('dpo') + YAML.stringify(dpoConfig))
  if (o.hasSft) write('config_sft.yaml', header('sft') + YAML.stringify({ ...model, ...dataKeys, ...trainerKeys(v.sft, o.gpus), max_length: v.sft.max_length }))
  write('zero3.yaml', YAML.stringify({
    compute_environment: 'LOCAL_MACHINE', debug: false,
    deepspeed_config: { deepspeed_multinode_launcher: 'standard', offload_optimizer_device: 'none', offload_param_device: 'none', zero3_init_flag: true, zero3_save_16bit_model: true, zero_stage: 3 },
    distributed_type: 'DEEPSPEED', downcast_bf16: 'no', machine_rank: 0, main_training_function: 'main', mixed_precision: 'bf16', num_machines: 1, num_processes: o.gpus,
    rdzv_backend: 'static', same_network: true, tpu_env: [], tpu_use_cluster: false, tpu_use_sudo: false, use_cpu: false,
  }))
  const launch = (stage: string) => `ACCELERATE_LOG_LEVEL=info accelerate launch --config_file "$HERE/zero3.yaml" scripts/${stage}.py --config "$HERE/config_${stage}.yaml"`
  write('launch.sh', [
    '#!/usr/bin/env bash',
    `# ${r.path} on ${o.gpus} GPUs with alignment-handbook (scripts/sft.py, scripts/dpo.py; the dataset_mixture-era layout, e.g. commit 925acdf).`,
    '# Usage: bash launch.sh /path/to/alignment-handbook   (its environment installed; see its README)',
    '# Then: align inspect <output_dir> reads the run (trainer_state.json, checkpoints, weights).',
    'set -euo pipefail',
    'HERE=$(cd "$(dirname "$0")" && pwd)',
    'cd "${1:?path to an alignment-handbook clone}"',
    ...(o.hasSft ? [launch('sft')] : []),
    launch('dpo'),
    '',
  ].join('\n'))
  return written
}
