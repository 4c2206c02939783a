/**
 * Padded batches and summed completion log-probs.
 *
 * TRL's concatenated forward: a batch of n pairs is 2n right-padded rows, [chosen_0..chosen_{n-1},
 * rejected_0..rejected_{n-1}], each row prompt + completion, run through the model once. The log-prob of a
 * row is Σ_t mask_t · log π(x_{t+1} | x_≤t) where mask_t = 1 iff x_{t+1} is a completion token (prompt and
 * padding contribute nothing). Row lengths are padded up to a multiple of 16 so few distinct shapes occur.
 *
 * `packPairs` computes the same numbers with the prompt run once per pair: row i is [prompt, chosen, rejected]
 * and the attention mask keeps the two completions from seeing each other (mistral.ts `Packing`), so the
 * model runs on P + C + R tokens per pair instead of 2P + C + R.
 */
import * as tf from '@tensorflow/tfjs'
import type { ModelConfig } from '../model/config.ts'
import { gatherRows, headLogProbs, hidden, withAdapters, type Model, type Packing } from '../model/mistral.ts'

export interface Sequence {
  ids: number[]
  /** index of the first completion (scored) token */
  completionStart: number
}

/** The scored tokens of a batch: the flat position [B*T] whose hidden state predicts `target`, summed into `row`. */
export interface Scored {
  index: number[]
  target: number[]
  row: number[]
}

export interface SeqBatch {
  /** token ids [B*T], right-padded */
  ids: Int32Array
  B: number
  T: number
  /** real (non-pad) tokens */
  tokens: number
  /** sequences whose log-probs are summed: B, or 2 per pair when pairs are packed (chosen rows first) */
  rows: number
  scored: Scored
  packing?: Packing
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

/** Row lengths are rounded up to a multiple of this, so few distinct shapes occur. */
const PAD_MULTIPLE = 16
const roundUp = (n: number, multiple: number) => Math.ceil(n / multiple) * multiple
/** Tokens of a pair, counted once: prompt + chosen + rejected (a packed row's length, what tokens/s counts). */
export const pairTokens = (p: PairIds) => p.promptIds.length + p.chosenIds.length + p.rejectedIds.length

export function padBatch(seqs: Sequence[], padId: number, multiple = PAD_MULTIPLE): SeqBatch {
  const B = seqs.length
  const T = roundUp(Math.max(...seqs.map((s) => s.ids.length)), multiple)
  const ids = new Int32Array(B * T).fill(padId)
  const scored: Scored = { index: [], target: [], row: [] }
  let tokens = 0
  seqs.forEach((s, b) => {
    const L = s.ids.length
    tokens += L
    for (let t = 0; t < L; t++) ids[b * T + t] = s.ids[t]!
    for (let t = Math.max(0, s.completionStart - 1); t + 1 < L; t++) {
      scored.index.push(b * T + t)
      scored.target.push(s.ids[t + 1]!)
      scored.row.push(b)
    }
  })
  return { ids, B, T, tokens, rows: B, scored }
}

/**
 * Pairs packed one per row as [prompt, chosen, rejected] (positions of both completions continue the prompt's;
 * see mistral.ts `Packing`). The first rejected token is predicted from the last prompt token, like the first
 * chosen one. Output rows are [chosen_0..chosen_{n-1}, rejected_0..rejected_{n-1}], as in `pairSequences`.
 */
export function packPairs(pairs: PairIds[], padId: number, multiple = PAD_MULTIPLE): SeqBatch {
  const n = pairs.length
  const T = roundUp(Math.max(...pairs.map(pairTokens)), multiple)
  const ids = new Int32Array(n * T).fill(padId)
  const positions = new Int32Array(n * T)
  const branch = new Int32Array(n * T).fill(-1)
  const scored: Scored = { index: [], target: [], row: [] }
  let tokens = 0
  pairs.forEach((p, b) => {
    const P = p.promptIds.length
    const C = p.chosenIds.length
    const put = (tokenIds: number[], at: number, firstPos: number, br: number) => tokenIds.forEach((id, j) => {
      ids[b * T + at + j] = id
      positions[b * T + at + j] = firstPos + j
      branch[b * T + at + j] = br
    })
    put(p.promptIds, 0, 0, 0)
    put(p.chosenIds, P, P, 1)
    put(p.rejectedIds, P + C, P, 2)
    tokens += pairTokens(p)
    const score = (index: number, target: number, row: number) => {
      if (index < b * T) return // an empty prompt leaves the first completion token unpredicted, as in padBatch
      scored.index.push(index)
      scored.target.push(target)
      scored.row.push(row)
    }
    p.chosenIds.forEach((id, j) => score(b * T + P - 1 + j, id, b))
    p.rejectedIds.forEach((id, j) => score(b * T + (j === 0 ? P - 1 : P + C + j - 1), id, n + b))
  })
  return { ids, B: n, T, tokens, rows: 2 * n, scored, packing: { positions, branch } }
}

/**
 * The batch of pairs a training step runs: packed or concatenated, whichever the decoder does with fewer FLOPs.
 * Packing saves the second prompt but makes rows longer, and attention grows with the square of a row's length:
 * it wins when prompts are long against completions (the Zephyr recipes: prompts up to 512 of 1024 tokens),
 * not with short prompts. Both give the same log-probs (tested), so the choice is only about speed.
 */
export function pairBatch(pairs: PairIds[], padId: number, c: ModelConfig): SeqBatch {
  const longest = (f: (p: PairIds) => number) => roundUp(Math.max(...pairs.map(f)), PAD_MULTIPLE) // T of each layout
  const packed = decoderFlops(pairs.length, longest(pairTokens), c)
  const concatenated = decoderFlops(2 * pairs.length, longest((p) => p.promptIds.length + Math.max(p.chosenIds.length, p.rejectedIds.length)), c)
  return packed <= concatenated ? packPairs(pairs, padId) : padBatch(pairSequences(pairs), padId)
}

/** Forward FLOPs of the decoder layers on B rows of T tokens: projections and MLP per token, attention per (query, key). */
export function decoderFlops(B: number, T: number, c: ModelConfig): number {
  const qkvo = c.hiddenSize * c.headDim * (2 * c.numHeads + 2 * c.numKvHeads)
  const perToken = 2 * (qkvo + 3 * c.hiddenSize * c.intermediateSize)
  const perKey = 2 * 2 * c.numHeads * c.headDim // scores and weighted values
  return c.numLayers * B * (T * perToken + T * T * perKey)
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
  const { B, T, rows, scored } = batch
  const N = scored.index.length
  if (N === 0) return { logps: tf.zeros([rows]) as tf.Tensor1D, logitSums: tf.zeros([rows]) as tf.Tensor1D }
  const select = new Float32Array(rows * N) // [rows, N]: 1 where scored token n belongs to row r
  scored.row.forEach((r, n) => (select[r * N + n] = 1))
  const h = hidden(model, tf.tensor2d(batch.ids, [B, T], 'int32'), batch.packing) // [B*T, D]
  const pos = tf.tensor1d(scored.index, 'int32')
  const { logps: lp, meanLogits } = headLogProbs(model, gatherRows(h, pos), tf.tensor1d(scored.target, 'int32')) // [N], [N]
  const sel = tf.tensor2d(select, [rows, N])
  const logps = tf.reshape(tf.matMul(sel, tf.reshape(lp, [N, 1])), [rows]) as tf.Tensor1D // Σ per row
  const logitSums = tf.reshape(tf.matMul(sel, tf.reshape(meanLogits, [N, 1])), [rows]) as tf.Tensor1D
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
    const lp = withAdapters(model, adapters, () => tf.tidy(() => Array.from(rowLogps(model, pairBatch(chunk, 0, model.config)).logps.dataSync())))
    chosen.push(...lp.slice(0, chunk.length))
    rejected.push(...lp.slice(chunk.length))
  }
  return { chosen, rejected }
}

/** Completion tokens per row. */
export function rowCounts(batch: SeqBatch): number[] {
  const out = new Array<number>(batch.rows).fill(0)
  for (const r of batch.scored.row) out[r]!++
  return out
}
