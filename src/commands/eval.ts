/**
 * `align eval`: DPO metrics (TRL's names) of a policy against a reference on a pairs file (binarize output,
 * plain text pairs, or pre-tokenized `prompt_ids`/`chosen_ids`/`rejected_ids`), with per-pair log-probs and
 * rewards. The numbers come from the same objective and `evaluate` as training's eval rows.
 */
import { AlignError } from '../errors.ts'
import { writeFileAtomic } from '../files.ts'
import { Progress } from '../progress.ts'
import { initBackend } from '../model/backend.ts'
import { disposeModel } from '../model/mistral.ts'
import { describePolicy, policyTokenizer, resolvePolicy } from '../model/policy.ts'
import { dpoObjective, evaluate, type LossType } from '../preference/objective.ts'
import { loadPairs } from '../preference/pairs.ts'
import { liveReference, pairLogps, precomputedReference, type Reference } from '../preference/reference.ts'
import type { Model } from '../model/mistral.ts'
import { WorkerPool } from '../train/pool.ts'
import { workerCount, workerInit } from '../train/workers.ts'
import { ADAMW_DEFAULTS } from '../train/optim.ts'

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
  quiet?: boolean
  /** data-parallel workers (train/workers.ts): the same numbers for any count */
  workers?: number | 'auto'
}

export async function evaluatePairs(a: EvalArgs): Promise<{ metrics: Record<string, number>; perPair: Record<string, number>[] }> {
  if (!Number.isInteger(a.batchSize) || a.batchSize < 1) throw new AlignError(`--batch-size ${a.batchSize}: needs a whole number >= 1`)
  if (!Number.isInteger(a.maxLength) || a.maxLength < 2) throw new AlignError(`--max-length ${a.maxLength}: needs a whole number >= 2`)
  if (!Number.isInteger(a.maxPromptLength) || a.maxPromptLength < 1 || a.maxPromptLength >= a.maxLength) throw new AlignError(`--max-prompt-length ${a.maxPromptLength}: needs a whole number from 1 to --max-length - 1 (${a.maxLength - 1}), or completions are truncated away`)
  if (!(a.beta > 0)) throw new AlignError(`--beta ${a.beta}: needs a number > 0`)
  if (!(a.labelSmoothing >= 0 && a.labelSmoothing <= 0.5)) throw new AlignError(`--label-smoothing ${a.labelSmoothing}: needs a number from 0 to 0.5`)
  const backend = await initBackend(a.backend)
  const n = workerCount(a.workers ?? 1, backend).n
  const described = describePolicy(a.policy)
  if (!a.reference && described.kind !== 'adapter') throw new AlignError(`--reference is needed unless --policy is a LoRA adapter directory (whose base is then the reference)`)
  const tok = await policyTokenizer(described, { note: a.quiet ? undefined : (s) => void process.stderr.write(s + '\n') })
  const { model: policy } = resolvePolicy(a.policy, { trainable: false })
  const { pairs } = await loadPairs(a.pairs, tok, { maxLength: a.maxLength, maxPromptLength: a.maxPromptLength })
  const progress = new Progress('eval', { quiet: a.quiet ?? true })
  const dpo = { beta: a.beta, lossType: a.loss, labelSmoothing: a.labelSmoothing }
  const objective = dpoObjective(dpo)
  const onBatch = (label: string) => (done: number) => progress.update(done, pairs.length, label)
  const replicas = (model: Model) => WorkerPool.start(n, model, () => workerInit(model, backend.active, objective, dpo, tok.padId, ADAMW_DEFAULTS))
  let reference: Reference | undefined
  if (a.reference) {
    // a separate reference: scored over its own replicas and released before the policy's start
    const ref = resolvePolicy(a.reference, { trainable: false }).model
    const refPool = await replicas(ref)
    reference = precomputedReference(refPool ? await refPool.logps(pairs, a.batchSize, true, onBatch('reference pairs')) : await pairLogps(ref, pairs, a.batchSize, true, onBatch('reference pairs')))
    await refPool?.close()
    disposeModel(ref)
  }
  const pool = await replicas(policy)
  const run = async () => {
    // an adapter's base is the reference: the policy with adapters off, scored over the same replicas
    reference ??= pool ? precomputedReference(await pool.logps(pairs, a.batchSize, false, onBatch('reference pairs'))) : liveReference(policy, pairs, false)
    return evaluate(objective, policy, pairs, reference, { batchSize: a.batchSize, padId: tok.padId, prefix: '', onBatch: onBatch('pairs'), run: pool ? (bs) => pool.eval(objective, bs, tok.padId) : undefined })
  }
  const { metrics, batches } = await run().finally(() => pool?.close())
  disposeModel(policy)
  const bad = Object.entries(metrics).find(([, x]) => !Number.isFinite(x))
  if (bad) throw new AlignError(`${a.policy}${a.reference ? ` / ${a.reference}` : ''}: ${bad[0]} is ${bad[1]}: the log-probs are not finite, so a checkpoint holds NaN/Inf weights (align inspect --stats shows which tensors)`)
  const stats = batches.flatMap((b) => (b.pairs ? [b.pairs] : []))
  const col = (f: (s: (typeof stats)[number]) => number[]) => stats.flatMap(f)
  const [pc, pr, rc, rr, losses] = [col((s) => s.policy.chosen), col((s) => s.policy.rejected), col((s) => s.reference.chosen), col((s) => s.reference.rejected), col((s) => s.losses)]
  const perPair = pairs.map((_, i) => ({
    index: i,
    policy_chosen_logp: pc[i]!, policy_rejected_logp: pr[i]!, reference_chosen_logp: rc[i]!, reference_rejected_logp: rr[i]!,
    reward_chosen: a.beta * (pc[i]! - rc[i]!), reward_rejected: a.beta * (pr[i]! - rr[i]!), loss: losses[i]!,
  }))
  if (a.out) writeFileAtomic(a.out, perPair.map((x) => JSON.stringify(x)).join('\n') + '\n')
  progress.succeed(`eval: ${pairs.length} pairs`)
  return { metrics: { ...metrics, pairs: pairs.length }, perPair }
}
