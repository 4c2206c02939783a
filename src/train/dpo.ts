/**
 * DPO losses and metrics as small pure functions.
 *
 * Direct Preference Optimization (Rafailov et al. 2023, arXiv 2305.18290), with the definitions of TRL's
 * DPOTrainer (v0.7.7–v0.19 `dpo_loss`; the project's reference notes, dpo-anchors.md §1.1–1.2, §1.6):
 *   Δ = (π_c − π_r) − (ref_c − ref_r)          on log-probs summed over completion tokens
 *   sigmoid: −(1−ε)·logσ(βΔ) − ε·logσ(−βΔ)      ε = label_smoothing (conservative DPO, Mitchell 2023)
 *   ipo:     (Δ − 1/(2β))²                        (Azar et al. 2023; on summed log-probs, as TRL 0.7.7)
 *   hinge:   relu(1 − βΔ)                         (SLiC / RSO, Zhao et al. 2023; Liu et al. 2023)
 * The batch loss is the mean over pairs. Implicit rewards β(π − ref) are logged only (no gradient).
 * logσ(x) is written −softplus(−x): tf.logSigmoid's gradient throws on non-variable inputs in tfjs 4.22.
 */
import * as tf from '@tensorflow/tfjs'
import type { Model } from '../model/mistral.ts'
import { rowLogps, type SeqBatch } from './batch.ts'

export const LOSS_TYPES = ['sigmoid', 'ipo', 'hinge'] as const
export type LossType = (typeof LOSS_TYPES)[number]

export interface DpoOptions {
  beta: number
  lossType: LossType
  labelSmoothing: number
}

/** logσ(x) = −softplus(−x), stable for large |x|. */
export const logSigmoid = (x: tf.Tensor) => tf.neg(tf.softplus(tf.neg(x)))

/** Per-pair DPO loss [B] from summed completion log-probs [B] of policy and reference. */
export function dpoLosses(policyChosen: tf.Tensor1D, policyRejected: tf.Tensor1D, refChosen: tf.Tensor1D, refRejected: tf.Tensor1D, o: DpoOptions): tf.Tensor1D {
  const delta = tf.sub(tf.sub(policyChosen, policyRejected), tf.sub(refChosen, refRejected)) // Δ [B]
  switch (o.lossType) {
    case 'sigmoid': {
      const z = tf.mul(delta, o.beta)
      const eps = o.labelSmoothing
      return tf.sub(tf.mul(logSigmoid(z), -(1 - eps)), tf.mul(logSigmoid(tf.neg(z)), eps)) as tf.Tensor1D
    }
    case 'ipo':
      return tf.square(tf.sub(delta, 1 / (2 * o.beta))) as tf.Tensor1D
    case 'hinge':
      return tf.relu(tf.sub(1, tf.mul(delta, o.beta))) as tf.Tensor1D
  }
}

/** TRL's logged numbers for one batch, from plain per-pair values. */
export interface PairValues {
  policyChosen: number[]
  policyRejected: number[]
  refChosen: number[]
  refRejected: number[]
}

export function rewardMetrics(v: PairValues, beta: number): Record<string, number> {
  const n = v.policyChosen.length
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(xs.length, 1)
  const rc = v.policyChosen.map((p, i) => beta * (p - v.refChosen[i]!))
  const rr = v.policyRejected.map((p, i) => beta * (p - v.refRejected[i]!))
  return {
    'rewards/chosen': mean(rc),
    'rewards/rejected': mean(rr),
    'rewards/accuracies': mean(rc.map((c, i) => (c > rr[i]! ? 1 : 0))), // ties count as wrong
    'rewards/margins': mean(rc.map((c, i) => c - rr[i]!)),
    'logps/chosen': mean(v.policyChosen),
    'logps/rejected': mean(v.policyRejected),
    pairs: n,
  }
}

/**
 * The DPO loss of one concatenated batch (rows [chosen…, rejected…]) given the reference's summed log-probs.
 * Returns the scalar loss plus the per-row policy log-probs and logit sums for the metrics.
 */
export function dpoBatchLoss(model: Model, batch: SeqBatch, refChosen: number[], refRejected: number[], o: DpoOptions): { loss: tf.Scalar; logps: tf.Tensor1D; logitSums: tf.Tensor1D } {
  const n = batch.rows / 2
  const { logps, logitSums } = rowLogps(model, batch)
  const [pc, pr] = tf.split(logps, [n, n]) as [tf.Tensor1D, tf.Tensor1D]
  const loss = tf.mean(dpoLosses(pc, pr, tf.tensor1d(refChosen), tf.tensor1d(refRejected), o)) as tf.Scalar
  return { loss, logps, logitSums }
}
