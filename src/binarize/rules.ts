/**
 * Binarization rules as pure functions: one UltraFeedback row -> zero or more (chosen, rejected) pairs,
 * or the reason the row was dropped. The recipe's `binarize:` section picks the rule; every rule is
 * documented with its public source in recipes/*.yaml (H4's create_dataset.py, Argilla's dataset card).
 */
import type { Rng } from '../rng.ts'
import { ASPECTS, type Aspect, type Completion, type UFRow } from './ultrafeedback.ts'

export const SCORES = ['overall', 'mean_of_aspects', 'weighted', ...ASPECTS] as const
export const REJECTED = ['random_other', 'random_lower', 'lowest', 'all_pairs'] as const
export const DROP_REASONS = [
  'excluded_source',
  'excluded_prompt',
  'fewer_than_2_completions',
  'empty_response',
  'duplicate',
  'no_score',
  'tie',
  'below_margin',
  'identical_responses',
] as const
export type DropReason = (typeof DROP_REASONS)[number]

export interface RuleOptions {
  score: (typeof SCORES)[number]
  aspect_weights: Record<string, number>
  rejected: (typeof REJECTED)[number]
  min_margin: number
  drop_ties: boolean
  drop_empty_responses: boolean
  dedupe_responses: boolean
  exclude_sources: string[]
  /** exact prompts to drop (H4 drops instructions equal to a TruthfulQA question) */
  excludedPrompts?: Set<string>
  fix_overall_score_bug: boolean
}

export interface Scored extends Completion {
  index: number
  score: number
}
export interface Pair {
  chosen: Scored
  rejected: Scored
}
export type RowResult = { pairs: Pair[] } | { drop: DropReason }

/**
 * The critique score, with OpenBMB's 2023-12-29 fix applied when asked: a critique score of 1 was stored
 * as 10 (`score if score > 1 else 10*score`); completions at 10 whose fine-grained score is <= 2 are set
 * back to 1, as the maintainers did (the (2, 4] band they re-annotated with GPT-4 cannot be redone here).
 */
export function overallScore(c: Completion, fix: boolean): number | null {
  const s = c.overallScore
  if (s === null || !fix || s !== 10) return s
  const fg = c.fineGrainedScore ?? meanOfAspects(c.ratings)
  return fg !== null && fg <= 2 ? 1 : s
}

/** Mean of the aspect ratings, skipping "N/A" (OpenBMB's fine-grained score); null if all are N/A. */
export function meanOfAspects(ratings: Record<Aspect, number | null>): number | null {
  return weightedMean(ratings, { helpfulness: 1, honesty: 1, instruction_following: 1, truthfulness: 1 })
}

/** Weighted mean of the rated aspects, the weights renormalised over the aspects that have a rating. */
export function weightedMean(ratings: Record<Aspect, number | null>, weights: Record<string, number>): number | null {
  let sum = 0
  let wsum = 0
  for (const a of ASPECTS) {
    const r = ratings[a]
    const w = weights[a] ?? 0
    if (r === null || w === 0) continue
    sum += w * r
    wsum += w
  }
  return wsum > 0 ? sum / wsum : null
}

export function scoreOf(c: Completion, o: RuleOptions): number | null {
  switch (o.score) {
    case 'overall': return overallScore(c, o.fix_overall_score_bug)
    case 'mean_of_aspects': return meanOfAspects(c.ratings)
    case 'weighted': return weightedMean(c.ratings, o.aspect_weights)
    default: return c.ratings[o.score]
  }
}

/** Apply the filters, then the pairing rule. `rng` is asked for only when a random draw is needed. */
export function binarizeRow(row: UFRow, o: RuleOptions, rng: () => Rng): RowResult {
  if (o.exclude_sources.includes(row.source)) return { drop: 'excluded_source' }
  if (o.excludedPrompts?.has(row.instruction)) return { drop: 'excluded_prompt' }
  let cands = row.completions.map((c, index) => ({ ...c, index }))
  if (cands.length < 2) return { drop: 'fewer_than_2_completions' }
  if (o.drop_empty_responses) {
    cands = cands.filter((c) => c.response.trim() !== '')
    if (cands.length < 2) return { drop: 'empty_response' }
  }
  if (o.dedupe_responses) {
    const seen = new Set<string>()
    cands = cands.filter((c) => !seen.has(c.response.trim()) && seen.add(c.response.trim()))
    if (cands.length < 2) return { drop: 'duplicate' }
  }
  const scored: Scored[] = []
  for (const c of cands) {
    const score = scoreOf(c, o)
    if (score !== null) scored.push({ ...c, score })
  }
  if (scored.length < 2) return { drop: 'no_score' }
  if (o.rejected === 'all_pairs') return allPairs(scored, o.min_margin)

  const chosen = firstMax(scored)
  const others = scored.filter((c) => c !== chosen)
  let rejected: Scored
  switch (o.rejected) {
    case 'random_other': {
      // H4's create_dataset.py redraws `while rejected == chosen` on the (score, response, model) tuple,
      // so an exact copy of the chosen completion can never be the rejected one.
      const pool = others.filter((c) => !(c.score === chosen.score && c.response === chosen.response && c.model === chosen.model))
      if (pool.length === 0) return { drop: 'duplicate' }
      rejected = pool[rng().int(pool.length)]!
      if (o.drop_ties && rejected.score === chosen.score) return { drop: 'tie' }
      break
    }
    case 'random_lower': {
      const lower = others.filter((c) => c.score < chosen.score)
      if (lower.length === 0) return { drop: 'tie' }
      const pool = lower.filter((c) => chosen.score - c.score >= o.min_margin)
      if (pool.length === 0) return { drop: 'below_margin' }
      rejected = pool[rng().int(pool.length)]!
      break
    }
    case 'lowest':
      rejected = others.reduce((lo, c) => (c.score < lo.score ? c : lo))
      if (rejected.score === chosen.score) return { drop: 'tie' }
      break
  }
  if (chosen.score - rejected.score < o.min_margin) return { drop: 'below_margin' }
  // the same text on both sides (e.g. two empty responses) teaches nothing: Δ = 0 whatever the policy
  if (chosen.response === rejected.response) return { drop: 'identical_responses' }
  return { pairs: [{ chosen, rejected }] }
}

/** Every pair with a strictly positive score difference >= min_margin (UltraRM-style comparisons). */
function allPairs(scored: Scored[], minMargin: number): RowResult {
  const pairs: Pair[] = []
  let anyDiff = false
  for (let i = 0; i < scored.length; i++) {
    for (let j = i + 1; j < scored.length; j++) {
      const [a, b] = [scored[i]!, scored[j]!]
      if (a.score === b.score) continue
      anyDiff = true
      const [hi, lo] = a.score > b.score ? [a, b] : [b, a]
      if (hi.score - lo.score >= minMargin && hi.response !== lo.response) pairs.push({ chosen: hi, rejected: lo })
    }
  }
  if (pairs.length > 0) return { pairs }
  return { drop: anyDiff ? 'below_margin' : 'tie' }
}

/** The first completion with the highest score (Python's `max` keeps the first on ties). */
function firstMax(xs: Scored[]): Scored {
  return xs.reduce((best, c) => (c.score > best.score ? c : best))
}
