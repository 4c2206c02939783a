/**
 * Summed completion log-probs per row of a token batch, the quantity DPO and SFT are both written in:
 * log π(row) = Σ_t mask_t · log π(x_{t+1} | x_≤t), mask_t = 1 iff x_{t+1} is a scored (completion) token.
 * The LM head runs only at the scored positions: prompt and padding positions never get [*, V] logits, which on
 * a 32k vocabulary is most of the step's compute and memory. How rows are laid out (concatenated or packed
 * pairs) is the caller's business (preference/batch.ts); this file only reads a `SeqBatch`.
 */
import * as tf from '@tensorflow/tfjs'
import { blockedHeadLogProbs, chunkedHeadLogProbs, gatherRows, type HeadBackward } from './autograd.ts'
import { backendLimits } from './backend.ts'
import { hidden, param, type Model, type Packing } from './mistral.ts'

/** The scored tokens of a batch: the flat position [B*T] whose hidden state predicts `target`, summed into `row`. */
export interface Scored {
  index: number[]
  target: number[]
  row: number[]
}

/** Token ids [B, T] (right-padded) with the tokens to score, and the packing of pair rows if any. */
export interface SeqBatch {
  /** token ids [B*T], right-padded */
  ids: Int32Array
  B: number
  T: number
  /** real (non-pad) tokens */
  tokens: number
  /** sequences whose log-probs are summed: B, or 2 per packed pair row */
  rows: number
  scored: Scored
  packing?: Packing
}

export interface RowLogps {
  /** Σ completion log-probs per row [rows] (differentiable) */
  logps: tf.Tensor1D
  /** Σ over scored tokens of the token's mean logit over the vocabulary [rows] (logged only; not in the loss) */
  logitSums: tf.Tensor1D
}

/** Largest [tokens, vocab] block the head computes at once: 2^27 floats, 512 MB (~4k tokens at 32k vocab). */
const HEAD_BLOCK = 2 ** 27

/**
 * Tokens per head chunk: a block's worth, and no more than the backend holds in one tensor or can index exactly
 * (the target log-probs are picked at flat positions i·V + t_i of the chunk's [C, V] logits).
 */
export function headChunkTokens(V: number): number {
  const { maxTensorBytes, maxIndex } = backendLimits()
  return Math.max(1, Math.floor(Math.min(HEAD_BLOCK, maxTensorBytes / 4, maxIndex) / V))
}

/**
 * Columns of the vocabulary the head takes at a time (autograd.ts `blockedHeadLogProbs`): products contract over
 * at most this many, and a block's [tokens, columns] logits stay a few MB (wasm, 536 tokens × 32k vocab: the
 * head's three products 960 → 780 ms in blocks of 4096; 2048 measured the same within this machine's noise).
 */
export const HEAD_VOCAB_BLOCK = 4096

/** Whether `model`'s LM head can hand its weight gradient on (deferringHeadGrad): its own weights, trained. */
export const headDeferrable = (model: Model): boolean => !model.config.tieWordEmbeddings && model.params.get(HEAD)?.trainable === true

/** the untied LM head's weights */
export const HEAD = 'lm_head.weight'

/** where the head's weight gradient goes while deferringHeadGrad runs */
let deferTo: ((d: HeadBackward) => void) | undefined

/**
 * Run `f` (a forward and backward pass, tf.variableGrads without the head's weights) with the LM head's weight
 * gradient left out of autograd: each head the forward runs hands it to `to` in the backward, as a HeadBackward
 * (autograd.ts), for the caller to compute once the rest of the backward is done — where a replica that finished
 * first can take some of it (handoff.ts). Only for a headDeferrable model; every other pass returns its gradients as usual.
 */
export function deferringHeadGrad<T>(to: (d: HeadBackward) => void, f: () => T): T {
  deferTo = to
  try {
    return f()
  } finally {
    deferTo = undefined
  }
}

/**
 * Target log-probs [N] and mean logits [N] of final hidden states h [N, D]: the head in blocks of the vocabulary,
 * or, for more tokens than one [tokens, vocab] block holds, in chunks of `chunkTokens` tokens (default: a
 * block's worth), recomputed in the backward pass.
 */
export function headLogProbs(model: Model, h: tf.Tensor2D, targets: readonly number[], chunkTokens = 0): { logps: tf.Tensor1D; meanLogits: tf.Tensor1D } {
  const [N] = h.shape
  const V = model.config.vocabSize
  const chunk = chunkTokens > 0 ? chunkTokens : headChunkTokens(V)
  const tied = model.config.tieWordEmbeddings
  const table = param<tf.Rank.R2>(model, tied ? 'model.embed_tokens.weight' : HEAD) // [V, D] tied, [D, V] untied
  const defer = deferTo && headDeferrable(model) ? deferTo : undefined
  // the mean over the vocabulary of h·W is h · (mean column of W): no [N, V] pass for the logits/* metrics
  const meanColumn = tied ? tf.reshape(tf.mean(table, 0), [-1, 1]) : tf.mean(table, 1, true) // [D, 1]
  const meanLogits = tf.reshape(tf.matMul(h, meanColumn), [N]) as tf.Tensor1D // [N]
  const w = tied ? tf.transpose(table) : table // [D, V] either way
  if (N <= chunk) return { logps: blockedHeadLogProbs(h, w, targets, HEAD_VOCAB_BLOCK, defer), meanLogits }
  return { logps: chunkedHeadLogProbs(h, w, tf.tensor1d(targets as number[], 'int32'), chunk, defer), meanLogits }
}

/** Per-row summed completion log-probs and logit sums of a batch, one forward pass. */
export function rowLogps(model: Model, batch: SeqBatch, chunkTokens = 0): RowLogps {
  const { B, T, rows, scored } = batch
  const N = scored.index.length
  if (N === 0) return { logps: tf.zeros([rows]) as tf.Tensor1D, logitSums: tf.zeros([rows]) as tf.Tensor1D }
  const select = new Float32Array(rows * N) // [rows, N]: 1 where scored token n belongs to row r
  scored.row.forEach((r, n) => (select[r * N + n] = 1))
  const h = hidden(model, tf.tensor2d(batch.ids, [B, T], 'int32'), batch.packing) // [B*T, D]
  const pos = tf.tensor1d(scored.index, 'int32')
  const { logps: lp, meanLogits } = headLogProbs(model, gatherRows(h, pos), scored.target, chunkTokens) // [N], [N]
  const sel = tf.tensor2d(select, [rows, N])
  const logps = tf.reshape(tf.matMul(sel, tf.reshape(lp, [N, 1])), [rows]) as tf.Tensor1D // Σ per row
  const logitSums = tf.reshape(tf.matMul(sel, tf.reshape(meanLogits, [N, 1])), [rows]) as tf.Tensor1D
  return { logps, logitSums }
}
