/**
 * alignment-handbook recipes, read as they are: a flat YAML of model arguments (ModelConfig), data arguments
 * (`dataset_mixture` with `datasets`/`test_split_size`/`seed`, or the older `dataset_mixer` + `dataset_splits`,
 * `chat_template`, `auto_insert_empty_system_msg`) and SFTConfig / DPOConfig / TrainingArguments fields, translated
 * into align's sections with their meaning kept (recipes/zephyr-7b-beta/{sft,dpo}/config_full.yaml run unchanged).
 * A key align cannot apply here is listed once with the reason; a key that is neither known nor ignorable is an
 * error naming the nearest known key. Trainer keys go to both the sft and dpo sections (the command picks one).
 */
import { AlignError, describe } from './errors.ts'

type Out = Record<string, Record<string, unknown>>
/** Puts one handbook key's value where align reads it; `root` is the whole recipe (keys that read others). */
type Setter = (v: unknown, out: Out, notes: string[], root: Record<string, unknown>) => void

const put = (out: Out, section: string, key: string, v: unknown) => void ((out[section] ??= {})[key] = v)
/** trainer keys go to both stages' sections (the command picks one) */
const putBoth = (out: Out, key: string, v: unknown) => ['sft', 'dpo'].forEach((section) => put(out, section, key, v))
const set = (section: string, key: string): Setter => (v, out) => put(out, section, key, v)
const both = (key: string): Setter => (v, out) => putBoth(out, key, v)

const OPTIM: Record<string, string> = { adamw_torch: 'adamw', adamw_hf: 'adamw', adamw_torch_fused: 'adamw', paged_adamw_32bit: 'adamw', adamw_apex_fused: 'adamw', rmsprop: 'rmsprop' }
const DTYPE: Record<string, string> = { bfloat16: 'bfloat16', float16: 'float16', float32: 'float32' }
const SCHEDULE: Record<string, string> = { linear: 'linear', cosine: 'cosine', constant: 'constant', constant_with_warmup: 'constant' }

/** Where each handbook key goes. */
const KEYS: Record<string, Setter> = {
  model_name_or_path: set('model', 'policy'),
  tokenizer_name_or_path: set('model', 'tokenizer'),
  chat_template: set('model', 'chat_template'),
  torch_dtype: (v, out, notes) => {
    if (typeof v === 'string' && DTYPE[v]) put(out, 'model', 'save_dtype', DTYPE[v])
    else notes.push(`torch_dtype ${describe(v)}: weights are saved as model.save_dtype (float32 by default); tfjs computes in float32`)
  },
  use_peft: set('lora', 'enabled'),
  lora_r: set('lora', 'r'),
  lora_alpha: set('lora', 'alpha'),
  lora_dropout: set('lora', 'dropout'),
  lora_target_modules: set('lora', 'target_modules'),
  auto_insert_empty_system_msg: set('data', 'auto_insert_empty_system_msg'),
  dataset_mixture: (v, out) => {
    const m = (v ?? {}) as { datasets?: unknown; test_split_size?: unknown; seed?: unknown }
    put(out, 'data', 'datasets', m.datasets)
    put(out, 'data', 'mixture_style', 'mixture')
    if (m.test_split_size !== undefined && m.test_split_size !== null) put(out, 'data', 'test_split_size', m.test_split_size)
    if (m.seed !== undefined) put(out, 'data', 'mixture_seed', m.seed)
  },
  dataset_mixer: (v, out, _notes, root) => {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new AlignError(`dataset_mixer: expected a mapping of dataset id: fraction, got ${describe(v)}`)
    const splits = Array.isArray(root.dataset_splits) ? (root.dataset_splits as string[]) : ['train', 'test']
    put(out, 'data', 'datasets', Object.entries(v).flatMap(([id, weight]) => splits.map((split) => ({ id, split, weight }))))
    put(out, 'data', 'mixture_style', 'mixer')
  },
  dataset_name: (v, out, _notes, root) => {
    const [train, test] = [root.dataset_train_split ?? 'train', root.dataset_test_split ?? 'test']
    put(out, 'data', 'datasets', [{ id: v, split: train }, { id: v, split: test }])
    put(out, 'data', 'mixture_style', 'mixer')
  },
  max_seq_length: set('sft', 'max_length'),
  max_prompt_length: set('dpo', 'max_prompt_length'),
  beta: set('dpo', 'beta'),
  loss_type: set('dpo', 'loss_type'),
  label_smoothing: set('dpo', 'label_smoothing'),
  precompute_ref_log_probs: (v, out) => put(out, 'dpo', 'reference_mode', v === true ? 'precompute' : 'frozen'),
  optim: (v, out, notes) => {
    const o = typeof v === 'string' ? OPTIM[v] : undefined
    if (!o) throw new AlignError(`optim ${describe(v)}: align has adamw (adamw_torch and its variants) and rmsprop`)
    if (v !== 'adamw_torch' && v !== 'rmsprop') notes.push(`optim ${v}: runs as torch AdamW (same update; no paging, fusing or 8-bit states here)`)
    putBoth(out, 'optim', o)
  },
  lr_scheduler_type: (v, out) => {
    if (typeof v !== 'string' || !SCHEDULE[v]) throw new AlignError(`lr_scheduler_type ${describe(v)}: align has ${Object.keys(SCHEDULE).join(', ')}`)
    putBoth(out, 'lr_scheduler_type', SCHEDULE[v])
  },
  eval_strategy: (v, out, notes) => {
    if (v === 'no') putBoth(out, 'do_eval', false)
    else if (v === 'epoch') {
      putBoth(out, 'eval_steps', 0)
      notes.push('eval_strategy epoch: align evaluates at the end of training (eval_steps 0)')
    }
  },
  save_strategy: (v, out) => {
    if (v === 'no' || v === 'epoch') putBoth(out, 'save_steps', 0)
  },
  do_eval: both('do_eval'),
  warmup_steps: (v, _out, notes) => {
    if (v !== 0) notes.push(`warmup_steps ${describe(v)}: align warms up by warmup_ratio; set warmup_ratio instead`)
  },
}
for (const k of ['learning_rate', 'warmup_ratio', 'num_train_epochs', 'max_steps', 'per_device_train_batch_size', 'per_device_eval_batch_size', 'gradient_accumulation_steps', 'adam_beta1', 'adam_beta2', 'adam_epsilon', 'weight_decay', 'max_grad_norm', 'seed', 'group_by_length', 'max_length', 'logging_steps', 'eval_steps', 'save_steps', 'save_total_limit', 'output_dir', 'overwrite_output_dir']) KEYS[k] = both(k)
KEYS.evaluation_strategy = KEYS.eval_strategy!

const FP32 = 'tfjs computes in float32 on every backend (no bf16/fp16 kernels)'
const NO_HUB = 'no model hub here: nothing is uploaded or downloaded'
/** Keys that cannot apply here, with the reason (listed once, never silently dropped). */
export const IGNORED: Record<string, string> = {
  bf16: FP32, fp16: FP32, tf32: FP32,
  gradient_checkpointing: 'activations are kept for the backward pass (align train --dry-run shows their memory)',
  gradient_checkpointing_kwargs: 'no gradient checkpointing',
  attn_implementation: 'attention is align\'s own (no flash attention kernels in tfjs)',
  use_flash_attention_2: 'attention is align\'s own (no flash attention kernels in tfjs)',
  load_in_4bit: 'no quantized weights in tfjs: LoRA trains on fp32 base weights', load_in_8bit: 'no quantized weights in tfjs',
  bnb_4bit_quant_type: 'no quantization', bnb_4bit_compute_dtype: 'no quantization', use_bnb_nested_quant: 'no quantization', bnb_4bit_quant_storage: 'no quantization',
  lora_modules_to_save: 'only LoRA adapters train in a LoRA run', lora_task_type: 'adapters are always CAUSAL_LM',
  push_to_hub: NO_HUB, hub_model_id: NO_HUB, hub_strategy: NO_HUB, hub_private_repo: NO_HUB, model_revision: NO_HUB, trust_remote_code: 'the model code is align\'s own Mistral/Llama',
  report_to: 'metrics.jsonl and TensorBoard files are always written', log_level: 'align prints progress and one-line errors', logging_strategy: 'logging every logging_steps',
  logging_first_step: 'align logs step 1 always', run_name: 'the run is named by output_dir',
  dataset_num_proc: 'tokenization runs in one process', preprocessing_num_workers: 'tokenization runs in one process', dataloader_num_workers: 'batches are built in the training process',
  dataset_config: 'configs resolve inside the dataset directory', dataset_splits: 'used with dataset_mixer', dataset_kwargs: 'datasets are read from local files',
  remove_unused_columns: 'only the columns a stage needs are read', ddp_timeout: 'one process per run', torch_compile: 'no torch here', use_liger: 'no torch here', use_liger_kernel: 'no torch here',
  packing: 'SFT rows are padded, not packed', save_only_model: 'checkpoints keep the optimizer for exact resume', eval_accumulation_steps: 'eval runs batch by batch',
  hub_revision: NO_HUB, optim_args: 'the optimizer takes adam_beta1/adam_beta2/adam_epsilon/weight_decay', generate_during_eval: 'use align sample',
}

/** Whether a parsed YAML root is a flat handbook recipe (handbook keys, none of align's sections). */
export function isHandbookRecipe(root: Record<string, unknown>, sections: string[]): boolean {
  const keys = Object.keys(root)
  return keys.some((k) => k in KEYS || k in IGNORED) && !keys.some((k) => sections.includes(k) && k !== 'description')
}

/** Translate a handbook recipe into align's sections (raw values, type-checked by the caller), with notes. */
export function translateHandbook(root: Record<string, unknown>, nearest: (key: string, names: string[]) => string | undefined): { sections: Out; notes: string[] } {
  const out: Out = {}
  const notes: string[] = []
  for (const [key, value] of Object.entries(root)) {
    if (['dataset_splits', 'dataset_train_split', 'dataset_test_split'].includes(key)) continue // read by dataset_mixer / dataset_name
    const setter = KEYS[key]
    if (setter) setter(value, out, notes, root)
    else if (key in IGNORED) notes.push(`${key}: not applied (${IGNORED[key]})`)
    else {
      const near = nearest(key, [...Object.keys(KEYS), ...Object.keys(IGNORED)])
      throw new AlignError(`unknown key ${key}${near ? `; did you mean ${near}?` : ''} (not a handbook ModelConfig/ScriptArguments/SFTConfig/DPOConfig key align knows)`)
    }
  }
  return { sections: out, notes: [...new Set(notes)] }
}
