// Data-parallel workers: every logged value and the final weights are bit-identical for 1 and 2 workers (full
// fine-tuning and LoRA with dropout, gradient accumulation, eval, the reference precompute), a resume may change
// the worker count, and a worker that dies ends the run with one line instead of a hang.
import { readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { loadRecipe } from '../src/recipe.ts'
import { TRAIN_SCHEMA } from '../src/train/schema.ts'
import { train } from '../src/train/loop.ts'
import { WorkerPool } from '../src/train/pool.ts'
import { stepGradients, takeJob, workerCount, workerInit } from '../src/train/workers.ts'
import { packPairs, packedCount, unpackPairs } from '../src/train/pairpack.ts'
import { disposeModel, type Model } from '../src/model/mistral.ts'
import { OrderedSum, applyUpdate, readGrads, shardOf, slotFloats, touchedRows, trainableParams, writeGrads } from '../src/train/microbatch.ts'
import { Ring, ringBuffers } from '../src/train/ring.ts'
import { AlignError } from '../src/errors.ts'
import { readInto } from '../src/model/backend.ts'
import * as tf from '@tensorflow/tfjs'
import { sftObjective } from '../src/preference/objective.ts'
import { ADAMW_DEFAULTS, Optimizer } from '../src/train/optim.ts'
import { initModel } from '../src/model/weights.ts'
import { parseConfig } from '../src/model/config.ts'
import { Rng } from '../src/rng.ts'
import { FIXTURES, rejects } from './helpers.ts'
import { TINY_CONFIG, tinyRun, useBackend } from './tfjs-helpers.ts'

test.before(async () => {
  await useBackend('wasm')
})
await useBackend('wasm')
const { work, base } = await tinyRun()
const recipe = (...o: string[]) => loadRecipe('tiny', TRAIN_SCHEMA, o)
const noTimes = (h: Record<string, number>[]) => h.map((r) => Object.fromEntries(Object.entries(r).filter(([k]) => !/runtime|per_second/.test(k))))
const weights = (dir: string, f = 'model.safetensors') => readFileSync(join(dir, f))

for (const [name, extra] of [['full fine-tuning', []], ['LoRA with dropout', ['lora.enabled=true', 'lora.r=4', 'lora.dropout=0.1', 'dpo.learning_rate=5e-2']]] as const) {
  test(`${name}: 1 and 2 workers log the same values and save the same weights, bit for bit`, async () => {
    const runs = []
    const held: number[] = [] // tensor bytes alive after each run
    // GA 5: a replica takes two or more micro-batches, and some come early and wait in the replicas (OrderedSum)
    for (const w of name.startsWith('LoRA') ? [1, 2] : [1, 2, 3]) { // 3: workers read each other's gradient slots (ring.ts)
      const out = join(work, `${name.split(' ')[0]}-w${w}`)
      runs.push({ out, r: await train({ stage: 'dpo', recipe: recipe(...base(out, 'dpo.max_steps=4', 'dpo.gradient_accumulation_steps=5', ...extra)), quiet: true, workers: w }) })
      held.push(tf.memory().numBytes)
    }
    // every run frees what it made, checkpoints' moments gathered from the workers too (the first may leave caches)
    assert.equal(held.slice(1), held.slice(1).map(() => held[0]))
    assert.ok(runs[0]!.r.logHistory.some((x) => x.eval_loss !== undefined))
    const f = name.startsWith('LoRA') ? 'adapter_model.safetensors' : 'model.safetensors'
    for (const run of runs.slice(1)) {
      assert.equal(noTimes(run.r.logHistory), noTimes(runs[0]!.r.logHistory))
      assert.ok(weights(run.out, f).equals(weights(runs[0]!.out, f)))
      // the optimizer is sharded over the replicas (each steps its part); the checkpoint gathers the same moments
      assert.ok(weights(join(run.out, 'checkpoint-4'), 'optimizer.safetensors').equals(weights(join(runs[0]!.out, 'checkpoint-4'), 'optimizer.safetensors')))
    }
  })
}

test('SFT and a resume that changes the worker count: still the uninterrupted numbers', async () => {
  const a = await train({ stage: 'sft', recipe: recipe(...base(join(work, 'sft-w1'), 'sft.gradient_accumulation_steps=2', 'sft.per_device_train_batch_size=2')), quiet: true, workers: 1 })
  const b = await train({ stage: 'sft', recipe: recipe(...base(join(work, 'sft-w2'), 'sft.gradient_accumulation_steps=2', 'sft.per_device_train_batch_size=2')), quiet: true, workers: 2 })
  assert.equal(noTimes(b.logHistory), noTimes(a.logHistory))
  const out = join(work, 'resume-w')
  await train({ stage: 'dpo', recipe: recipe(...base(out, 'dpo.max_steps=4')), quiet: true, workers: 2, stopAfter: 2 })
  const resumed = await train({ stage: 'dpo', recipe: recipe(...base(out, 'dpo.max_steps=4')), quiet: true, workers: 1, resume: 'latest' })
  const full = await train({ stage: 'dpo', recipe: recipe(...base(join(work, 'resume-full'), 'dpo.max_steps=4')), quiet: true, workers: 1 })
  assert.equal(noTimes(resumed.logHistory).filter((r) => r.loss !== undefined), noTimes(full.logHistory).filter((r) => r.loss !== undefined))
  // and into more workers: their optimizer replicas get the checkpoint's moments (all-reduce mode, GA 2)
  const out2 = join(work, 'resume-into-w2')
  await train({ stage: 'dpo', recipe: recipe(...base(out2, 'dpo.max_steps=4')), quiet: true, workers: 1, stopAfter: 2 })
  const resumed2 = await train({ stage: 'dpo', recipe: recipe(...base(out2, 'dpo.max_steps=4')), quiet: true, workers: 2, resume: 'latest' })
  assert.equal(noTimes(resumed2.logHistory).filter((r) => r.loss !== undefined), noTimes(full.logHistory).filter((r) => r.loss !== undefined))
  assert.ok(weights(out2).equals(weights(join(work, 'resume-full'))))
})

test('align eval: the same metrics and per-pair numbers with 1 and 2 workers', async () => {
  const { evaluatePairs } = await import('../src/commands/eval.ts')
  const { readFileSync: read, writeFileSync } = await import('node:fs')
  const DIR = join(FIXTURES, 'tiny-mistral-random')
  const golden = JSON.parse(read(join(DIR, 'expected', 'dpo.json'), 'utf8'))
  const file = join(work, 'golden-pairs.jsonl')
  writeFileSync(file, golden.pairs.map((p: any) => JSON.stringify({ prompt_ids: p.prompt_ids, chosen_ids: p.chosen_ids, rejected_ids: p.rejected_ids })).join('\n') + '\n')
  const args = { policy: join(DIR, 'policy'), reference: join(DIR, 'reference'), pairs: file, beta: 0.1, loss: 'sigmoid' as const, labelSmoothing: 0, maxLength: 1024, maxPromptLength: 512, batchSize: 1, backend: 'wasm', quiet: true }
  const [a, b] = [await evaluatePairs({ ...args, workers: 1 }), await evaluatePairs({ ...args, workers: 2 })]
  assert.equal(noTimes([b.metrics]), noTimes([a.metrics]))
  assert.equal(b.perPair, a.perPair)
})

test('gradient slots: gradients come back bit for bit, the embedding sent as its touched rows only', async () => {
  const model = initModel(parseConfig(TINY_CONFIG), Rng.fromKey('slots'))
  const pairs = [{ promptIds: [5, 900, 31999], chosenIds: [7, 7, 2], rejectedIds: [12, 2] }]
  const rows = touchedRows(model, pairs, 2)!
  assert.equal([...rows], [2, 5, 7, 12, 900, 31999])
  const grads = new Map(trainableParams(model).map(([name, p], i) => {
    const embed = name === 'model.embed_tokens.weight' // a scatter of the touched rows, +0 elsewhere (as autograd's)
    const values = (shape: number[]) => tf.mul(tf.randomNormal(shape, 0, 1, 'float32', i), 1 / 3) // made by a kernel, as a real gradient
    return [name, tf.tidy(() => (embed ? tf.scatterND(tf.tensor2d(rows, [rows.length, 1], 'int32'), values([rows.length, p.shape[1]!]), p.shape) : values(p.shape)))]
  }))
  const slot = new SharedArrayBuffer(slotFloats(model) * 4)
  await writeGrads(model, grads, rows, slot)
  const back = readGrads(model, slot, rows)
  for (const [name, g] of grads) {
    const [a, b] = [new Uint32Array((await g.data() as Float32Array).buffer), new Uint32Array((await back.get(name)!.data() as Float32Array).buffer)]
    assert.ok(a.length === b.length && a.every((x, i) => x === b[i]), name)
  }
  const out = new Float32Array(3)
  await readInto(tf.tensor([1.5, -0, 3]), out)
  assert.equal([...out], [1.5, -0, 3])
  const wrong = await readInto(tf.tensor([1, 2]), out).then(() => 'none', (e: Error) => e.message) // a bug, not bad input
  assert.is(wrong, 'readInto: a float32 tensor of 2 values into 3')
  tf.dispose([...grads.values(), ...back.values()])
})

/** Distinct gradients of micro-batch `a` for every trainable parameter, made by kernels as real ones (the embedding: a scatter of `rows`). */
const fakeGrads = (model: Model, rows: Int32Array, a: number) => new Map(trainableParams(model).map(([name, p], i) => [name, tf.tidy(() => {
  const v = (shape: number[]) => tf.mul(tf.randomNormal(shape, 0, 1, 'float32', 1 + 100 * a + i), 1 / 3) // seed 0 would be random
  return name === 'model.embed_tokens.weight' ? tf.scatterND(tf.tensor2d(rows, [rows.length, 1], 'int32'), v([rows.length, p.shape[1]!]), p.shape) : v(p.shape)
})]))
const bits = async (m: Map<string, tf.Tensor>) => Promise.all([...m].map(async ([name, g]) => [name, [...new Uint32Array(((await g.data()) as Float32Array).slice().buffer)]]))
/** The in-order sum of micro-batches 0..count−1 of `shard`'s parameters, as bits. */
async function inOrderBits(model: Model, rows: Int32Array, count: number, replica: ReturnType<typeof shardOf>) {
  const sum = new OrderedSum(model, replica)
  for (let a = 0; a < count; a++) sum.add(a, fakeGrads(model, rows, a))
  const got = sum.take()
  const b = await bits(got)
  tf.dispose([...got.values()])
  return b
}

test('ordered sum: micro-batches in any order give the in-order bits; early ones wait as tensors of the shard', async () => {
  const model = initModel(parseConfig(TINY_CONFIG), Rng.fromKey('sum'))
  const rows = touchedRows(model, [{ promptIds: [5, 900], chosenIds: [7, 2], rejectedIds: [12, 2] }], 2)!
  const replica = shardOf(model, 2, 0)
  const want = await inOrderBits(model, rows, 5, replica)
  const sum = new OrderedSum(model, replica)
  const start = tf.memory().numTensors
  for (const a of [3, 1, 4]) sum.add(a, fakeGrads(model, rows, a))
  assert.is(sum.waiting, 3)
  assert.is(tf.memory().numTensors - start, 3 * replica.mine.size) // the other shard's gradients are freed
  sum.add(0, fakeGrads(model, rows, 0))
  assert.equal([sum.added, sum.waiting], [2, 2]) // 0 and 1 added; 3 and 4 wait for 2
  sum.add(2, fakeGrads(model, rows, 2))
  const got = sum.take()
  assert.equal(await bits(got), want)
  tf.dispose([...got.values()])
  assert.is(tf.memory().numTensors, start)
})

test('gradient ring: each replica gets its shard of every micro-batch, bit for bit, through one reused slot', async () => {
  const model = initModel(parseConfig(TINY_CONFIG), Rng.fromKey('ring'))
  const rows = touchedRows(model, [{ promptIds: [5, 900, 31999], chosenIds: [7, 2], rejectedIds: [12, 2] }], 2)!
  const buffers = ringBuffers(model, 2, 1) // one slot: every share must wait for the slot to be read
  const noWait = (me: number) => () => { throw new AlignError(`replica ${me} waits`) } // one thread plays both replicas: a wait would never end
  const shards = [shardOf(model, 2, 0), shardOf(model, 2, 1)]
  const sums = shards.map((s) => new OrderedSum(model, s))
  const rings = shards.map((s, me) => new Ring(model, buffers, me, s, noWait(me)))
  await rings[0]!.share(0, fakeGrads(model, rows, 0), rows, sums[0]!) // replica 0 computed 0; 1 reads its shard
  assert.is(rings[1]!.consume(sums[1]!), 1)
  await rings[1]!.share(1, fakeGrads(model, rows, 1), undefined, sums[1]!) // the slot is free again; dense this time
  const two = fakeGrads(model, rows, 2)
  await rejects(() => rings[1]!.share(2, two, rows, sums[1]!), /^replica 1 waits$/) // the slot holds 1, unread by replica 0
  // replica 0, sharing 3, first reads 1 from the slot (freeing it), then takes it
  await rings[0]!.share(3, fakeGrads(model, rows, 3), rows, sums[0]!)
  assert.is(rings[0]!.consume(sums[0]!), 0) // the slot now holds 3, for replica 1
  assert.is(rings[1]!.consume(sums[1]!), 1)
  await rings[1]!.share(2, two, rows, sums[1]!)
  await rings[0]!.complete(sums[0]!, 4)
  await rings[1]!.complete(sums[1]!, 4)
  for (const [w, sum] of sums.entries()) {
    const got = sum.take()
    assert.equal(await bits(got), await inOrderBits(model, rows, 4, shards[w]!), `replica ${w}`)
    tf.dispose([...got.values()])
  }
})

/** pools a test started: closed after it even when it fails, or their threads would keep the test process alive */
const started: WorkerPool[] = []
test.after.each(async () => void (await Promise.all(started.splice(0).map((p) => p.close()))))
/** A pool of this thread and one worker thread over `model` (SFT); `kill` ends that worker as a crash would. */
const twoWorkers = async (model: Model, o: { ringSlots?: number } = {}) => {
  const pool = (await WorkerPool.start(2, model, () => workerInit(model, 'wasm', sftObjective(), undefined, 2, ADAMW_DEFAULTS), o))!
  started.push(pool)
  return pool
}
const kill = (pool: WorkerPool) => (pool as unknown as { threads: { terminate(): Promise<number> }[] }).threads[0]!.terminate()

test('a ring of one slot between two threads: micro-batches wait for it, and the update has the one-worker bits', async () => {
  const [shared, alone] = [initModel(parseConfig(TINY_CONFIG), Rng.fromKey('ring1')), initModel(parseConfig(TINY_CONFIG), Rng.fromKey('ring1'))]
  const pool = await twoWorkers(shared, { ringSlots: 1 })
  const jobs = Array.from({ length: 6 }, (_, a) => ({ a, pairs: [{ promptIds: [1, 3 + a, 9], chosenIds: Array.from({ length: 2 + 3 * (a % 3) }, (_, j) => 7 + j), rejectedIds: [7, 2] }], scale: 6, dropoutSeed: 0 }))
  const o = { padId: 2, ga: 6 }
  const [optShared, optAlone] = [new Optimizer(ADAMW_DEFAULTS), new Optimizer(ADAMW_DEFAULTS)]
  const a = await stepGradients(shared, sftObjective(), pool, jobs, { ...o, update: { lr: 1e-2, maxNorm: 1 } })
  const b = await stepGradients(alone, sftObjective(), undefined, jobs, o)
  assert.equal(a.stats, b.stats)
  assert.equal([...a.squares.keys()], [...pool.shard.others]) // the worker's shard's sums of squares come with the step
  assert.is(b.squares.size, 0)
  const norms = [await pool.update(optShared, a.grads, a.squares, 1e-2, 1), await applyUpdate(alone, optAlone, b.grads, 1e-2, 1)]
  assert.is(norms[0], norms[1])
  assert.ok(norms[0]! > 1) // clipped: the norm from both shards' squares
  for (const [name, p] of trainableParams(alone)) assert.equal(await bits(new Map([[name, shared.params.get(name)!]])), await bits(new Map([[name, p]])), name)
  await pool.close()
  for (const m of [shared, alone]) disposeModel(m)
  for (const opt of [optShared, optAlone]) opt.dispose()
})

test("LM head blocks: a replica that finished first computes some of the other's, and the update keeps the one-worker bits", async () => {
  const [shared, alone] = [initModel(parseConfig(TINY_CONFIG), Rng.fromKey('handoff')), initModel(parseConfig(TINY_CONFIG), Rng.fromKey('handoff'))]
  const pool = await twoWorkers(shared)
  const rng = Rng.fromKey('handoff-pairs')
  const long = () => Array.from({ length: 400 }, () => 3 + rng.int(31990))
  // this thread takes micro-batch 0 (one short pair), the worker micro-batch 1 (three long ones, 8 vocabulary blocks of
  // ~1200 tokens): this thread is done long before the worker's head hands its blocks on, and takes some of them
  const jobs = [
    { a: 0, pairs: [{ promptIds: [1, 5], chosenIds: [7, 2], rejectedIds: [] }], scale: 4, dropoutSeed: 0 },
    { a: 1, pairs: [0, 1, 2].map(() => ({ promptIds: [1, 9], chosenIds: long(), rejectedIds: [] })), scale: 4, dropoutSeed: 0 },
  ]
  const o = { padId: 2, ga: 2 }
  const [optShared, optAlone] = [new Optimizer(ADAMW_DEFAULTS), new Optimizer(ADAMW_DEFAULTS)]
  const a = await stepGradients(shared, sftObjective(), pool, jobs, { ...o, update: { lr: 1e-2, maxNorm: 1 } })
  const b = await stepGradients(alone, sftObjective(), undefined, jobs, o)
  assert.ok(a.headBlocksTaken > 0, 'no block was taken')
  assert.is(b.headBlocksTaken, 0)
  assert.equal(a.stats, b.stats)
  assert.is(await pool.update(optShared, a.grads, a.squares, 1e-2, 1), await applyUpdate(alone, optAlone, b.grads, 1e-2, 1))
  for (const [name, p] of trainableParams(alone)) assert.equal(await bits(new Map([[name, shared.params.get(name)!]])), await bits(new Map([[name, p]])), name)
  await pool.close()
  for (const m of [shared, alone]) disposeModel(m)
  for (const opt of [optShared, optAlone]) opt.dispose()
})

test('pair packs: the pairs back, any range of them, from one shared buffer', () => {
  const pairs = [{ promptIds: [1, 5], chosenIds: [7, 2], rejectedIds: [] }, { promptIds: [], chosenIds: [9], rejectedIds: [3, 4, 2] }, { promptIds: [8], chosenIds: [2], rejectedIds: [6] }]
  const pack = packPairs(pairs)
  assert.ok(pack instanceof SharedArrayBuffer)
  assert.equal(unpackPairs(pack, 0, 3), pairs)
  assert.equal(unpackPairs(pack, 1, 2), [pairs[1]])
  assert.equal(unpackPairs(pack, 2, 8), [pairs[2]]) // a last batch past the end: what is there
  assert.equal(unpackPairs(packPairs([]), 0, 4), [])
  assert.equal([packedCount(pack), packedCount(packPairs([]))], [3, 0])
})

test('workers take micro-batches from a shared counter: one that is free takes all that are left', async () => {
  const model = initModel(parseConfig(TINY_CONFIG), Rng.fromKey('w'))
  const pool = await twoWorkers(model)
  const pair = (i: number) => ({ promptIds: [1, 3 + i, 9], chosenIds: [7, 8, 2], rejectedIds: [7, 2] })
  const next = new SharedArrayBuffer(4)
  const { results, ring } = await pool.grads(3, [0, 1, 2].map((a) => ({ a, pairs: [pair(a)], scale: 9, dropoutSeed: 0 })), next, { lr: 0, maxNorm: 0 }) // this thread takes none
  const sum = new OrderedSum(model, pool.shard)
  await ring.complete(sum, 3) // its shard of the worker's three, from the ring
  assert.equal((await results).computed.map((r) => [r.a, r.worker]), [[0, 1], [1, 1], [2, 1]])
  assert.is(takeJob(3, next), undefined) // all taken
  sum.dispose()
  await pool.close()
  disposeModel(model)
})

test('a worker that dies ends the request with one line naming it; --workers is checked', async () => {
  const model = initModel(parseConfig(TINY_CONFIG), Rng.fromKey('w'))
  const pool = await twoWorkers(model)
  assert.is(pool.size, 2)
  const big = Array.from({ length: 64 }, (_, i) => ({ promptIds: Array.from({ length: 60 }, (_, j) => 3 + ((i + j) % 500)), chosenIds: Array.from({ length: 60 }, (_, j) => 7 + j), rejectedIds: [7, 2] }))
  const next = new SharedArrayBuffer(4)
  const { results: pending, ring } = await pool.grads(1, [{ a: 0, pairs: big, scale: 1, dropoutSeed: 0 }], next, { lr: 0, maxNorm: 0 }) // long enough to be running when the worker is killed
  while (Atomics.load(new Int32Array(next), 0) === 0) await new Promise((r) => setTimeout(r, 1)) // the worker took it
  await kill(pool)
  const sum = new OrderedSum(model, pool.shard)
  // this thread, waiting for that micro-batch in the ring, hears it too
  await rejects(() => ring.complete(sum, 1), /^worker 1 of 2 exited \(code \d+: out of memory or killed\); the run stops \(the last checkpoint is intact\)$/)
  await rejects(() => pending, /^worker 1 of 2 exited \(code \d+: out of memory or killed\)/)
  await rejects(() => pool.logps(big, 8, false), /^worker 1 of 2 exited/) // asking a dead worker: the same line, not a hang
  await pool.close()
  // a worker dying while this thread scores batches too: this thread takes what is left, then the same line
  const again = await twoWorkers(model)
  let killed: Promise<number> | undefined
  const scoring = again.logps(big, 4, false, () => void (killed ??= kill(again))) // as this thread takes its first batch
  await rejects(() => scoring, /^worker 1 of 2 exited \(code \d+: out of memory or killed\)/)
  await again.close()
  disposeModel(model)
  await rejects(() => workerCount('0', {}), /--workers 0: a whole number >= 1, or auto/)
  assert.equal(workerCount('3', {}).n, 3)
  assert.equal(workerCount('auto', {}).n, availableParallelism())
  assert.equal(workerCount('auto', { oneWorker: 'auto: the webgpu backend runs one process per device' }).n, 1)
})

test.run()
