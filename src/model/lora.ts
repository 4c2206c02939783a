/**
 * LoRA (Hu et al. 2021, arXiv 2106.09685) as PEFT applies it to a linear layer: W x + (alpha / r) · B A dropout(x),
 * with A ~ kaiming_uniform(a=√5) = U(−1/√in, 1/√in) and B = 0, so the adapted model starts equal to the base.
 * Adapters live in the model's parameter map as `<module>.lora_A.weight` [in, r] and `<module>.lora_B.weight`
 * [r, out] (PEFT's names without the `base_model.model.` prefix, held transposed like every projection).
 *
 * Dropout is seeded, not drawn from a hidden counter: module m's mask in a training forward pass uses the seed
 * `dropoutSeed · 1,000,003 + ordinal(m)`, where the caller passes `dropoutSeed` per micro-batch. A resumed run
 * therefore draws the same masks as an uninterrupted one.
 */
import * as tf from '@tensorflow/tfjs'
import { variableOf } from './backend.ts'
import { AlignError } from '../errors.ts'
import type { Rng } from '../rng.ts'
import { linear } from './autograd.ts'
import { param, type Model } from './mistral.ts'

export const LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const

export interface LoraOptions {
  r: number
  alpha: number
  dropout: number
  targets: string[]
}

export interface LoraState extends LoraOptions {
  /** false = the base model (TRL's reference with adapters disabled) */
  enabled: boolean
  /** set while a training forward pass applies dropout; undefined = no dropout (eval, reference) */
  dropoutSeed: number | undefined
  /** module name -> its place among the adapted modules (the dropout stream of that module) */
  ordinal: Map<string, number>
}

/** Add adapters to every projection named in `o.targets` and freeze every base weight. */
export function addLora(model: Model, o: LoraOptions, rng: Rng): void {
  for (const t of o.targets) if (!(LORA_TARGETS as readonly string[]).includes(t)) throw new AlignError(`lora.target_modules: unknown module ${t}; choose from ${LORA_TARGETS.join(', ')}`)
  for (const p of model.params.values()) p.trainable = false
  const ordinal = new Map<string, number>()
  for (const [name, w] of [...model.params]) {
    const m = /^(model\.layers\.\d+\.(?:self_attn|mlp)\.(\w+_proj))\.weight$/.exec(name)
    if (!m || !o.targets.includes(m[2]!)) continue
    const [inDim, outDim] = w.shape as [number, number] // held as [in, out]
    const bound = 1 / Math.sqrt(inDim)
    const a = new Float32Array(inDim * o.r).map(() => (2 * rng.random() - 1) * bound)
    model.params.set(`${m[1]}.lora_A.weight`, variableOf(tf.tensor2d(a, [inDim, o.r]), true)) // [in, r]
    model.params.set(`${m[1]}.lora_B.weight`, variableOf(tf.zeros([o.r, outDim]), true)) // [r, out]
    ordinal.set(m[1]!, ordinal.size)
  }
  model.lora = { ...o, enabled: true, dropoutSeed: undefined, ordinal }
}

/** The adapter branch of projection `module` for input x [N, in], or undefined when it has none (or adapters are off). */
export function loraDelta(model: Model, module: string, x: tf.Tensor2D): tf.Tensor2D | undefined {
  const l = model.lora
  if (!l?.enabled || !model.params.has(`${module}.lora_A.weight`)) return undefined
  const [a, b] = [param<tf.Rank.R2>(model, `${module}.lora_A.weight`), param<tf.Rank.R2>(model, `${module}.lora_B.weight`)]
  const seed = l.dropoutSeed === undefined || l.dropout === 0 ? undefined : l.dropoutSeed * 1_000_003 + l.ordinal.get(module)!
  const xd = seed === undefined ? x : (tf.dropout(x, l.dropout, undefined, seed) as tf.Tensor2D)
  return tf.mul(linear(linear(xd, a), b), l.alpha / l.r) as tf.Tensor2D // [N, out]
}

/**
 * Run `f` with adapters on or off and no dropout, or — with `dropoutSeed` — in training mode; the previous
 * state is restored afterwards. A model without adapters just runs `f`.
 */
export function withAdapters<T>(model: Model, enabled: boolean, f: () => T, dropoutSeed?: number): T {
  const l = model.lora
  if (!l) return f()
  const [e, s] = [l.enabled, l.dropoutSeed]
  l.enabled = enabled
  l.dropoutSeed = dropoutSeed
  try {
    return f()
  } finally {
    l.enabled = e
    l.dropoutSeed = s
  }
}
