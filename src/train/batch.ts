/**
 * Padded batches and summed completion log-probs.
 *
 * TRL's concatenated forward: a batch of n pairs is 2n right-padded rows, [chosen_0..chosen_{n-1},
 * rejected_0..rejected_{n-1}], each row prompt + completion, run through the model once. The log-prob of a
 * row is Σ_t mask_t · log π(x_{t+1} | x_≤t) where mask_t = 1 iff x_{t+1} is a completion token (prompt and
 * padding contribute nothing). Row lengths are padded up to a multiple of 16 so few distinct shapes occur.
 */
import * as tf from '@tensorflow/tfjs'
import { gatherRows, headLogProbs, hidden, withAdapters, type Model } from '../model/mistral.ts'

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

/**
 * Per-row summed completion log-probs, one forward pass. The LM head runs only at the scored positions
 * (completion tokens): prompt and padding positions never get [*, V] logits, which on a 32k vocabulary is
 * most of the step's compute and memory; large heads run in chunks of tokens (headLogProbs).
 */
export function rowLogps(model: Model, batch: SeqBatch): RowLogps {
  const { B, T } = batch
  const positions: number[] = []
  for (let i = 0; i < B * T; i++) if (batch.mask[i]) positions.push(i)
  const N = positions.length
  const select = new Float32Array(B * N) // [B, N]: 1 where scored position n belongs to row b
  positions.forEach((p, n) => (select[Math.floor(p / T) * N + n] = 1))
  if (N === 0) return { logps: tf.zeros([B]) as tf.Tensor1D, logitSums: tf.zeros([B]) as tf.Tensor1D }
  const h = hidden(model, tf.tensor2d(batch.ids, [B, T], 'int32')) // [B*T, D]
  const pos = tf.tensor1d(positions, 'int32')
  const targets = tf.tensor1d(positions.map((p) => batch.targets[p]!), 'int32')
  const { logps: lp, meanLogits } = headLogProbs(model, gatherRows(h, pos), targets) // [N], [N]
  const sel = tf.tensor2d(select, [B, N])
  const logps = tf.reshape(tf.matMul(sel, tf.reshape(lp, [N, 1])), [B]) as tf.Tensor1D // Σ per row
  const logitSums = tf.reshape(tf.matMul(sel, tf.reshape(meanLogits, [N, 1])), [B]) as tf.Tensor1D
  return { logps, logitSums }
}

/**
 * Summed completion log-probs of pairs, `batchSize` pairs per forward pass, no gradient: the reference
 * precompute, a frozen reference, and `align eval`. `adapters` false runs a LoRA model as its base.
 * `onBatch(done)` reports progress.
 */
export function pairLogps(model: Model, pairs: PairIds[], batchSize: number, adapters: boolean, onBatch?: (done: number) => void): { chosen: number[]; rejected: number[] } {
  const chosen: number[] = []
  const rejected: number[] = []
  for (let i = 0; i < pairs.length; i += batchSize) {
    onBatch?.(i)
    const chunk = pairs.slice(i, i + batchSize)
    const lp = withAdapters(model, adapters, () => tf.tidy(() => Array.from(rowLogps(model, padBatch(pairSequences(chunk), 0)).logps.dataSync())))
    chosen.push(...lp.slice(0, chunk.length))
    rejected.push(...lp.slice(chunk.length))
  }
  return { chosen, rejected }
}

/** Completion tokens per row. */
export function rowCounts(batch: SeqBatch): number[] {
  const out = new Array<number>(batch.B).fill(0)
  for (let b = 0; b < batch.B; b++) for (let t = 0; t < batch.T; t++) out[b]! += batch.mask[b * batch.T + t]!
  return out
}
