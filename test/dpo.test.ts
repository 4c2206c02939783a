// DPO losses and metrics against the golden of tiny-mistral-random/expected/dpo.json (TRL definitions, β = 0.1),
// and summed completion log-probs of the tiny Mistral policy/reference (measured within 4.6e-5; allowed 5e-4).
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { dpoLosses, rewardMetrics, type LossType } from '../src/preference/objective.ts'
import { packPairs, padBatch, pairSequences, rowCounts } from '../src/preference/batch.ts'
import { rowLogps } from '../src/model/logprobs.ts'
import { loadModel } from '../src/model/weights.ts'
import { disposeModel } from '../src/model/mistral.ts'
import { FIXTURES } from './helpers.ts'
import { useBackend } from './tfjs-helpers.ts'

const tf = await useBackend('cpu')
const BACKENDS = ['cpu', 'wasm'] // the reference backend and the fast CPU one: the math must not depend on it
const DIR = join(FIXTURES, 'tiny-mistral-random')
const golden = JSON.parse(readFileSync(join(DIR, 'expected', 'dpo.json'), 'utf8'))
const pairs = golden.pairs as { prompt_ids: number[]; chosen_ids: number[]; rejected_ids: number[]; policy_chosen_logp: number; policy_rejected_logp: number; reference_chosen_logp: number; reference_rejected_logp: number }[]
const rel = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-12)

for (const backend of BACKENDS) test(`${backend}: loss of every type and the reward metrics match TRL within 1e-5 relative`, async () => {
  await useBackend(backend)
  const col = (k: keyof (typeof pairs)[number]) => tf.tensor1d(pairs.map((p) => p[k] as number))
  const cases: [string, LossType, number][] = [['sigmoid', 'sigmoid', 0], ['sigmoid_label_smoothing_0.1', 'sigmoid', 0.1], ['ipo', 'ipo', 0], ['hinge', 'hinge', 0]]
  for (const [key, lossType, labelSmoothing] of cases) {
    const loss = tf.tidy(() => tf.mean(dpoLosses(col('policy_chosen_logp'), col('policy_rejected_logp'), col('reference_chosen_logp'), col('reference_rejected_logp'), { beta: golden.beta, lossType, labelSmoothing })).dataSync()[0]!)
    const want = golden.metrics[key]
    assert.ok(rel(loss, want.loss) < 1e-5, `${key}: ${loss} vs ${want.loss}`)
  }
  const m = rewardMetrics({ chosen: pairs.map((p) => p.policy_chosen_logp), rejected: pairs.map((p) => p.policy_rejected_logp) }, { chosen: pairs.map((p) => p.reference_chosen_logp), rejected: pairs.map((p) => p.reference_rejected_logp) }, golden.beta)
  for (const k of ['rewards/chosen', 'rewards/rejected', 'rewards/accuracies', 'rewards/margins', 'logps/chosen', 'logps/rejected']) {
    assert.ok(rel(m[k]!, golden.metrics.sigmoid[k]) < 1e-5, `${k}: ${m[k]} vs ${golden.metrics.sigmoid[k]}`)
  }
})

test('rewards/accuracies counts ties as wrong', () => {
  const m = rewardMetrics({ chosen: [-1, -2], rejected: [-1, -3] }, { chosen: [0, 0], rejected: [0, 0] }, 0.1)
  assert.is(m['rewards/accuracies'], 0.5)
})

for (const backend of BACKENDS) test(`${backend}: summed completion log-probs of policy and reference, concatenated rows and packed pairs, within 5e-4`, async () => {
  await useBackend(backend)
  const ids = pairs.map((p) => ({ promptIds: p.prompt_ids, chosenIds: p.chosen_ids, rejectedIds: p.rejected_ids }))
  const concatenated = padBatch(pairSequences(ids), 2)
  const packed = packPairs(ids, 2)
  const counts = [...pairs.map((p) => p.chosen_ids.length), ...pairs.map((p) => p.rejected_ids.length)]
  assert.equal(rowCounts(concatenated), counts)
  assert.equal(rowCounts(packed), counts)
  for (const [who, keyC, keyR] of [['policy', 'policy_chosen_logp', 'policy_rejected_logp'], ['reference', 'reference_chosen_logp', 'reference_rejected_logp']] as const) {
    const model = loadModel(join(DIR, who))
    const want = [...pairs.map((p) => p[keyC]), ...pairs.map((p) => p[keyR])]
    for (const [layout, batch] of [['concatenated', concatenated], ['packed', packed]] as const) {
      const got = tf.tidy(() => rowLogps(model, batch).logps.arraySync())
      got.forEach((g, i) => assert.ok(Math.abs(g - want[i]!) < 5e-4, `${who} ${layout} row ${i}: ${g} vs ${want[i]}`))
    }
    disposeModel(model)
  }
})

test.run()
