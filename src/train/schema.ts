/**
 * The training sections of a recipe. Field names are HF TrainingArguments / TRL DPOConfig names, so a TRL user
 * reads them without a table: learning_rate, lr_scheduler_type, warmup_ratio, num_train_epochs,
 * per_device_train_batch_size, gradient_accumulation_steps, optim, adam_*, max_grad_norm, beta, loss_type, …
 * Defaults are TrainingArguments' / DPOConfig's; recipes override them with commented, sourced values.
 * The TypeScript types (`TrainerArgs`, `DpoArgs`, …) are derived from these declarations: each default and each
 * type is written once, here.
 */
import { field, type Values } from '../recipe.ts'
import { LORA_TARGETS } from '../model/lora.ts'
import { LOSS_TYPES } from '../preference/objective.ts'
import { OPTIMIZERS, SCHEDULES } from './optim.ts'

export const MODEL_SECTION = {
  policy: field.string('preset:tiny', 'HF checkpoint directory of the starting policy, or preset:<name> for random init (tiny, tiny-bench, mistral-7b)'),
  reference: field.optionalString('HF directory of the reference model (default: the starting policy)'),
  tokenizer: field.optionalString('directory with tokenizer.json (default: the policy directory, or data/tokenizer for presets)'),
  init_seed: field.integer(0, "seed of a preset policy's random init"),
  save_dtype: field.enum(['float32', 'bfloat16', 'float16'] as const, 'float32', 'dtype of saved weights (float32 keeps resume exact; bfloat16 halves the size)'),
  chat_template: field.optionalString("a chat template replacing the tokenizer's (the handbook's `chat_template`); saved into the output's tokenizer_config.json"),
}

export const DATA_SECTION = {
  pairs: field.string('data/binarized', 'binarize output or Hub-layout dataset directory (train_prefs / test_prefs), or one pairs file'),
  eval_pairs: field.optionalString('eval pairs file or directory when `pairs` is a single file (else eval is off)'),
  datasets: { type: { kind: 'datasets' as const }, default: [], doc: "a mixture of datasets by id (the handbook's dataset_mixture): [{id, split, weight}]; replaces pairs when set" },
  test_split_size: field.number(0, 'rows (>= 1) or fraction (< 1) of the pooled mixture held out for eval; 0 = eval from the test_* splits'),
  mixture_seed: field.integer(0, "seed of the mixture's shuffles (the handbook's dataset_mixture.seed)"),
  mixture_style: field.enum(['mixture', 'mixer'] as const, 'mixture', "mixture: weights subsample shuffled rows (dataset_mixture); mixer: train fractions take the first rows, test splits whole (dataset_mixer)"),
  datasets_dir: field.string('data', 'where dataset ids resolve: <datasets_dir>/<id>/ in the Hub layout'),
  train_split: field.string('train_prefs', 'split name for training'),
  eval_split: field.string('test_prefs', 'split name for evaluation'),
  max_train_pairs: field.integer(0, 'use only the first N training pairs (0 = all)'),
  max_eval_pairs: field.integer(0, 'use only the first N eval pairs (0 = all)'),
  auto_insert_empty_system_msg: field.boolean(false, "an empty system turn before prompts without one, when the template has a system role (the handbook's Zephyr data processing)"),
}

function trainerFields(d: { lr: number; schedule: (typeof SCHEDULES)[number]; maxLength: number; out: string }) {
  return {
    output_dir: field.string(d.out, 'run directory under checkpoints/ (or a path)'),
    overwrite_output_dir: field.boolean(false, 'replace a previous run in output_dir (without it a fresh run there is refused)'),
    learning_rate: field.number(d.lr, 'peak learning rate'),
    lr_scheduler_type: field.enum(SCHEDULES, d.schedule, 'schedule after warmup'),
    warmup_ratio: field.number(0.1, 'fraction of steps spent warming up linearly from 0', 0, 1),
    num_train_epochs: field.number(1, 'epochs over the training pairs'),
    max_steps: { type: { kind: 'integer' as const }, default: -1, doc: 'optimizer steps; overrides num_train_epochs when > 0' },
    per_device_train_batch_size: field.integer(8, 'pairs (DPO) or sequences (SFT) per micro-batch', 1),
    per_device_eval_batch_size: field.integer(8, 'pairs per eval batch', 1),
    gradient_accumulation_steps: field.integer(1, 'micro-batches per optimizer step (global batch = batch size x this)', 1),
    optim: field.enum(OPTIMIZERS, 'adamw', 'optimizer'),
    adam_beta1: field.fraction(0.9, 'AdamW beta1, in [0, 1) as torch requires'),
    adam_beta2: field.fraction(0.999, 'AdamW beta2, in [0, 1) as torch requires'),
    adam_epsilon: field.above(1e-8, 'AdamW / RMSprop epsilon (> 0)', 0),
    weight_decay: field.number(0, 'decoupled weight decay'),
    max_grad_norm: field.number(1, 'global gradient-norm clip (0 = off)'),
    seed: field.integer(42, 'data order seed'),
    group_by_length: field.boolean(false, 'HF group_by_length: micro-batches of similar-length pairs (less padding)'),
    max_length: field.integer(d.maxLength, 'max tokens of prompt + completion', 8),
    logging_steps: field.integer(10, 'log every N optimizer steps', 1),
    do_eval: field.boolean(true, 'evaluate on the eval pairs (every eval_steps and at the end)'),
    eval_steps: field.integer(100, 'evaluate every N steps (0 = only at the end)'),
    save_steps: field.integer(100, 'checkpoint every N steps (0 = only at the end)'),
    save_total_limit: field.integer(2, 'keep the last N checkpoint-<step> directories (0 = all)'),
  }
}

export const SFT_SECTION = trainerFields({ lr: 2e-5, schedule: 'cosine', maxLength: 2048, out: 'sft' })

export const DPO_SECTION = {
  ...trainerFields({ lr: 1e-6, schedule: 'linear', maxLength: 1024, out: 'dpo' }),
  beta: field.number(0.1, 'DPO temperature: strength of the implicit KL penalty to the reference'),
  loss_type: field.enum(LOSS_TYPES, 'sigmoid', 'sigmoid (DPO), ipo, hinge'),
  label_smoothing: field.number(0, 'conservative DPO epsilon (sigmoid only)', 0, 0.5),
  max_prompt_length: field.integer(512, 'prompt tokens kept (the end) when prompt + completion exceed max_length', 1),
  reference_mode: field.enum(['precompute', 'frozen'] as const, 'precompute', 'precompute reference log-probs once (cached on disk) or keep a frozen copy'),
}

export const LORA_SECTION = {
  enabled: field.boolean(false, 'train LoRA adapters instead of all weights'),
  r: field.integer(16, 'adapter rank', 1),
  alpha: field.number(16, 'scale = alpha / r'),
  dropout: field.number(0.05, 'dropout on the adapter input', 0, 1),
  target_modules: field.strings([...LORA_TARGETS], 'projections that get adapters'),
}

export const TRAIN_SCHEMA = { model: MODEL_SECTION, data: DATA_SECTION, sft: SFT_SECTION, dpo: DPO_SECTION, lora: LORA_SECTION }

export type DataArgs = Values<typeof DATA_SECTION>
export type TrainerArgs = Values<typeof SFT_SECTION>
export type DpoArgs = Values<typeof DPO_SECTION>
