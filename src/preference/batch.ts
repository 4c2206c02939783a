/**
 * Token batches of pairs, in the two layouts that give the same log-probs (model/logprobs.ts `rowLogps`).
 *
 * TRL's concatenated forward: a batch of n pairs is 2n right-padded rows, [chosen_0..chosen_{n-1},
 * rejected_0..rejected_{n-1}], each row prompt + completion, run through the model once. The log-prob of a
 * row is Σ_t mask_t · log π(x_{t+1} | x_≤t) where mask_t = 1 iff x_{t+1} is a completion token (prompt and
 * padding contribute nothing). Row lengths are padded up to a multiple of 16 so few distinct shapes occur.
 *
 * `packPairs` computes the same numbers with the prompt run once per pair: row i is [prompt, chosen, rejected]
 * and the attention mask keeps the two completions from seeing each other (model/mistral.ts `Packing`), so the
 * model runs on P + C + R tokens per pair instead of 2P + C + R.
 */
import type { ModelConfig } from '../model/config.ts'
import type { Scored, SeqBatch } from '../model/logprobs.ts'
import { pairTokens, type PairIds } from './pairs.ts'

export interface Sequence {
  ids: number[]
  /** index of the first completion (scored) token */
  completionStart: number
}

/** Concatenated rows [chosen_0..chosen_{n-1}, rejected_0..rejected_{n-1}], each prompt + completion. */
export function pairSequences(pairs: PairIds[]): Sequence[] {
  const row = (p: PairIds, c: number[]) => ({ ids: [...p.promptIds, ...c], completionStart: p.promptIds.length })
  return [...pairs.map((p) => row(p, p.chosenIds)), ...pairs.map((p) => row(p, p.rejectedIds))]
}

/** Row lengths are rounded up to a multiple of this, so few distinct shapes occur. */
const PAD_MULTIPLE = 16
const roundUp = (n: number, multiple: number) => Math.ceil(n / multiple) * multiple

/**
 * The first position of a row whose next token is scored: the one before the completion. An empty prompt leaves the
 * first completion token unpredicted.
 */
const scoredFrom = (completionStart: number) => Math.max(0, completionStart - 1)

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
    for (let t = scoredFrom(s.completionStart); t + 1 < L; t++) {
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

/** SFT rows: prompt + chosen completion, loss on the completion (assistant) tokens only. */
export function sftBatch(pairs: PairIds[], padId: number): SeqBatch {
  return padBatch(pairs.map((p) => ({ ids: [...p.promptIds, ...p.chosenIds], completionStart: p.promptIds.length })), padId)
}

/** The tokens sftBatch scores for a pair, from its lengths alone (padBatch's positions scoredFrom … L − 2). */
export function sftScoredTokens(p: PairIds): number {
  const P = p.promptIds.length
  return Math.max(0, P + p.chosenIds.length - 1 - scoredFrom(P))
}

/** Completion tokens per row. */
export function rowCounts(batch: SeqBatch): number[] {
  const out = new Array<number>(batch.rows).fill(0)
  for (const r of batch.scored.row) out[r]!++
  return out
}
