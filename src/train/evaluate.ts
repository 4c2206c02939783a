/**
 * `align eval`: DPO metrics of a policy against a reference on a pairs file (binarize output, plain text pairs, or
 * pre-tokenized `prompt_ids`/`chosen_ids`/`rejected_ids`), with per-pair log-probs and rewards.
 */
import { renameSync, writeFileSync } from 'node:fs'
import * as tf from '@tensorflow/tfjs'
import { AlignError } from '../errors.ts'
import { initBackend } from '../model/backend.ts'
import { isAdapterDir, loadAny, tokenizerDirFor } from '../model/load.ts'
import { disposeModel } from '../model/mistral.ts'
import { loadTokenizer } from '../model/tokenizer.ts'
import { pairLogps } from './batch.ts'
import { loadPairs } from './data.ts'
import { dpoLosses, rewardMetrics, type LossType } from './dpo.ts'

export interface EvalArgs {
  policy: string
  reference?: string
  pairs: string
  beta: number
  loss: LossType
  labelSmoothing: number
  out?: string
  maxLength: number
  maxPromptLength: number
  batchSize: number
  backend?: string
}

export async function evaluatePairs(a: EvalArgs): Promise<{ metrics: Record<string, number>; perPair: Record<string, number>[] }> {
  await initBackend(a.backend)
  if (!a.reference && !isAdapterDir(a.policy)) throw new AlignError(`--reference is needed unless --policy is a LoRA adapter directory (whose base is then the reference)`)
  const { model: policy, baseDir } = loadAny(a.policy)
  const tok = loadTokenizer(tokenizerDirFor(a.policy, baseDir))
  const { pairs } = await loadPairs(a.pairs, tok, a.maxLength, a.maxPromptLength)
  const p = pairLogps(policy, pairs, a.batchSize, true)
  let r: { chosen: number[]; rejected: number[] }
  if (a.reference) {
    const ref = loadAny(a.reference).model
    r = pairLogps(ref, pairs, a.batchSize, true)
    disposeModel(ref)
  } else r = pairLogps(policy, pairs, a.batchSize, false)
  disposeModel(policy)
  const losses = tf.tidy(() => Array.from(dpoLosses(tf.tensor1d(p.chosen), tf.tensor1d(p.rejected), tf.tensor1d(r.chosen), tf.tensor1d(r.rejected), { beta: a.beta, lossType: a.loss, labelSmoothing: a.labelSmoothing }).dataSync()))
  const { pairs: _n, ...m } = rewardMetrics({ policyChosen: p.chosen, policyRejected: p.rejected, refChosen: r.chosen, refRejected: r.rejected }, a.beta)
  const metrics = { loss: losses.reduce((x, y) => x + y, 0) / Math.max(1, losses.length), ...m, pairs: pairs.length }
  const perPair = pairs.map((_, i) => ({
    index: i,
    policy_chosen_logp: p.chosen[i]!, policy_rejected_logp: p.rejected[i]!, reference_chosen_logp: r.chosen[i]!, reference_rejected_logp: r.rejected[i]!,
    reward_chosen: a.beta * (p.chosen[i]! - r.chosen[i]!), reward_rejected: a.beta * (p.rejected[i]! - r.rejected[i]!), loss: losses[i]!,
  }))
  if (a.out) {
    writeFileSync(a.out + '.tmp', perPair.map((x) => JSON.stringify(x)).join('\n') + '\n')
    renameSync(a.out + '.tmp', a.out)
  }
  return { metrics, perPair }
}
