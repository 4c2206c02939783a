// `align bench dpo`: the fields scripts read (with --profile), and no tensor leak across steps (numTensors flat).
import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { benchDpo } from '../src/commands/bench.ts'
import { rejects, tmp } from './helpers.ts'

/** A 1-layer Mistral config.json in `dir`, vocab 300. */
const writeConfig = (dir: string) => writeFileSync(join(dir, 'config.json'), JSON.stringify({ architectures: ['MistralForCausalLM'], vocab_size: 300, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, rms_norm_eps: 1e-5, rope_theta: 10000, sliding_window: 64 }))

test('bench dpo on a 1-layer model: pairs/s, tokens/s counted once per pair, flat tensor count', async () => {
  const dir = tmp()
  writeConfig(dir)
  writeFileSync(join(dir, 'pairs.jsonl'), [0, 1, 2].map((i) => JSON.stringify({ prompt_ids: [1, 5 + i, 7, 9], chosen_ids: [11, 12, 2], rejected_ids: [13, 2], reference_chosen_logp: -17, reference_rejected_logp: -11 })).join('\n'))
  const r = await benchDpo({ model: join(dir, 'config.json'), pairs: join(dir, 'pairs.jsonl'), batchPairs: 2, steps: 3, warmup: 1, backend: 'wasm', layout: 'packed', profile: true })
  assert.is(r.backend, 'wasm')
  assert.is(r.tensors_flat, true)
  assert.ok((r.pairs_per_second as number) > 0)
  // 9 tokens per pair (4 prompt + 3 chosen + 2 rejected): tokens/s = 9 x pairs/s
  assert.ok(Math.abs((r.tokens_per_second as number) / (r.pairs_per_second as number) - 9) < 0.1)
  // the profiled step found matMuls and timed them against the plain 2-D matMul
  for (const k of ['matmul_gflops_in_step', 'matmul_gflops_best_plain', 'matmul_efficiency']) assert.ok((r[k] as number) > 0, `${k}: ${r[k]}`)
  assert.ok((r.matmul_share_of_kernel_time as number) > 0 && (r.matmul_share_of_kernel_time as number) <= 1)
})

test('bench dpo --paired with 2 workers: the one-worker steps timed apart, the scaling between them, the same weights', async () => {
  const dir = tmp()
  writeConfig(dir)
  writeFileSync(join(dir, 'pairs.jsonl'), [0, 1, 2, 3].map((i) => JSON.stringify({ prompt_ids: [1, 5 + i, 7, 9], chosen_ids: [11, 12, 2], rejected_ids: [13, 2] })).join('\n'))
  const r = await benchDpo({ model: join(dir, 'config.json'), pairs: join(dir, 'pairs.jsonl'), batchPairs: 4, steps: 2, warmup: 1, backend: 'wasm', layout: 'packed', workers: 2, paired: true, compareHandoff: true })
  assert.is(r.workers, 2)
  // --compare-handoff: the same workers without the LM head's hand-off, timed apart, with the same weights
  assert.is(r.no_handoff_same_weights, true)
  assert.ok(Math.abs((r.handoff_speedup as number) - (r.pairs_per_second as number) / (r.no_handoff_pairs_per_second as number)) < 0.01)
  // per timed step; a 300-token vocabulary is one block: the other replica's, or none
  assert.ok((r.head_blocks_taken as number[]).length === 2 && (r.head_blocks_taken as number[]).every((n) => n === 0 || n === 1), String(r.head_blocks_taken))
  assert.is(r.tensors_flat, true)
  assert.is(r.one_worker_same_weights, true) // the same micro-batches on one worker: the same weights, bit for bit
  const [two, one] = [r.pairs_per_second as number, r.one_worker_pairs_per_second as number]
  assert.ok(two > 0 && one > 0)
  assert.ok(Math.abs((r.workers_scaling as number) - two / one) < 0.02, `${r.workers_scaling} vs ${two / one}`)
  assert.ok(Math.abs((r.one_worker_step_ms as number) - 4000 / one) < 2) // 4 pairs a step
  const whole = r.one_micro_batch_pairs_per_second as number // the 4 pairs as one micro-batch on one worker
  assert.ok(whole > 0 && Math.abs((r.workers_scaling_vs_one_micro_batch as number) - two / whole) < 0.02, `${r.workers_scaling_vs_one_micro_batch} vs ${two / whole}`)
  const plain = await benchDpo({ model: join(dir, 'config.json'), pairs: join(dir, 'pairs.jsonl'), batchPairs: 4, steps: 1, warmup: 0, backend: 'wasm', layout: 'packed', workers: 1, paired: true })
  assert.is(plain.one_worker_pairs_per_second, undefined) // one worker: nothing to pair with
  await rejects(() => benchDpo({ model: join(dir, 'config.json'), pairs: join(dir, 'pairs.jsonl'), batchPairs: 4, steps: 1, warmup: 0, backend: 'wasm', layout: 'packed', workers: 1, compareHandoff: true }), /^--compare-handoff: the hand-off is between workers; use --workers 2 or more$/)
})

test('bench dpo --micro-batches: a step in more micro-batches than workers, taken as they come, the same weights as one worker', async () => {
  const dir = tmp()
  writeConfig(dir)
  writeFileSync(join(dir, 'pairs.jsonl'), [0, 1, 2, 3].map((i) => JSON.stringify({ prompt_ids: [1, 5 + i, 7, 9].slice(0, 2 + i), chosen_ids: [11, 12, 2], rejected_ids: [13, 2] })).join('\n'))
  const args = { model: join(dir, 'config.json'), pairs: join(dir, 'pairs.jsonl'), batchPairs: 4, steps: 1, warmup: 1, backend: 'wasm', layout: 'packed' as const, workers: 2, paired: true }
  const r = await benchDpo({ ...args, microBatches: 4 })
  assert.is(r.micro_batches, 4)
  assert.is(r.one_worker_same_weights, true) // 4 micro-batches of one pair, on 2 workers and on one
  assert.ok((r.workers_scaling as number) > 0)
  assert.is(r.one_micro_batch_pairs_per_second, undefined) // the step as one micro-batch: only beside one micro-batch per worker
  for (const microBatches of [1, 5]) {
    await rejects(() => benchDpo({ ...args, microBatches }), new RegExp(`^--micro-batches ${microBatches}: a step needs a micro-batch per worker \\(2\\) and a pair per micro-batch \\(--batch-pairs 4\\); --micro-batches from 2 to 4$`))
  }
})

test('bench dpo --start-after: ready after the warm-up, the timed steps only once the file exists', async () => {
  const dir = tmp()
  writeConfig(dir)
  writeFileSync(join(dir, 'pairs.jsonl'), JSON.stringify({ prompt_ids: [1, 5, 7], chosen_ids: [11, 2], rejected_ids: [13, 2] }))
  const go = join(dir, 'go')
  let done = false
  const run = benchDpo({ model: join(dir, 'config.json'), pairs: join(dir, 'pairs.jsonl'), batchPairs: 1, steps: 1, warmup: 1, backend: 'wasm', layout: 'packed', startAfter: go }).finally(() => (done = true))
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
  while (!existsSync(`${go}.ready.${process.pid}`) && !done) await sleep(5)
  assert.ok(existsSync(`${go}.ready.${process.pid}`), 'the ready file')
  await sleep(300)
  assert.is(done, false) // waiting at the barrier
  writeFileSync(go, '')
  assert.ok(((await run).pairs_per_second as number) > 0)
})

test.run()
