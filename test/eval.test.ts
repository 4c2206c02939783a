// `align eval` on pre-tokenized pairs against the tiny-mistral golden, and on an adapter whose base is the reference.
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { evaluatePairs } from '../src/commands/eval.ts'
import { FIXTURES, ROOT, rejects, tmp } from './helpers.ts'

const DIR = join(FIXTURES, 'tiny-mistral-random')
const golden = JSON.parse(readFileSync(join(DIR, 'expected', 'dpo.json'), 'utf8'))
const pairsFile = join(tmp(), 'pairs.jsonl')
writeFileSync(pairsFile, golden.pairs.map((p: any) => JSON.stringify({ prompt_ids: p.prompt_ids, chosen_ids: p.chosen_ids, rejected_ids: p.rejected_ids })).join('\n') + '\n')
const args = { policy: join(DIR, 'policy'), reference: join(DIR, 'reference'), pairs: pairsFile, beta: 0.1, loss: 'sigmoid' as const, labelSmoothing: 0, maxLength: 1024, maxPromptLength: 512, batchSize: 2, backend: 'wasm' }

test('pre-tokenized pairs: per-pair log-probs and TRL metrics match the golden', async () => {
  const out = join(tmp(), 'per-pair.jsonl')
  const { metrics, perPair } = await evaluatePairs({ ...args, out })
  golden.pairs.forEach((p: any, i: number) => {
    assert.ok(Math.abs(perPair[i]!.policy_chosen_logp! - p.policy_chosen_logp) < 5e-4) // measured 4.6e-5
    assert.ok(Math.abs(perPair[i]!.reference_rejected_logp! - p.reference_rejected_logp) < 5e-4)
  })
  const g = golden.metrics.sigmoid
  assert.ok(Math.abs(metrics.loss! - g.loss) < 1e-4)
  assert.is(metrics['rewards/accuracies'], g['rewards/accuracies'])
  assert.ok(Math.abs(metrics['rewards/margins']! - g['rewards/margins']) < 1e-4)
  // align eval reports the same names as training's eval rows, logits/* included
  for (const k of ['logits/chosen', 'logits/rejected', 'logps/chosen', 'rewards/chosen']) assert.ok(Number.isFinite(metrics[k]), k)
  assert.is(readFileSync(out, 'utf8').trim().split('\n').length, 3)
})

test('the CLI prints the metrics; a policy without --reference that is not an adapter is an error', async () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'eval', '--policy', args.policy, '--reference', args.reference, '--pairs', pairsFile, '--json', '--backend', 'wasm'], { cwd: ROOT, encoding: 'utf8' })
  assert.is(r.status, 0, r.stderr)
  assert.is(JSON.parse(r.stdout)['rewards/accuracies'], 1)
  await rejects(() => evaluatePairs({ ...args, reference: undefined }), /--reference is needed unless --policy is a LoRA adapter/)
})

test.run()
