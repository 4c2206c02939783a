/**
 * Padded batches and summed completion log-probs.
 *
 * TRL's concatenated forward: a batch of n pairs is 2n right-padded rows, [chosen_0..chosen_{n-1},
 * rejected_0..rejected_{n-1}], each row prompt + completion, run through the model once. The log-prob of a
 * row is Σ_t mask_t · log π(x_{t+1} | x_≤t) where mask_t = 1 iff x_{t+1} is a completion token (prompt and
 * padding contribute nothing). Row lengths are padded up to a multiple of 16 so few distinct shapes occur.
 */
import * as tf from '@tensorflow/tfjs'
import { forward, targetLogProbs, type Model } from '../model/mistral.ts'

export interface Sequence {
  ids: number[]
  /** index of the first completion (scored) token */
  completionStart: number
}

export interface SeqBatch {
  ids: Int32Array
  targets: Int32Array
  mask: Float32Array
  B: number
  T: number
  /** real (non-pad) tokens */
  tokens: number
}

export interface PairIds {
  promptIds: number[]
  chosenIds: number[]
  rejectedIds: number[]
}

export function pairSequences(pairs: PairIds[]): Sequence[] {
  const row = (p: PairIds, c: number[]) => ({ ids: [...p.promptIds, ...c], completionStart: p.promptIds.length })
  return [...pairs.map((p) => row(p, p.chosenIds)), ...pairs.map((p) => row(p, p.rejectedIds))]
}

export function padBatch(seqs: Sequence[], padId: number, multiple = 16): SeqBatch {
  const B = seqs.length
  const longest = Math.max(...seqs.map((s) => s.ids.length))
  const T = Math.ceil(longest / multiple) * multiple
  const ids = new Int32Array(B * T).fill(padId)
  const targets = new Int32Array(B * T).fill(padId)
  const mask = new Float32Array(B * T)
  let tokens = 0
  seqs.forEach((s, b) => {
    const L = s.ids.length
    tokens += L
    for (let t = 0; t < L; t++) ids[b * T + t] = s.ids[t]!
    for (let t = 0; t + 1 < L; t++) {
      targets[b * T + t] = s.ids[t + 1]!
      if (t + 1 >= s.completionStart) mask[b * T + t] = 1
    }
  })
  return { ids, targets, mask, B, T, tokens }
}

export interface RowLogps {
  /** Σ completion log-probs per row [B] (differentiable) */
  logps: tf.Tensor1D
  /** Σ over completion tokens of the token's mean logit over the vocabulary [B] (logged only; not part of the loss) */
  logitSums: tf.Tensor1D
}

/** Per-row summed completion log-probs, one forward pass. */
export function rowLogps(model: Model, batch: SeqBatch): RowLogps {
  const { B, T } = batch
  const logits = forward(model, tf.tensor2d(batch.ids, [B, T], 'int32')) // [B*T, V]
  const mask = tf.tensor1d(batch.mask)
  const lp = tf.mul(targetLogProbs(logits, tf.tensor1d(batch.targets, 'int32')), mask) // [B*T]
  const logps = tf.sum(tf.reshape(lp, [B, T]), 1) as tf.Tensor1D // [B]
  const meanLogit = tf.mul(tf.mean(logits, 1), mask) // [B*T]
  const logitSums = tf.sum(tf.reshape(meanLogit, [B, T]), 1) as tf.Tensor1D // [B]
  return { logps, logitSums }
}

/** Completion tokens per row. */
export function rowCounts(batch: SeqBatch): number[] {
  const out = new Array<number>(batch.B).fill(0)
  for (let b = 0; b < batch.B; b++) for (let t = 0; t < batch.T; t++) out[b]! += batch.mask[b * batch.T + t]!
  return out
}
