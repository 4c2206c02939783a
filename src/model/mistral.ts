/**
 * A Mistral/Llama decoder in tfjs, one small function per block, HF tensor names throughout.
 *
 * References: transformers `modeling_mistral.py` / `modeling_llama.py` (pre-norm residual blocks, RMSNorm,
 * rotate-half RoPE, grouped-query attention with a sliding-window causal mask, SwiGLU MLP) and nanoGPT's
 * `model.py` for the shape of the code. Linear weights are held transposed, [in, out] (weights.ts converts
 * from and to HF's [out, in] once, at load and save), so every projection is a plain `x @ W`.
 */
import * as tf from '@tensorflow/tfjs'
import { gatherRows, linear } from './autograd.ts'
import { backendLimits, checkTensorBytes } from './backend.ts'
import type { ModelConfig } from './config.ts'
import { loraDelta, type LoraState } from './lora.ts'

export interface Model {
  config: ModelConfig
  /** HF name -> variable; linear weights held as [in, out]; LoRA adapters too (lora.ts) */
  params: Map<string, tf.Variable>
  lora?: LoraState
}

/** A parameter by HF name, typed by rank (the one place a variable is viewed as a TensorND). */
export function param<R extends tf.Rank>(model: Model, name: string): tf.Tensor<R> {
  const v = model.params.get(name)
  if (!v) throw new Error(`model has no parameter ${name}`)
  return v as tf.Tensor as tf.Tensor<R>
}

export function disposeModel(model: Model): void {
  for (const v of model.params.values()) v.dispose()
}

/** RMSNorm in fp32: x * rsqrt(mean(x²) + eps) * w. x: [N, D] */
export function rmsNorm(x: tf.Tensor2D, w: tf.Tensor1D, eps: number): tf.Tensor2D {
  const ms = tf.mean(tf.square(x), -1, true) // [N, 1]
  return tf.mul(tf.mul(x, tf.rsqrt(tf.add(ms, eps))), w)
}

/**
 * Where each token of a batch sits: its rope position and its branch. Plain rows are one causal sequence each
 * (position = index, branch 0). Packed pair rows (preference/batch.ts `packPairs`) hold [prompt, chosen,
 * rejected]: the prompt is branch 0 and the completions branches 1 and 2, both continuing the prompt's
 * positions, so one packed row computes exactly what the rows [prompt, chosen] and [prompt, rejected] would.
 */
export interface Packing {
  /** rope position of each token [B*T] */
  positions: Int32Array
  /** 0 = shared prompt, 1 / 2 = the completions, -1 = padding [B*T] */
  branch: Int32Array
}

/** cos/sin rows [positions.length * hd] for the given positions, HF layout: freqs concatenated with themselves. */
function ropeAngles(positions: ArrayLike<number>, hd: number, theta: number): { cos: Float32Array; sin: Float32Array } {
  const cos = new Float32Array(positions.length * hd)
  const sin = new Float32Array(positions.length * hd)
  const half = hd / 2
  for (let r = 0; r < positions.length; r++) {
    for (let i = 0; i < half; i++) {
      const a = positions[r]! / theta ** ((2 * i) / hd)
      cos[r * hd + i] = cos[r * hd + i + half] = Math.cos(a)
      sin[r * hd + i] = sin[r * hd + i + half] = Math.sin(a)
    }
  }
  return { cos, sin }
}

/** The [hd, hd] matrix R with x @ R = rotate_half(x) = [-x2, x1] (one plain matMul instead of split + neg + concat). */
export function rotateHalfMatrix(hd: number): tf.Tensor2D {
  const rot = new Float32Array(hd * hd)
  for (let i = 0; i < hd / 2; i++) {
    rot[(i + hd / 2) * hd + i] = -1 // out[i] = -x[i + half]
    rot[i * hd + i + hd / 2] = 1 // out[i + half] = x[i]
  }
  return tf.tensor2d(rot, [hd, hd])
}

/** cos/sin tables [T, hd] for positions 0..T-1. */
export function ropeTables(T: number, hd: number, theta: number): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
  const { cos, sin } = ropeAngles(Array.from({ length: T }, (_, t) => t), hd, theta)
  return { cos: tf.tensor2d(cos, [T, hd]), sin: tf.tensor2d(sin, [T, hd]) }
}

/** Rotary embedding, rotate-half form: x*cos + rotate_half(x)*sin. x: [B, T, nH, hd]; cos/sin [T, hd] or [B, T, hd]. */
export function rope(x: tf.Tensor4D, cos: tf.Tensor, sin: tf.Tensor, rot: tf.Tensor2D): tf.Tensor4D {
  const [B, T, nH, hd] = x.shape // [B, T, nH, hd]
  const rotated = tf.reshape(tf.matMul(tf.reshape(x, [B * T * nH, hd]), rot), [B, T, nH, hd]) // [B, T, nH, hd]
  const rows = cos.size / (T * hd) // 1, or B for per-row positions
  const c = tf.reshape(cos, [rows, T, 1, hd])
  const s = tf.reshape(sin, [rows, T, 1, hd])
  return tf.add(tf.mul(x, c), tf.mul(rotated, s))
}

/**
 * Additive mask [Bm, 1, G*T, past+T] (Bm = 1 for plain rows, B when packed) for T queries at positions
 * past..past+T-1, folded as rows g*T + i, over past+T keys: 0 where key j is visible from query i, -1e9
 * elsewhere. Visible: j ≤ i, j in the prompt or in i's own branch, within the sliding window of positions.
 * Right padding sits after every real token, so no real token sees it (padded positions are never scored).
 */
export function attentionMask(T: number, groups: number, window: number | null, packing?: Packing, past = 0): tf.Tensor4D {
  const S = past + T
  const Bm = packing ? packing.positions.length / T : 1
  const m = new Float32Array(Bm * groups * T * S).fill(-1e9)
  for (let b = 0; b < Bm; b++) {
    const base = b * groups * T * S
    for (let i = 0; i < T; i++) {
      const bi = packing ? packing.branch[b * T + i]! : 0
      const pi = packing ? packing.positions[b * T + i]! : past + i
      for (let j = 0; j <= past + i; j++) {
        const bj = packing ? packing.branch[b * T + j]! : 0
        const pj = packing ? packing.positions[b * T + j]! : j
        if ((bj === 0 || bj === bi) && (window === null || pi - pj < window)) m[base + i * S + j] = 0
      }
    }
    for (let g = 1; g < groups; g++) m.copyWithin(base + g * T * S, base, base + T * S) // same rows for each query head of a group
  }
  return tf.tensor4d(m, [Bm, 1, groups * T, S])
}

/** What every block of one forward pass shares: the batch shape, the mask and the rope tables. */
export interface Ctx {
  B: number
  T: number
  mask: tf.Tensor4D
  cos: tf.Tensor
  sin: tf.Tensor
  rot: tf.Tensor2D
}

/** Keys and values of the positions seen so far, one per layer (generation). Kept across tidy scopes. */
export interface KvCache {
  k?: tf.Tensor4D // [B, KV, S, hd]
  v?: tf.Tensor4D // [B, KV, S, hd]
}

function appendKv(cache: KvCache, k: tf.Tensor4D, v: tf.Tensor4D): [tf.Tensor4D, tf.Tensor4D] {
  const kAll = tf.keep(cache.k ? tf.concat([cache.k, k], 2) : k) // [B, KV, S, hd]
  const vAll = tf.keep(cache.v ? tf.concat([cache.v, v], 2) : v)
  tf.dispose([cache.k, cache.v].filter((t): t is tf.Tensor4D => t !== undefined))
  Object.assign(cache, { k: kAll, v: vAll })
  return [kAll, vAll]
}

/** A projection `module` (e.g. `model.layers.0.self_attn.q_proj`): x @ W, plus the LoRA branch when there is one. */
export function proj(model: Model, module: string, x: tf.Tensor2D): tf.Tensor2D {
  const y = linear(x, param<tf.Rank.R2>(model, `${module}.weight`))
  const delta = loraDelta(model, module, x)
  return delta ? tf.add(y, delta) : y // [N, out]
}

/** Grouped-query self-attention, over the cache's earlier positions too when one is given. x: [B*T, D] -> [B*T, D] */
export function attention(model: Model, layer: number, x: tf.Tensor2D, ctx: Ctx, cache?: KvCache): tf.Tensor2D {
  const c = model.config
  const p = (n: string, x: tf.Tensor2D) => proj(model, `model.layers.${layer}.self_attn.${n}`, x)
  const { B, T } = ctx
  const [H, KV, hd] = [c.numHeads, c.numKvHeads, c.headDim]
  const G = H / KV
  const q = rope(tf.reshape(p('q_proj', x), [B, T, H, hd]) as tf.Tensor4D, ctx.cos, ctx.sin, ctx.rot) // [B, T, H, hd]
  const k = rope(tf.reshape(p('k_proj', x), [B, T, KV, hd]) as tf.Tensor4D, ctx.cos, ctx.sin, ctx.rot) // [B, T, KV, hd]
  const v = tf.reshape(p('v_proj', x), [B, T, KV, hd]) // [B, T, KV, hd]
  let kh = tf.transpose(k, [0, 2, 1, 3]) as tf.Tensor4D // [B, KV, T, hd]
  let vh = tf.transpose(v, [0, 2, 1, 3]) as tf.Tensor4D // [B, KV, T, hd]
  if (cache) [kh, vh] = appendKv(cache, kh, vh) // [B, KV, S, hd]
  const S = kh.shape[2]
  // head h = kv*G + g shares kv head `kv` (HF repeat_kv): fold the G query heads of a kv head into rows
  const qf = tf.reshape(tf.transpose(q, [0, 2, 1, 3]), [B * KV, G * T, hd]) as tf.Tensor3D // [B*KV, G*T, hd]
  const kf = tf.reshape(kh, [B * KV, S, hd]) as tf.Tensor3D // [B*KV, S, hd]
  const vf = tf.reshape(vh, [B * KV, S, hd]) as tf.Tensor3D // [B*KV, S, hd]
  // the scores of `rows` sequences are one [rows*KV, G*T, S] tensor: as many rows at a time as the backend can hold
  const rows = attentionRows(B, H * T * S)
  const part = (t: tf.Tensor3D, b: number, n: number) => (n === B ? t : tf.slice(t, [b * KV, 0, 0], [n * KV, -1, -1]))
  const maskRows = (b: number, n: number) => (n === B || ctx.mask.shape[0] === 1 ? ctx.mask : tf.slice(ctx.mask, [b, 0, 0, 0], [n, -1, -1, -1]))
  const attend = (b: number, n: number) => scaledDotProduct(part(qf, b, n), part(kf, b, n), part(vf, b, n), maskRows(b, n), n, KV) // [n*KV, G*T, hd]
  const out = rows >= B ? attend(0, B) : tf.concat(Array.from({ length: Math.ceil(B / rows) }, (_, i) => attend(i * rows, Math.min(rows, B - i * rows)))) // [B*KV, G*T, hd]
  const merged = tf.reshape(tf.transpose(tf.reshape(out, [B, H, T, hd]), [0, 2, 1, 3]), [B * T, H * hd]) as tf.Tensor2D // [B*T, H*hd]
  return p('o_proj', merged)
}

/** softmax(q kᵀ / √hd + mask) v for `n` sequences of KV heads each. q: [n*KV, G*T, hd], k/v: [n*KV, S, hd] -> [n*KV, G*T, hd] */
function scaledDotProduct(qf: tf.Tensor3D, kf: tf.Tensor3D, vf: tf.Tensor3D, mask: tf.Tensor4D, n: number, KV: number): tf.Tensor3D {
  const [, GT, hd] = qf.shape
  const S = kf.shape[1]
  const scores = tf.reshape(tf.mul(tf.matMul(qf, kf, false, true), 1 / Math.sqrt(hd)), [n, KV, GT, S]) // [n, KV, G*T, S]
  const probs = tf.softmax(tf.reshape(tf.add(scores, mask), [n * KV, GT, S])) // [n*KV, G*T, S]
  return tf.matMul(probs, vf) // [n*KV, G*T, hd]
}

/** How many sequences' attention scores ([H, T, S] floats each) fit in one tensor of the active backend. */
export function attentionRows(B: number, perRow: number): number {
  checkTensorBytes(`the attention scores of one sequence ([heads, T, S] = ${perRow} floats)`, 4 * perRow, 'lower max_length')
  return Math.min(B, Math.floor(backendLimits().maxTensorBytes / (4 * perRow)))
}

/**
 * Refuse a micro-batch of `tokens` whose [tokens, width] activations (the MLP's intermediate, the projections)
 * the active backend could not hold as one tensor; attention scores and the LM head split themselves.
 */
export function checkBatchTensors(c: ModelConfig, tokens: number, fix: string): void {
  const width = Math.max(c.intermediateSize, c.hiddenSize, c.numHeads * c.headDim)
  checkTensorBytes(`a micro-batch's activation [${tokens} tokens, ${width}]`, 4 * tokens * width, fix)
}

/** SwiGLU: down(silu(gate(x)) * up(x)). x: [B*T, D] */
export function mlp(model: Model, layer: number, x: tf.Tensor2D): tf.Tensor2D {
  const p = (n: string, x: tf.Tensor2D) => proj(model, `model.layers.${layer}.mlp.${n}`, x)
  const g = p('gate_proj', x) // [B*T, I]
  const silu = tf.mul(g, tf.sigmoid(g))
  return p('down_proj', tf.mul(silu, p('up_proj', x))) // [B*T, D]
}

/** Pre-norm residual block. x: [B*T, D] */
export function block(model: Model, layer: number, x: tf.Tensor2D, ctx: Ctx, cache?: KvCache): tf.Tensor2D {
  const eps = model.config.rmsNormEps
  const w = (n: string) => param<tf.Rank.R1>(model, `model.layers.${layer}.${n}.weight`)
  const h: tf.Tensor2D = tf.add(x, attention(model, layer, rmsNorm(x, w('input_layernorm'), eps), ctx, cache))
  return tf.add(h, mlp(model, layer, rmsNorm(h, w('post_attention_layernorm'), eps)))
}

/** Token embeddings. ids: int32 [N] -> [N, D] */
export function embed(model: Model, ids: tf.Tensor1D): tf.Tensor2D {
  return gatherRows(param<tf.Rank.R2>(model, 'model.embed_tokens.weight'), ids)
}

/**
 * Masks and rope tables by shape, built once and kept for the process (plain rows); packed batches get their own.
 * A cache like nanoGPT's registered buffers: the values depend only on the key. `clearCaches` frees them.
 */
const kept = new Map<string, tf.Tensor>()
function cached<T extends tf.Tensor>(key: string, make: () => T): T {
  if (!kept.has(key)) kept.set(key, tf.keep(make()))
  return kept.get(key) as T
}

export function clearCaches(): void {
  for (const t of kept.values()) t.dispose()
  kept.clear()
}

/** The context of a forward pass over [B, T] tokens (`packing` for packed pair rows). */
export function context(c: ModelConfig, B: number, T: number, packing?: Packing): Ctx {
  const G = c.numHeads / c.numKvHeads
  const hd = c.headDim
  const rot = cached(`rot:${hd}`, () => rotateHalfMatrix(hd))
  if (packing) {
    const { cos, sin } = ropeAngles(packing.positions, hd, c.ropeTheta)
    return { B, T, mask: attentionMask(T, G, c.slidingWindow, packing), cos: tf.tensor3d(cos, [B, T, hd]), sin: tf.tensor3d(sin, [B, T, hd]), rot }
  }
  const cos = cached(`cos:${T}:${hd}:${c.ropeTheta}`, () => ropeTables(T, hd, c.ropeTheta).cos)
  const sin = cached(`sin:${T}:${hd}:${c.ropeTheta}`, () => ropeTables(T, hd, c.ropeTheta).sin)
  const mask = cached(`mask:${T}:${G}:${c.slidingWindow}`, () => attentionMask(T, G, c.slidingWindow))
  return { B, T, mask, cos, sin, rot }
}

/** Final hidden states after the last norm. ids: int32 [B, T] -> [B*T, D]; `packing` for packed pair rows. */
export function hidden(model: Model, ids: tf.Tensor2D, packing?: Packing, layers?: (i: number, x: tf.Tensor2D) => void): tf.Tensor2D {
  const c = model.config
  const [B, T] = ids.shape
  const ctx = context(c, B, T, packing)
  let x = embed(model, tf.reshape(ids, [B * T]) as tf.Tensor1D) // [B*T, D]
  layers?.(-1, x)
  for (let i = 0; i < c.numLayers; i++) {
    x = block(model, i, x, ctx)
    layers?.(i, x)
  }
  return rmsNorm(x, param<tf.Rank.R1>(model, 'model.norm.weight'), c.rmsNormEps)
}

/** LM head: [N, D] -> logits [N, V] (tied: the embedding table, transposed). */
export function lmHead(model: Model, h: tf.Tensor2D): tf.Tensor2D {
  if (model.config.tieWordEmbeddings) return tf.matMul(h, param<tf.Rank.R2>(model, 'model.embed_tokens.weight'), false, true)
  return linear(h, param<tf.Rank.R2>(model, 'lm_head.weight'))
}

/** Logits [B*T, V] for int32 ids [B, T]. */
export function forward(model: Model, ids: tf.Tensor2D): tf.Tensor2D {
  return lmHead(model, hidden(model, ids))
}
