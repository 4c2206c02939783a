/**
 * The training sections of a recipe. Field names are HF TrainingArguments / TRL DPOConfig names, so a TRL user
 * reads them without a table: learning_rate, lr_scheduler_type, warmup_ratio, num_train_epochs,
 * per_device_train_batch_size, gradient_accumulation_steps, optim, adam_*, max_grad_norm, beta, loss_type, …
 * Defaults are TrainingArguments' / DPOConfig's; recipes override them with commented, sourced values.
 */
import type { Field, Section } from '../recipe.ts'
import { LOSS_TYPES } from './dpo.ts'
import { OPTIMIZERS, SCHEDULES } from './optim.ts'

const num = (d: number, doc: string, min = 0): Field => ({ type: { kind: 'number', min }, default: d, doc })
const int = (d: number, doc: string, min = 0): Field => ({ type: { kind: 'integer', min }, default: d, doc })

export const MODEL_SECTION: Section = {
  policy: { type: { kind: 'string' }, default: 'preset:tiny', doc: 'HF checkpoint directory of the starting policy, or preset:<name> for random init (tiny, tiny-bench, mistral-7b)' },
  reference: { type: { kind: 'string' }, default: null, nullable: true, doc: 'HF directory of the reference model (default: the starting policy)' },
  tokenizer: { type: { kind: 'string' }, default: null, nullable: true, doc: 'directory with tokenizer.json (default: the policy directory, or data/tokenizer for presets)' },
  init_seed: int(0, 'seed of a preset policy\'s random init'),
  save_dtype: { type: { kind: 'enum', choices: ['float32', 'bfloat16', 'float16'] }, default: 'float32', doc: 'dtype of saved weights (float32 keeps resume exact; bfloat16 halves the size)' },
}

export const DATA_SECTION: Section = {
  pairs: { type: { kind: 'string' }, default: 'data/binarized', doc: 'binarize output directory (train_prefs / test_prefs) or a pairs file' },
  train_split: { type: { kind: 'string' }, default: 'train_prefs', doc: 'split name for training' },
  eval_split: { type: { kind: 'string' }, default: 'test_prefs', doc: 'split name for evaluation' },
  max_train_pairs: int(0, 'use only the first N training pairs (0 = all)'),
  max_eval_pairs: int(0, 'use only the first N eval pairs (0 = all)'),
}

function trainerFields(d: { lr: number; epochs: number; schedule: string; warmup: number; batch: number; ga: number; optim: string; maxLength: number; out: string }): Section {
  return {
    output_dir: { type: { kind: 'string' }, default: d.out, doc: 'run directory under checkpoints/ (or a path)' },
    learning_rate: num(d.lr, 'peak learning rate'),
    lr_scheduler_type: { type: { kind: 'enum', choices: SCHEDULES }, default: d.schedule, doc: 'schedule after warmup' },
    warmup_ratio: num(d.warmup, 'fraction of steps spent warming up linearly from 0'),
    num_train_epochs: num(d.epochs, 'epochs over the training pairs'),
    max_steps: { type: { kind: 'integer' }, default: -1, doc: 'optimizer steps; overrides num_train_epochs when > 0' },
    per_device_train_batch_size: int(d.batch, 'pairs (DPO) or sequences (SFT) per micro-batch', 1),
    per_device_eval_batch_size: int(d.batch, 'pairs per eval batch', 1),
    gradient_accumulation_steps: int(d.ga, 'micro-batches per optimizer step (global batch = batch size x this)', 1),
    optim: { type: { kind: 'enum', choices: OPTIMIZERS }, default: d.optim, doc: 'optimizer' },
    adam_beta1: num(0.9, 'AdamW beta1'),
    adam_beta2: num(0.999, 'AdamW beta2'),
    adam_epsilon: num(1e-8, 'AdamW / RMSprop epsilon'),
    weight_decay: num(0, 'decoupled weight decay'),
    max_grad_norm: num(1, 'global gradient-norm clip (0 = off)'),
    seed: int(42, 'data order seed'),
    group_by_length: { type: { kind: 'boolean' }, default: false, doc: 'HF group_by_length: micro-batches of similar-length pairs (less padding)' },
    max_length: int(d.maxLength, 'max tokens of prompt + completion', 8),
    logging_steps: int(10, 'log every N optimizer steps', 1),
    eval_steps: int(100, 'evaluate every N steps (0 = only at the end)'),
    save_steps: int(100, 'checkpoint every N steps (0 = only at the end)'),
    save_total_limit: int(2, 'keep the last N checkpoint-<step> directories (0 = all)'),
  }
}

export const SFT_SECTION: Section = trainerFields({ lr: 2e-5, epochs: 1, schedule: 'cosine', warmup: 0.1, batch: 8, ga: 1, optim: 'adamw', maxLength: 2048, out: 'sft' })

export const DPO_SECTION: Section = {
  ...trainerFields({ lr: 1e-6, epochs: 1, schedule: 'linear', warmup: 0.1, batch: 8, ga: 1, optim: 'adamw', maxLength: 1024, out: 'dpo' }),
  beta: num(0.1, 'DPO temperature: strength of the implicit KL penalty to the reference'),
  loss_type: { type: { kind: 'enum', choices: LOSS_TYPES }, default: 'sigmoid', doc: 'sigmoid (DPO), ipo, hinge' },
  label_smoothing: { type: { kind: 'number', min: 0, max: 0.5 }, default: 0, doc: 'conservative DPO epsilon (sigmoid only)' },
  max_prompt_length: int(512, 'prompt tokens kept (the end) when prompt + completion exceed max_length', 1),
  reference_mode: { type: { kind: 'enum', choices: ['precompute', 'frozen'] }, default: 'precompute', doc: 'precompute reference log-probs once (cached on disk) or keep a frozen copy' },
}

export const LORA_SECTION: Section = {
  enabled: { type: { kind: 'boolean' }, default: false, doc: 'train LoRA adapters instead of all weights' },
  r: int(16, 'adapter rank', 1),
  alpha: num(16, 'scale = alpha / r'),
  dropout: { type: { kind: 'number', min: 0, max: 1 }, default: 0.05, doc: 'dropout on the adapter input' },
  target_modules: { type: { kind: 'strings' }, default: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], doc: 'projections that get adapters' },
}

export const TRAIN_SCHEMA = { model: MODEL_SECTION, data: DATA_SECTION, sft: SFT_SECTION, dpo: DPO_SECTION, lora: LORA_SECTION }

export interface TrainerArgs {
  output_dir: string
  learning_rate: number
  lr_scheduler_type: 'linear' | 'cosine' | 'constant'
  warmup_ratio: number
  num_train_epochs: number
  max_steps: number
  per_device_train_batch_size: number
  per_device_eval_batch_size: number
  gradient_accumulation_steps: number
  optim: 'adamw' | 'rmsprop'
  adam_beta1: number
  adam_beta2: number
  adam_epsilon: number
  weight_decay: number
  max_grad_norm: number
  seed: number
  group_by_length: boolean
  max_length: number
  logging_steps: number
  eval_steps: number
  save_steps: number
  save_total_limit: number
  // dpo only
  beta?: number
  loss_type?: 'sigmoid' | 'ipo' | 'hinge'
  label_smoothing?: number
  max_prompt_length?: number
  reference_mode?: 'precompute' | 'frozen'
}
