/**
 * What training minimises and what it logs, for both stages, as small pure functions.
 *
 * DPO (Rafailov et al. 2023, arXiv 2305.18290) with the definitions of TRL's DPOTrainer (`dpo_loss`, v0.7–v0.19):
 *   Δ = (π_c − π_r) − (ref_c − ref_r)          on log-probs summed over completion tokens
 *   sigmoid: −(1−ε)·logσ(βΔ) − ε·logσ(−βΔ)      ε = label_smoothing (conservative DPO, Mitchell 2023)
 *   ipo:     (Δ − 1/(2β))²                        (Azar et al. 2023, arXiv 2310.12036; on summed log-probs)
 *   hinge:   relu(1 − βΔ)                         (SLiC, Zhao et al. 2023; RSO, Liu et al. 2023)
 * The batch loss is the mean over pairs. Implicit rewards β(π − ref) are logged only (no gradient), under TRL's
 * names (`get_batch_loss_metrics`): rewards/{chosen,rejected,accuracies,margins}, logps/*, logits/*.
 * SFT: the token-mean negative log-likelihood of the completion (assistant) tokens; under gradient accumulation the
 * mean over all the step's tokens, whatever the split (HF Trainer's `num_items_in_batch`, transformers >= 4.46).
 *
 * One `step` per objective serves training (with gradients), in-loop eval, `align eval` and the bench; one
 * `metrics` turns the per-batch numbers into a logged row. As HF Trainer does, a training row's loss is the mean
 * of its steps' losses and an eval row's is weighted by examples (pairs, or scored tokens for SFT).
 * logσ(x) is written −softplus(−x): tf.logSigmoid's gradient throws on non-variable inputs in tfjs 4.22.
 */
import * as tf from '@tensorflow/tfjs'
import { rowLogps, type RowLogps, type SeqBatch } from '../model/logprobs.ts'
import { withAdapters } from '../model/lora.ts'
import type { Model } from '../model/mistral.ts'
import { packPairs, padBatch, pairBatch, pairSequences, rowCounts, sftBatch, sftScoredTokens } from './batch.ts'
import { pairTokens, type PairIds } from './pairs.ts'
import type { PairLogps, Reference } from './reference.ts'

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

/**
 * The DPO loss of one token batch (rows [chosen…, rejected…], concatenated or packed) against the reference's
 * summed log-probs: the mean loss, the per-pair losses, and the per-row policy log-probs and logit sums.
 * `chunkTokens` > 0 forces the chunked LM head (model/logprobs.ts).
 */
export function dpoBatchLoss(model: Model, batch: SeqBatch, ref: PairLogps, o: DpoOptions, chunkTokens = 0): { loss: tf.Scalar; losses: tf.Tensor1D } & RowLogps {
  const n = batch.rows / 2
  const { logps, logitSums } = rowLogps(model, batch, chunkTokens)
  const [pc, pr] = tf.split(logps, [n, n]) as [tf.Tensor1D, tf.Tensor1D]
  const losses = dpoLosses(pc, pr, tf.tensor1d(ref.chosen), tf.tensor1d(ref.rejected), o)
  return { loss: tf.mean(losses) as tf.Scalar, losses, logps, logitSums }
}

/** Per-pair numbers of one batch: policy and reference log-probs, losses, logit sums and token counts. */
export interface PairStats {
  policy: PairLogps
  reference: PairLogps
  losses: number[]
  logitSum: { chosen: number; rejected: number }
  tokens: { chosen: number; rejected: number }
}

/** TRL's reward and log-prob metrics over pairs (ties count as wrong in rewards/accuracies). */
export function rewardMetrics(policy: PairLogps, reference: PairLogps, beta: number): Record<string, number> {
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(xs.length, 1)
  const rc = policy.chosen.map((p, i) => beta * (p - reference.chosen[i]!))
  const rr = policy.rejected.map((p, i) => beta * (p - reference.rejected[i]!))
  return {
    'rewards/chosen': mean(rc),
    'rewards/rejected': mean(rr),
    'rewards/accuracies': mean(rc.map((c, i) => (c > rr[i]! ? 1 : 0))),
    'rewards/margins': mean(rc.map((c, i) => c - rr[i]!)),
    'logps/chosen': mean(policy.chosen),
    'logps/rejected': mean(policy.rejected),
  }
}

/** What one batch contributes to a logged row. */
export interface BatchStats {
  /**
   * the batch's loss: its mean (eval), or in training its share of the step's loss times GA, so that the mean over a
   * step's micro-batches is the step's loss (DPO: the batch's mean either way)
   */
  loss: number
  /** what eval rows average the loss by: pairs (DPO) or scored tokens (SFT) */
  weight: number
  /** real tokens processed (tokens_per_second): a pair's prompt + chosen + rejected once */
  tokens: number
  /** DPO only */
  pairs?: PairStats
  /** the batch ran as packed pair rows */
  packed?: boolean
}

export type Layout = 'auto' | 'packed' | 'concatenated'

export interface Objective {
  stage: 'sft' | 'dpo'
  /**
   * The loss of one batch, differentiable, and `stats` to read the batch's numbers once the pass is done (reads are
   * async on some backends, so not inside tf.variableGrads; the tensors it reads are kept until then; the stats'
   * `loss` is filled by the caller). Without `scale`, the batch's mean (eval); with it (training, `stepScales`),
   * the batch's share of its optimizer step's loss: DPO its mean over pairs / scale, SFT its summed token NLL / scale.
   */
  step(model: Model, pairs: PairIds[], ref: PairLogps | undefined, padId: number, scale?: number): { loss: tf.Scalar; stats: () => Promise<Omit<BatchStats, 'loss'>> }
  /**
   * The `scale` of each micro-batch of an optimizer step, so that their gradients sum to the step's loss. DPO: GA
   * each, the mean of the micro-batch means (TRL's DPOTrainer under HF gradient accumulation; a mean over pairs
   * when micro-batches are the same size). SFT: the step's scored tokens, so the step's loss is the token mean over
   * all its micro-batches (HF Trainer's `num_items_in_batch` since transformers 4.46; before it, each micro-batch's
   * token mean / GA, which weights the tokens of a short micro-batch more).
   */
  stepScales(microBatches: PairIds[][]): number[]
  /** A logged row from the batches since the last one; keys get `prefix` (TRL: `eval_` for eval rows). */
  metrics(batches: BatchStats[], mode: 'train' | 'eval', prefix?: string): Record<string, number>
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0)
const mean = (xs: number[]) => sum(xs) / Math.max(1, xs.length)

function lossOf(batches: BatchStats[], mode: 'train' | 'eval'): number {
  if (mode === 'train') return mean(batches.map((b) => b.loss))
  return sum(batches.map((b) => b.loss * b.weight)) / Math.max(1, sum(batches.map((b) => b.weight)))
}

const withPrefix = (row: Record<string, number>, prefix: string) => Object.fromEntries(Object.entries(row).map(([k, v]) => [prefix + k, v]))

export function dpoObjective(o: DpoOptions, layout: Layout = 'auto'): Objective {
  return {
    stage: 'dpo',
    step(model, pairs, ref, padId, scale = 1) {
      const n = pairs.length
      const batch = layout === 'auto' ? pairBatch(pairs, padId, model.config) : layout === 'packed' ? packPairs(pairs, padId) : padBatch(pairSequences(pairs), padId)
      const { loss, losses, logps, logitSums } = dpoBatchLoss(model, batch, ref!, o)
      const kept = [logps, logitSums, losses].map((t) => tf.keep(t))
      const stats = async () => {
        const [lp, ls, ll] = (await Promise.all(kept.map((t) => t.data()))).map((d) => Array.from(d))
        tf.dispose(kept)
        const counts = rowCounts(batch)
        const pairStats: PairStats = {
          policy: { chosen: lp!.slice(0, n), rejected: lp!.slice(n, 2 * n) },
          reference: ref!,
          losses: ll!,
          logitSum: { chosen: sum(ls!.slice(0, n)), rejected: sum(ls!.slice(n, 2 * n)) },
          tokens: { chosen: sum(counts.slice(0, n)), rejected: sum(counts.slice(n, 2 * n)) },
        }
        return { weight: n, tokens: sum(pairs.map(pairTokens)), pairs: pairStats, packed: batch.packing !== undefined }
      }
      return { loss: tf.div(loss, scale) as tf.Scalar, stats }
    },
    stepScales: (microBatches) => microBatches.map(() => microBatches.length),
    metrics(batches, mode, prefix = mode === 'eval' ? 'eval_' : '') {
      const stats = batches.flatMap((b) => (b.pairs ? [b.pairs] : []))
      const row: Record<string, number> = { loss: lossOf(batches, mode) }
      if (stats.length) {
        const cat = (k: 'policy' | 'reference') => ({ chosen: stats.flatMap((s) => s[k].chosen), rejected: stats.flatMap((s) => s[k].rejected) })
        const tot = (k: 'logitSum' | 'tokens', side: 'chosen' | 'rejected') => sum(stats.map((s) => s[k][side]))
        Object.assign(row, rewardMetrics(cat('policy'), cat('reference'), o.beta))
        row['logits/chosen'] = tot('logitSum', 'chosen') / Math.max(1, tot('tokens', 'chosen'))
        row['logits/rejected'] = tot('logitSum', 'rejected') / Math.max(1, tot('tokens', 'rejected'))
      }
      return withPrefix(row, prefix)
    },
  }
}

export function sftObjective(): Objective {
  return {
    stage: 'sft',
    step(model, pairs, _ref, padId, scale) {
      const batch = sftBatch(pairs, padId)
      const scoredTokens = Math.max(1, batch.scored.index.length)
      const loss = tf.div(tf.neg(tf.sum(rowLogps(model, batch).logps)), scale ?? scoredTokens) as tf.Scalar
      return { loss, stats: async () => ({ weight: scoredTokens, tokens: batch.tokens }) }
    },
    stepScales(microBatches) {
      const stepTokens = Math.max(1, sum(microBatches.flat().map(sftScoredTokens)))
      return microBatches.map(() => stepTokens)
    },
    metrics(batches, mode, prefix = mode === 'eval' ? 'eval_' : '') {
      return withPrefix({ loss: lossOf(batches, mode) }, prefix)
    },
  }
}

/** One eval batch, no gradients, adapters on and no dropout. */
export async function evalBatch(objective: Objective, model: Model, pairs: PairIds[], ref: PairLogps | undefined, padId: number): Promise<BatchStats> {
  let stats: (() => Promise<Omit<BatchStats, 'loss'>>) | undefined
  const loss = tf.tidy(() => withAdapters(model, true, () => {
    const r = objective.step(model, pairs, ref, padId)
    stats = r.stats
    return r.loss
  }))
  const [lossData, batchStats] = await Promise.all([loss.data(), stats!()]) // one wait for the device
  loss.dispose()
  return { ...batchStats, loss: lossData[0]! }
}

export type EvalBatches = (batches: { pairs: PairIds[]; ref?: PairLogps }[]) => Promise<BatchStats[]>

/**
 * The objective on a pair set without gradients, `batchSize` pairs at a time: the eval row (with eval_runtime and
 * eval_samples_per_second, as HF's `evaluate`) and the per-batch numbers. `run` evaluates the batches elsewhere
 * (the workers of train/workers.ts); by default they run here, one after another.
 */
export async function evaluate(objective: Objective, model: Model, pairs: PairIds[], ref: Reference | undefined, o: { batchSize: number; padId: number; prefix?: string; onBatch?: (done: number) => void; run?: EvalBatches }): Promise<{ metrics: Record<string, number>; batches: BatchStats[] }> {
  const t0 = performance.now()
  const work: { pairs: PairIds[]; ref?: PairLogps }[] = []
  for (let i = 0; i < pairs.length; i += o.batchSize) {
    const idx = Array.from({ length: Math.min(o.batchSize, pairs.length - i) }, (_, j) => i + j)
    work.push({ pairs: idx.map((j) => pairs[j]!), ref: await ref?.logps(idx) })
  }
  const local: EvalBatches = async (bs) => {
    const out: BatchStats[] = []
    for (const [i, b] of bs.entries()) {
      o.onBatch?.(i * o.batchSize)
      out.push(await evalBatch(objective, model, b.pairs, b.ref, o.padId))
    }
    return out
  }
  const batches = await (o.run ?? local)(work)
  const secs = (performance.now() - t0) / 1000
  const prefix = o.prefix ?? 'eval_'
  const round = (x: number) => Math.round(x * 1e4) / 1e4
  return { metrics: { ...objective.metrics(batches, 'eval', prefix), [`${prefix}runtime`]: round(secs), [`${prefix}samples_per_second`]: round(pairs.length / secs) }, batches }
}
