// Test helpers that use tfjs: one backend for a test file (ALIGN_TEST_BACKEND picks it, default cpu, the
// reference), and a tiny DPO setup shared by the training tests.
import * as tf from '@tensorflow/tfjs'
import { initBackend } from '../src/model/backend.ts'
import { join } from 'node:path'
import { BINARIZE_SECTION, binarize, type BinarizeOptions } from '../src/binarize/index.ts'
import { parseConfig } from '../src/model/config.ts'
import { disposeModel } from '../src/model/mistral.ts'
import { initModel, savePretrained } from '../src/model/weights.ts'
import { loadRecipe } from '../src/recipe.ts'
import { Rng } from '../src/rng.ts'
import { FIXTURES, ROOT, tmp } from './helpers.ts'

export async function useBackend(name = process.env.ALIGN_TEST_BACKEND ?? 'cpu'): Promise<typeof tf> {
  await initBackend(name)
  return tf
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`)
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!))
  return m
}

// A 1-layer Mistral-like policy (real tokenizer, vocab 32000) and the fixture binarized with the zephyr rule, plus
// recipe overrides that train it in seconds.
export const TINY_CONFIG = { architectures: ['MistralForCausalLM'], model_type: 'mistral', vocab_size: 32000, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8, rms_norm_eps: 1e-5, rope_theta: 10000, sliding_window: 32, tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2 }

/** Write the policy and the binarized data into a temp dir (the wasm or cpu backend must be active). */
export async function tinyRun(): Promise<{ work: string; policyDir: string; dataDir: string; base: (out: string, ...more: string[]) => string[] }> {
  const work = tmp()
  const policyDir = join(work, 'policy')
  const dataDir = join(work, 'data')
  const m = initModel(parseConfig(TINY_CONFIG), Rng.fromKey('train-test'))
  await savePretrained(policyDir, m, { dtype: 'F32', tokenizerDir: join(ROOT, 'data', 'tokenizer') })
  disposeModel(m)
  const o = loadRecipe('zephyr', { binarize: BINARIZE_SECTION }, ['test_size=8']).values.binarize as unknown as BinarizeOptions
  await binarize({ inputs: [join(FIXTURES, 'ultrafeedback', 'head200.zstd.parquet')], out: dataDir, formats: ['jsonl'], recipeName: 'zephyr', options: o, quiet: true })
  const base = (out: string, ...more: string[]) => [
    `model.policy=${policyDir}`, `data.pairs=${dataDir}`, 'data.max_train_pairs=12', 'data.max_eval_pairs=4',
    `dpo.output_dir=${out}`, `sft.output_dir=${out}`, 'dpo.max_length=48', 'dpo.max_prompt_length=24', 'sft.max_length=48',
    'dpo.per_device_train_batch_size=2', 'dpo.gradient_accumulation_steps=2', 'dpo.per_device_eval_batch_size=4', 'dpo.learning_rate=1e-2',
    'dpo.logging_steps=1', 'dpo.eval_steps=2', 'dpo.save_steps=2', 'dpo.save_total_limit=2', 'dpo.max_steps=4', 'dpo.warmup_ratio=0.25',
    'sft.per_device_train_batch_size=4', 'sft.gradient_accumulation_steps=1', 'sft.max_steps=3', 'sft.logging_steps=1', 'sft.learning_rate=1e-2', 'sft.eval_steps=0',
    ...more,
  ]
  return { work, policyDir, dataDir, base }
}

/**
 * A small DPO problem for gradient tests (gradients.test.ts, webgpu.test.ts): two pairs sharing token ids
 * (duplicate ids exercise the scatter-add of the embedding gradient), packed one pair per row as training runs
 * them, with a sliding window (5) shorter than the rows.
 */
export const SMALL_DPO = {
  config: parseConfig({
    architectures: ['MistralForCausalLM'], vocab_size: 40, hidden_size: 16, intermediate_size: 24, num_hidden_layers: 2,
    num_attention_heads: 4, num_key_value_heads: 2, head_dim: 4, rms_norm_eps: 1e-5, rope_theta: 10000, sliding_window: 5, tie_word_embeddings: false,
  }),
  pairs: [
    { promptIds: [1, 5, 7, 5, 9], chosenIds: [3, 4, 2], rejectedIds: [8, 2] },
    { promptIds: [1, 11, 12], chosenIds: [13, 5, 14, 15, 2], rejectedIds: [5, 5, 2] },
  ],
  ref: { chosen: [-10.5, -16.1], rejected: [-7.9, -11.2] },
  opts: { beta: 0.5, lossType: 'sigmoid' as const, labelSmoothing: 0 },
}
