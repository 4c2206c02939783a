/**
 * A Mistral/Llama decoder in tfjs, one small function per block, HF tensor names throughout.
 *
 * References: transformers `modeling_mistral.py` / `modeling_llama.py` (pre-norm residual blocks, RMSNorm,
 * rotate-half RoPE, grouped-query attention with a sliding-window causal mask, SwiGLU MLP) and nanoGPT's
 * `model.py` for the shape of the code.
 *
 * Layout: on disk linear weights are HF's [out, in]; in memory they are stored transposed, [in, out], so every
 * projection is a plain `x @ W` (the only matMul XNNPACK runs fast on wasm), converted once at load/save.
 * Backend gaps in tfjs 4.22 designed around (the project's reference notes, tfjs-feasibility.md §3): the embedding's
 * gradient is a scatterND (wasm has no UnsortedSegmentSum); the target log-prob gradient is written out
 * (GatherNd has none); no rank-5 tile (query groups are folded into rows instead); linear's gradient is
 * built from explicit transposes and plain matMuls. All of it runs the same on every backend.
 */
import * as tf from '@tensorflow/tfjs'
import { AlignError } from '../errors.ts'
import type { Rng } from '../rng.ts'
import { parameterShapes, type ModelConfig } from './config.ts'

export interface Model {
  config: ModelConfig
  /** HF name -> variable; linear weights ([out, in] on disk) held as [in, out]. LoRA adapters live here too,
   * as `<module>.lora_A.weight` / `<module>.lora_B.weight` (PEFT's names without the base_model.model. prefix). */
  params: Map<string, tf.Variable>
  lora?: LoraState
}

/** LoRA (Hu et al. 2021) as PEFT applies it: W x + (alpha / r) · B A dropout(x); B starts at zero. */
export interface LoraState {
  r: number
  alpha: number
  dropout: number
  targets: string[]
  /** false = the base model (TRL's reference with adapters disabled) */
  enabled: boolean
  /** training mode applies dropout; seeds derive from `seed` and a per-call counter (deterministic resume) */
  training: boolean
  seed: number
  calls: number
}

/** Projections held transposed in memory (LoRA A as [in, r], B as [r, out]). */
export const isLinear = (name: string) => name.endsWith('_proj.weight') || name === 'lm_head.weight' || /\.lora_[AB]\.weight$/.test(name)

/** [rows, cols] row-major -> [cols, rows]. */
export function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length)
  for (let r = 0; r < rows; r++) {
    const base = r * cols
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[base + c]!
  }
  return out
}

/** Build a model from HF-layout tensors (`read(name)` gives the on-disk [out, in] data). */
export function modelFromTensors(config: ModelConfig, read: (name: string, shape: number[]) => Float32Array, trainable = true): Model {
  const params = new Map<string, tf.Variable>()
  for (const [name, shape] of parameterShapes(config)) {
    let data = read(name, shape)
    let memShape = shape
    if (isLinear(name)) {
      data = transpose2d(data, shape[0]!, shape[1]!)
      memShape = [shape[1]!, shape[0]!]
    }
    params.set(name, tf.variable(tf.tensor(data, memShape, 'float32'), trainable))
  }
  return { config, params }
}

/** HF's init: normal(0, initializer_range) for embeddings and projections, ones for norms. */
export function initModel(config: ModelConfig, rng: Rng, std = 0.02): Model {
  return modelFromTensors(config, (name, shape) => {
    const n = shape.reduce((a, d) => a * d, 1)
    const out = new Float32Array(n)
    if (name.endsWith('norm.weight')) out.fill(1)
    else for (let i = 0; i < n; i++) out[i] = std * rng.normal()
    return out
  })
}

/** On-disk ([out, in]) data of a parameter. */
export function diskData(model: Model, name: string): Float32Array {
  const v = model.params.get(name)!
  const data = v.dataSync() as Float32Array
  return isLinear(name) ? transpose2d(data, v.shape[0]!, v.shape[1]!) : data.slice()
}

export function disposeModel(model: Model): void {
  for (const v of model.params.values()) v.dispose()
}

// ---------------------------------------------------------------------------------------------------------
// blocks

type GradFn = (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[]

/** tf.customGrad with the inputs as an array (its own typing cannot express "tensors, then save"). */
function customGrad<T extends tf.Tensor[]>(f: (inputs: T, save: tf.GradSaveFunc) => { value: tf.Tensor; gradFunc: GradFn }): (...inputs: T) => tf.Tensor {
  return tf.customGrad(((...args: unknown[]) => {
    const save = args.pop() as tf.GradSaveFunc
    return f(args as T, save)
  }) as never) as never
}

/** x @ w with a gradient of plain matMuls (dx = dy @ wᵀ, dw = xᵀ @ dy) that stay on the fast kernel. */
export const linear: (x: tf.Tensor2D, w: tf.Tensor2D) => tf.Tensor2D = customGrad(([x, w]: [tf.Tensor2D, tf.Tensor2D], save) => {
  // save() clones what it keeps; weights are variables (never disposed by a tidy), so only x is saved
  save(w instanceof tf.Variable ? [x] : [x, w])
  return {
    value: tf.matMul(x, w),
    gradFunc: (dy, saved) => {
      const xs = saved[0] as tf.Tensor2D
      const ws = (saved[1] ?? w) as tf.Tensor2D
      return [tf.matMul(dy as tf.Tensor2D, tf.transpose(ws)), tf.matMul(tf.transpose(xs), dy as tf.Tensor2D)]
    },
  }
}) as never

/** Rows of the embedding table; the gradient scatters dy back onto the rows (duplicates summed). */
export function embed(table: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
  return gatherRows(table, ids)
}

/** table[ids] with a scatterND gradient (tf.gather's own gradient needs UnsortedSegmentSum, absent on wasm). */
export function gatherRows(table: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
  const f = customGrad(([t]: [tf.Tensor2D], save) => {
    save([ids]) // closure tensors must be saved, or the forward's tidy disposes them before the backward
    return {
      value: tf.gather(t, ids),
      gradFunc: (dy, [savedIds]) => tf.scatterND(tf.expandDims(savedIds!, 1), dy, t.shape),
    }
  })
  return f(table) as tf.Tensor2D
}

/** RMSNorm in fp32: x * rsqrt(mean(x²) + eps) * w. x: [N, D] */
export function rmsNorm(x: tf.Tensor2D, w: tf.Tensor1D, eps: number): tf.Tensor2D {
  const ms = tf.mean(tf.square(x), -1, true) // [N, 1]
  return tf.mul(tf.mul(x, tf.rsqrt(tf.add(ms, eps))), w)
}

/**
 * Where each token of a batch sits: its rope position and its branch. Plain rows are one causal sequence each
 * (position = index, branch 0). Packed pair rows (train/batch.ts `packPairs`) hold [prompt, chosen, rejected]:
 * the prompt is branch 0 and the completions branches 1 and 2, both continuing the prompt's positions, so one
 * packed row computes exactly what the two rows [prompt, chosen] and [prompt, rejected] would.
 */
export interface Packing {
  /** rope position of each token [B*T] */
  positions: Int32Array
  /** 0 = shared prompt, 1 / 2 = the completions, -1 = padding [B*T] */
  branch: Int32Array
}

export interface RopeTables {
  cos: tf.Tensor
  sin: tf.Tensor
  rot: tf.Tensor2D
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
 * Additive mask [Bm, 1, G*T, T] (Bm = 1 for plain rows, B when packed) for queries folded as rows g*T + i:
 * 0 where key j is visible from query i, -1e9 elsewhere. Visible: j ≤ i, j in the prompt or in i's own branch,
 * and within the sliding window of positions. Right padding sits after every real token, so no real token
 * sees it (padded positions are never scored).
 */
export function attentionMask(T: number, groups: number, window: number | null, packing?: Packing): tf.Tensor4D {
  const Bm = packing ? packing.positions.length / T : 1
  const m = new Float32Array(Bm * groups * T * T).fill(-1e9)
  for (let b = 0; b < Bm; b++) {
    const base = b * groups * T * T
    for (let i = 0; i < T; i++) {
      const bi = packing ? packing.branch[b * T + i]! : 0
      const pi = packing ? packing.positions[b * T + i]! : i
      for (let j = 0; j <= i; j++) {
        const bj = packing ? packing.branch[b * T + j]! : 0
        const pj = packing ? packing.positions[b * T + j]! : j
        if ((bj === 0 || bj === bi) && (window === null || pi - pj < window)) m[base + i * T + j] = 0
      }
    }
    for (let g = 1; g < groups; g++) m.copyWithin(base + g * T * T, base, base + T * T) // same rows for each query head of a group
  }
  return tf.tensor4d(m, [Bm, 1, groups * T, T])
}

export interface Ctx extends RopeTables {
  B: number
  T: number
  mask: tf.Tensor4D
}

/** A projection `module` (e.g. `model.layers.0.self_attn.q_proj`): x @ W, plus the LoRA branch when enabled. */
export function proj(model: Model, module: string, x: tf.Tensor2D): tf.Tensor2D {
  const y = linear(x, model.params.get(`${module}.weight`)! as unknown as tf.Tensor2D)
  const l = model.lora
  const a = l?.enabled ? model.params.get(`${module}.lora_A.weight`) : undefined
  if (!l || !a) return y
  const b = model.params.get(`${module}.lora_B.weight`)! as unknown as tf.Tensor2D
  const xd = l.training && l.dropout > 0 ? tf.dropout(x, l.dropout, undefined, l.seed * 1_000_003 + l.calls++) : x
  return tf.add(y, tf.mul(linear(linear(xd as tf.Tensor2D, a as unknown as tf.Tensor2D), b), l.alpha / l.r)) // [N, out]
}

/** Grouped-query self-attention. x: [B*T, D] -> [B*T, D] */
export function attention(model: Model, layer: number, x: tf.Tensor2D, ctx: Ctx): tf.Tensor2D {
  const c = model.config
  const p = (n: string, x: tf.Tensor2D) => proj(model, `model.layers.${layer}.self_attn.${n}`, x)
  const { B, T } = ctx
  const H = c.numHeads
  const KV = c.numKvHeads
  const G = H / KV
  const hd = c.headDim
  const q = rope(tf.reshape(p('q_proj', x), [B, T, H, hd]) as tf.Tensor4D, ctx.cos, ctx.sin, ctx.rot) // [B, T, H, hd]
  const k = rope(tf.reshape(p('k_proj', x), [B, T, KV, hd]) as tf.Tensor4D, ctx.cos, ctx.sin, ctx.rot) // [B, T, KV, hd]
  const v = tf.reshape(p('v_proj', x), [B, T, KV, hd]) // [B, T, KV, hd]
  // head h = kv*G + g shares kv head `kv` (HF repeat_kv): fold the G query heads of a kv head into rows
  const qf = tf.reshape(tf.transpose(q, [0, 2, 1, 3]), [B * KV, G * T, hd]) // [B*KV, G*T, hd]
  const kf = tf.reshape(tf.transpose(k, [0, 2, 1, 3]), [B * KV, T, hd]) // [B*KV, T, hd]
  const vf = tf.reshape(tf.transpose(v, [0, 2, 1, 3]), [B * KV, T, hd]) // [B*KV, T, hd]
  const scores = tf.reshape(tf.mul(tf.matMul(qf, kf, false, true), 1 / Math.sqrt(hd)), [B, KV, G * T, T]) // [B, KV, G*T, T]
  const probs = tf.softmax(tf.reshape(tf.add(scores, ctx.mask), [B * KV, G * T, T])) // [B*KV, G*T, T]
  const out = tf.matMul(probs, vf) // [B*KV, G*T, hd]
  const merged = tf.reshape(tf.transpose(tf.reshape(out, [B, H, T, hd]), [0, 2, 1, 3]), [B * T, H * hd]) as tf.Tensor2D // [B*T, H*hd]
  return p('o_proj', merged)
}

/** SwiGLU: down(silu(gate(x)) * up(x)). x: [B*T, D] */
export function mlp(model: Model, layer: number, x: tf.Tensor2D): tf.Tensor2D {
  const p = (n: string, x: tf.Tensor2D) => proj(model, `model.layers.${layer}.mlp.${n}`, x)
  const g = p('gate_proj', x) // [B*T, I]
  const silu = tf.mul(g, tf.sigmoid(g))
  return p('down_proj', tf.mul(silu, p('up_proj', x))) // [B*T, D]
}

/** Pre-norm residual block. */
export function block(model: Model, layer: number, x: tf.Tensor2D, ctx: Ctx): tf.Tensor2D {
  const eps = model.config.rmsNormEps
  const w = (n: string) => model.params.get(`model.layers.${layer}.${n}.weight`)! as unknown as tf.Tensor1D
  const h: tf.Tensor2D = tf.add(x, attention(model, layer, rmsNorm(x, w('input_layernorm'), eps), ctx))
  return tf.add(h, mlp(model, layer, rmsNorm(h, w('post_attention_layernorm'), eps)))
}

const maskCache = new Map<string, tf.Tensor4D>()
const ropeCache = new Map<string, { cos: tf.Tensor2D; sin: tf.Tensor2D }>()
const rotCache = new Map<number, tf.Tensor2D>()

/** Masks and rope tables of a batch: cached by shape for plain rows, built per batch for packed ones. */
function context(c: ModelConfig, B: number, T: number, packing?: Packing): Ctx {
  const G = c.numHeads / c.numKvHeads
  const hd = c.headDim
  if (!rotCache.has(hd)) rotCache.set(hd, tf.keep(rotateHalfMatrix(hd)))
  const rot = rotCache.get(hd)!
  if (packing) {
    const { cos, sin } = ropeAngles(packing.positions, hd, c.ropeTheta)
    return { B, T, mask: attentionMask(T, G, c.slidingWindow, packing), cos: tf.tensor3d(cos, [B, T, hd]), sin: tf.tensor3d(sin, [B, T, hd]), rot }
  }
  const rk = `${T}:${hd}:${c.ropeTheta}`
  if (!ropeCache.has(rk)) {
    const t = ropeTables(T, hd, c.ropeTheta)
    ropeCache.set(rk, { cos: tf.keep(t.cos), sin: tf.keep(t.sin) })
  }
  const mk = `${T}:${G}:${c.slidingWindow}`
  if (!maskCache.has(mk)) maskCache.set(mk, tf.keep(attentionMask(T, G, c.slidingWindow)))
  return { B, T, mask: maskCache.get(mk)!, ...ropeCache.get(rk)!, rot }
}

/** Free cached masks and rope tables (tests that check for leaks call this first). */
export function clearCaches(): void {
  for (const t of maskCache.values()) t.dispose()
  for (const t of ropeCache.values()) tf.dispose([t.cos, t.sin])
  for (const t of rotCache.values()) t.dispose()
  maskCache.clear()
  ropeCache.clear()
  rotCache.clear()
}

/** Final hidden states after the last norm. ids: int32 [B, T] -> [B*T, D]; `packing` for packed pair rows. */
export function hidden(model: Model, ids: tf.Tensor2D, packing?: Packing, layers?: (i: number, x: tf.Tensor2D) => void): tf.Tensor2D {
  const c = model.config
  const [B, T] = ids.shape
  const ctx = context(c, B, T, packing)
  let x = embed(model.params.get('model.embed_tokens.weight')! as unknown as tf.Tensor2D, tf.reshape(ids, [B * T]) as tf.Tensor1D) // [B*T, D]
  layers?.(-1, x)
  for (let i = 0; i < c.numLayers; i++) {
    x = block(model, i, x, ctx)
    layers?.(i, x)
  }
  return rmsNorm(x, model.params.get('model.norm.weight')! as unknown as tf.Tensor1D, c.rmsNormEps)
}

/** LM head: [N, D] -> logits [N, V] (tied: the embedding table, transposed). */
export function lmHead(model: Model, h: tf.Tensor2D): tf.Tensor2D {
  if (model.config.tieWordEmbeddings) return tf.matMul(h, model.params.get('model.embed_tokens.weight')! as unknown as tf.Tensor2D, false, true)
  return linear(h, model.params.get('lm_head.weight')! as unknown as tf.Tensor2D)
}

/** Logits [B*T, V] for int32 ids [B, T]. */
export function forward(model: Model, ids: tf.Tensor2D): tf.Tensor2D {
  return lmHead(model, hidden(model, ids))
}

/** d(log p(target)) / d(logits) scaled by dy, from the softmax probs [N, V]: dy · (onehot(t) − probs). */
function logProbGrad(probs: tf.Tensor2D, targets: tf.Tensor1D, dy: tf.Tensor1D): tf.Tensor2D {
  const [N, V] = probs.shape
  const hot = tf.reshape(tf.scatterND(tf.expandDims(flatPositions(targets, V), 1), dy, [N * V]), [N, V]) // dy at each target
  return tf.sub(hot, tf.mul(probs, tf.expandDims(dy, 1))) as tf.Tensor2D
}

/** Row-major positions i·V + t_i of the targets in a flattened [N, V] tensor. int32 [N] */
function flatPositions(targets: tf.Tensor1D, V: number): tf.Tensor1D {
  return tf.add(tf.mul(tf.range(0, targets.shape[0], 1, 'int32'), tf.scalar(V, 'int32')), targets)
}

/**
 * log p(target) per row, from logits [N, V] and int32 targets [N]: logits[i, t_i] - logsumexp(logits[i]).
 * logsumexp is taken as max − log(max softmax): the largest probability is ≥ 1/V, so its log cannot underflow,
 * and the softmax kernel is vectorised where exp is not (wasm, [1054, 32000]: 70 ms against 280 ms). The probs
 * are what the backward pass needs, dy · (onehot(t) − softmax), so they are saved instead of the logits.
 */
export function targetLogProbs(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Tensor1D {
  const [N, V] = logits.shape
  const f = customGrad(([l]: [tf.Tensor2D], save) => {
    const probs = tf.softmax(l) // [N, V]
    save([probs, targets])
    const picked = tf.gather(tf.reshape(l, [N * V]), flatPositions(targets, V)) // [N]
    const lse = tf.sub(tf.max(l, 1), tf.log(tf.max(probs, 1))) // [N]
    return {
      value: tf.sub(picked, lse),
      gradFunc: (dy, [savedProbs, savedTargets]) => logProbGrad(savedProbs as tf.Tensor2D, savedTargets as tf.Tensor1D, dy as tf.Tensor1D),
    }
  })
  return f(logits) as tf.Tensor1D
}

/**
 * Add LoRA adapters to `targets` (q_proj, …, down_proj) and freeze every base weight. A ~ kaiming_uniform(a=√5)
 * = U(−1/√in, 1/√in) as PEFT initialises it; B = 0, so the adapted model starts equal to the base.
 */
export function addLora(model: Model, o: { r: number; alpha: number; dropout: number; targets: string[] }, rng: Rng): void {
  for (const p of model.params.values()) p.trainable = false
  const known = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
  for (const t of o.targets) if (!known.includes(t)) throw new AlignError(`lora.target_modules: unknown module ${t}; choose from ${known.join(', ')}`)
  for (const [name, w] of [...model.params]) {
    const m = /^(model\.layers\.\d+\.(?:self_attn|mlp)\.(\w+_proj))\.weight$/.exec(name)
    if (!m || !o.targets.includes(m[2]!)) continue
    const [inDim, outDim] = w.shape as [number, number] // held as [in, out]
    const bound = 1 / Math.sqrt(inDim)
    const a = new Float32Array(inDim * o.r).map(() => (2 * rng.random() - 1) * bound)
    model.params.set(`${m[1]}.lora_A.weight`, tf.variable(tf.tensor2d(a, [inDim, o.r]), true)) // [in, r]
    model.params.set(`${m[1]}.lora_B.weight`, tf.variable(tf.zeros([o.r, outDim]), true)) // [r, out]
  }
  model.lora = { ...o, enabled: true, training: false, seed: 0, calls: 0 }
}

/** Run `f` with LoRA adapters on or off (and in eval mode), restoring the previous state. */
export function withAdapters<T>(model: Model, enabled: boolean, f: () => T): T {
  const l = model.lora
  if (!l) return f()
  const [e, t] = [l.enabled, l.training]
  l.enabled = enabled
  l.training = false
  try {
    return f()
  } finally {
    l.enabled = e
    l.training = t
  }
}

/** Scored tokens per chunk of the LM head (0 = auto: chunks of at most 2^27 logits, 512 MB, ~4k tokens at 32k vocab). */
let headChunkTokens = 0
export function setHeadChunkTokens(n: number): void {
  headChunkTokens = n
}

/**
 * Target log-probs [N] and mean logits [N] of the final hidden states h [N, D]. When the [N, V] logits would be
 * large they are never materialised whole: the head, log-softmax and target pick run over chunks of tokens in
 * the forward pass, and are recomputed chunk by chunk in the backward pass (dh = g Wᵀ, dW += hᵀ g with
 * g = dy·(onehot − softmax)), bounding memory by one chunk — the wasm heap stops at 4 GiB.
 */
export function headLogProbs(model: Model, h: tf.Tensor2D, targets: tf.Tensor1D): { logps: tf.Tensor1D; meanLogits: tf.Tensor1D } {
  const [N] = h.shape
  const V = model.config.vocabSize
  const chunk = headChunkTokens > 0 ? headChunkTokens : Math.max(1, Math.floor(2 ** 27 / V))
  const w = model.params.get('lm_head.weight') as unknown as tf.Tensor2D | undefined
  // mean over the vocabulary of h·W equals h · (mean column of W): no [N, V] pass for the logits/* metrics
  const meanColumn = w ? tf.mean(w, 1, true) : tf.reshape(tf.mean(model.params.get('model.embed_tokens.weight')!, 0), [-1, 1]) // [D, 1]
  const meanLogits = tf.reshape(tf.matMul(h, meanColumn), [N]) as tf.Tensor1D // [N]
  if (N <= chunk || !w || model.config.tieWordEmbeddings) return { logps: targetLogProbs(lmHead(model, h), targets), meanLogits }
  const starts = Array.from({ length: Math.ceil(N / chunk) }, (_, i) => i * chunk)
  const pieces = (t: tf.Tensor, s: number) => tf.slice(t, [s], [Math.min(chunk, N - s)])
  const f = customGrad(([hs, ws]: [tf.Tensor2D, tf.Tensor2D], save) => {
    save([hs, targets])
    const value = tf.concat(starts.map((s) => tf.tidy(() => {
      const hc = tf.slice(hs, [s, 0], [Math.min(chunk, N - s), -1]) as tf.Tensor2D // [C, D]
      return targetLogProbs(tf.matMul(hc, ws), pieces(targets, s) as tf.Tensor1D) // [C]; the [C, V] logits freed here
    })))
    return {
      value,
      gradFunc: (dy, [hSaved, tSaved]) => {
        const wT = tf.transpose(ws) // [V, D], once
        const dh: tf.Tensor[] = []
        let dw: tf.Tensor = tf.zerosLike(ws)
        for (const s of starts) {
          const [dhc, next] = tf.tidy(() => {
            const n = Math.min(chunk, N - s)
            const hc = tf.slice(hSaved!, [s, 0], [n, -1]) as tf.Tensor2D // [C, D]
            const g = logProbGrad(tf.softmax(tf.matMul(hc, ws)) as tf.Tensor2D, pieces(tSaved!, s) as tf.Tensor1D, pieces(dy, s) as tf.Tensor1D) // [C, V]
            return [tf.matMul(g, wT), tf.add(dw, tf.matMul(tf.transpose(hc), g))] // [C, D], [D, V]
          })
          dh.push(dhc!)
          dw.dispose()
          dw = next!
        }
        return [tf.concat(dh), dw]
      },
    }
  })
  return { logps: f(h, w) as tf.Tensor1D, meanLogits }
}
