/**
 * Optimizers and learning-rate schedules, written out to match PyTorch / HF Trainer exactly:
 * - AdamW (Loshchilov & Hutter; torch.optim.AdamW): p ← p·(1 − lr·wd); m ← β1·m + (1−β1)·g;
 *   v ← β2·v + (1−β2)·g²; p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε). tfjs's adam has no decoupled weight decay
 *   and defaults ε to 1e-7, so it cannot reproduce the recipes (ε 1e-8).
 * - RMSprop (torch.optim.RMSprop defaults, the Zephyr-era handbook's `optim: rmsprop`): g ← g + wd·p (torch's
 *   weight decay is L2 here, not decoupled); v ← α·v + (1−α)·g²; p ← p − lr · g / (√v + ε), α = 0.99.
 * - Schedules as transformers' get_{linear,cosine,constant}_schedule_with_warmup; warmup steps =
 *   ceil(warmup_ratio · total steps).
 * - Global-norm gradient clipping (torch.nn.utils.clip_grad_norm_; the norm itself: microbatch.ts `normOf`); the
 *   logged grad_norm is the norm before clipping.
 */
import * as tf from '@tensorflow/tfjs'
import { variableOf } from '../model/backend.ts'

export const OPTIMIZERS = ['adamw', 'rmsprop'] as const
export const SCHEDULES = ['linear', 'cosine', 'constant'] as const

export interface OptimConfig {
  optimizer: (typeof OPTIMIZERS)[number]
  beta1: number
  beta2: number
  eps: number
  weightDecay: number
  rmspropAlpha: number
}

/** torch's AdamW defaults, for tools that need an optimizer config but never step it (eval, bench). */
export const ADAMW_DEFAULTS: OptimConfig = { optimizer: 'adamw', beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, rmspropAlpha: 0.99 }

/** Optimizer state: one or two moment tensors per parameter, keyed by HF name, and the step count. */
export class Optimizer {
  step = 0
  readonly m = new Map<string, tf.Variable>()
  readonly v = new Map<string, tf.Variable>()

  constructor(readonly config: OptimConfig) {}

  /** Apply one update with learning rate `lr` to `params` given gradients by name. */
  apply(params: Map<string, tf.Variable>, grads: Map<string, tf.Tensor>, lr: number): void {
    this.step++
    const c = this.config
    for (const [name, p] of params) {
      const g = grads.get(name)
      if (!g) continue
      if (!this.v.has(name)) {
        this.v.set(name, variableOf(tf.zerosLike(p), false))
        if (c.optimizer === 'adamw') this.m.set(name, variableOf(tf.zerosLike(p), false))
      }
      const v = this.v.get(name)!
      tf.tidy(() => {
        if (c.optimizer === 'adamw') {
          const m = this.m.get(name)!
          const bc1 = 1 - c.beta1 ** this.step
          const bc2 = 1 - c.beta2 ** this.step
          m.assign(tf.add(tf.mul(m, c.beta1), tf.mul(g, 1 - c.beta1)))
          v.assign(tf.add(tf.mul(v, c.beta2), tf.mul(tf.square(g), 1 - c.beta2)))
          const decayed = c.weightDecay > 0 ? tf.mul(p, 1 - lr * c.weightDecay) : p
          const denom = tf.add(tf.div(tf.sqrt(v), Math.sqrt(bc2)), c.eps)
          p.assign(tf.sub(decayed, tf.mul(tf.div(m, denom), lr / bc1)))
        } else {
          const gd = c.weightDecay > 0 ? tf.add(g, tf.mul(p, c.weightDecay)) : g // torch RMSprop: L2 on the gradient
          v.assign(tf.add(tf.mul(v, c.rmspropAlpha), tf.mul(tf.square(gd), 1 - c.rmspropAlpha)))
          p.assign(tf.sub(p, tf.mul(tf.div(gd, tf.add(tf.sqrt(v), c.eps)), lr)))
        }
      })
    }
  }

  dispose(): void {
    for (const t of [...this.m.values(), ...this.v.values()]) t.dispose()
    this.m.clear()
    this.v.clear()
  }
}

/** lr multiplier for (0-based) optimizer step `step` of `total`, after `warmup` warmup steps. */
export function lrLambda(kind: (typeof SCHEDULES)[number], step: number, total: number, warmup: number): number {
  if (step < warmup) return step / Math.max(1, warmup)
  if (kind === 'constant') return 1
  const progress = (step - warmup) / Math.max(1, total - warmup)
  if (kind === 'linear') return Math.max(0, (total - step) / Math.max(1, total - warmup))
  return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)))
}

export const warmupSteps = (ratio: number, total: number) => Math.ceil(ratio * total)

/** The factor clipping multiplies the gradients by, torch's max_norm / (total_norm + 1e-6); undefined: no clipping. */
export const clipScale = (norm: number, maxNorm: number): number | undefined => (maxNorm > 0 && norm > maxNorm ? maxNorm / (norm + 1e-6) : undefined)
