/**
 * Model config from an HF `config.json` (MistralForCausalLM, LlamaForCausalLM). Every field the forward pass
 * uses is read from the file; a missing one is an error naming the key, never a transformers class default
 * silently assumed. The only derivations are the ones transformers itself makes from the file:
 * `head_dim` = hidden_size / num_attention_heads when absent or null, `num_key_value_heads` =
 * num_attention_heads when absent (Llama), `sliding_window` null when absent (Llama: full attention).
 */
import { AlignError, describe } from '../errors.ts'

export const ARCHITECTURES = ['MistralForCausalLM', 'LlamaForCausalLM'] as const

export interface ModelConfig {
  architecture: (typeof ARCHITECTURES)[number]
  vocabSize: number
  hiddenSize: number
  intermediateSize: number
  numLayers: number
  numHeads: number
  numKvHeads: number
  headDim: number
  rmsNormEps: number
  ropeTheta: number
  /** attend to the last `slidingWindow` positions (i - j < window); null = full causal attention */
  slidingWindow: number | null
  tieWordEmbeddings: boolean
  bosTokenId: number | null
  eosTokenId: number | null
  /** the file's JSON, written back on save */
  raw: Record<string, unknown>
}

export function parseConfig(raw: Record<string, unknown>, where = 'config.json'): ModelConfig {
  const arch = (raw.architectures as string[] | undefined)?.[0]
  if (!arch || !(ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new AlignError(`${where}: architectures is ${describe(raw.architectures)}; align supports ${ARCHITECTURES.join(', ')}`)
  }
  if (raw.hidden_act !== undefined && raw.hidden_act !== 'silu') throw new AlignError(`${where}: hidden_act ${describe(raw.hidden_act)} is not supported (only silu)`)
  if (raw.rope_scaling !== undefined && raw.rope_scaling !== null) throw new AlignError(`${where}: rope_scaling is not supported yet`)
  const int = (key: string): number => {
    const v = raw[key]
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new AlignError(`${where}: ${key} must be a positive integer, got ${describe(v)}`)
    return v
  }
  const num = (key: string): number => {
    const v = raw[key]
    if (typeof v !== 'number' || !(v > 0)) throw new AlignError(`${where}: ${key} must be a positive number, got ${describe(v)} (Mistral/Llama use rms_norm_eps 1e-5 or 1e-6, rope_theta 10000.0)`)
    return v
  }
  const hiddenSize = int('hidden_size')
  const numHeads = int('num_attention_heads')
  const numKvHeads = raw.num_key_value_heads === undefined ? numHeads : int('num_key_value_heads')
  const headDim = raw.head_dim === undefined || raw.head_dim === null ? hiddenSize / numHeads : int('head_dim')
  if (!Number.isInteger(headDim)) throw new AlignError(`${where}: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}`)
  if (numHeads % numKvHeads !== 0) throw new AlignError(`${where}: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`)
  if (headDim % 2 !== 0) throw new AlignError(`${where}: head_dim ${headDim} must be even for rotary embeddings`)
  const sw = raw.sliding_window
  if (sw !== undefined && sw !== null && (typeof sw !== 'number' || !Number.isInteger(sw) || sw <= 0)) throw new AlignError(`${where}: sliding_window must be a positive integer or null, got ${describe(sw)}`)
  const tokenId = (key: string) => (typeof raw[key] === 'number' ? (raw[key] as number) : null)
  return {
    architecture: arch as ModelConfig['architecture'],
    vocabSize: int('vocab_size'),
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: num('rms_norm_eps'),
    ropeTheta: num('rope_theta'),
    slidingWindow: typeof sw === 'number' ? sw : null,
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    bosTokenId: tokenId('bos_token_id'),
    eosTokenId: tokenId('eos_token_id'),
    raw,
  }
}

/** Presets: the real Mistral-7B-v0.1 config and tiny Mistral-like sizes that train on a CPU. */
const mistral = (o: Record<string, unknown>): Record<string, unknown> => ({
  architectures: ['MistralForCausalLM'],
  model_type: 'mistral',
  vocab_size: 32_000,
  hidden_act: 'silu',
  max_position_embeddings: 32_768,
  rms_norm_eps: 1e-5,
  rope_theta: 10_000.0,
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 2,
  torch_dtype: 'bfloat16',
  attention_dropout: 0.0,
  ...o,
})

export const PRESETS: Record<string, Record<string, unknown>> = {
  // mistralai/Mistral-7B-v0.1's config.json on the Hub
  'mistral-7b': mistral({ hidden_size: 4096, intermediate_size: 14_336, num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 8, sliding_window: 4096 }),
  // the benchmark model of the performance issue: ~19M parameters, most of them in the 32k vocab
  'tiny-bench': mistral({ hidden_size: 256, intermediate_size: 688, num_hidden_layers: 4, num_attention_heads: 8, num_key_value_heads: 2, sliding_window: 4096, max_position_embeddings: 4096 }),
  // the demo policy: real Mistral tokenizer, 2 layers, trains SFT + DPO in minutes on 2 cores
  'tiny': mistral({ hidden_size: 64, intermediate_size: 176, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16, sliding_window: 4096, max_position_embeddings: 4096 }),
}

/** Parameter count by HF tensor name, from the config alone. */
export function parameterShapes(c: ModelConfig): Map<string, number[]> {
  const m = new Map<string, number[]>()
  const kv = c.numKvHeads * c.headDim
  m.set('model.embed_tokens.weight', [c.vocabSize, c.hiddenSize])
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}.`
    m.set(p + 'input_layernorm.weight', [c.hiddenSize])
    m.set(p + 'self_attn.q_proj.weight', [c.numHeads * c.headDim, c.hiddenSize])
    m.set(p + 'self_attn.k_proj.weight', [kv, c.hiddenSize])
    m.set(p + 'self_attn.v_proj.weight', [kv, c.hiddenSize])
    m.set(p + 'self_attn.o_proj.weight', [c.hiddenSize, c.numHeads * c.headDim])
    m.set(p + 'post_attention_layernorm.weight', [c.hiddenSize])
    m.set(p + 'mlp.gate_proj.weight', [c.intermediateSize, c.hiddenSize])
    m.set(p + 'mlp.up_proj.weight', [c.intermediateSize, c.hiddenSize])
    m.set(p + 'mlp.down_proj.weight', [c.hiddenSize, c.intermediateSize])
  }
  m.set('model.norm.weight', [c.hiddenSize])
  if (!c.tieWordEmbeddings) m.set('lm_head.weight', [c.vocabSize, c.hiddenSize])
  return m
}

/** Total parameters implied by the config. */
export function parameterCount(c: ModelConfig): number {
  return [...parameterShapes(c).values()].reduce((a, shape) => a + shape.reduce((x, d) => x * d, 1), 0)
}
