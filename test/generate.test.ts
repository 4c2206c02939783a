// Greedy generation with the KV cache reproduces HF generate(do_sample=False) token for token.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { generate, pick } from '../src/model/generate.ts'
import { loadModel } from '../src/model/weights.ts'
import { forward } from '../src/model/mistral.ts'
import { Rng } from '../src/rng.ts'
import { FIXTURES } from './helpers.ts'
import { useBackend } from './tfjs-helpers.ts'

test.before(async () => {
  await useBackend(process.env.ALIGN_TEST_BACKEND ?? 'wasm')
})
const LLAMA = join(FIXTURES, 'tiny-llama-random')
const golden = JSON.parse(readFileSync(join(LLAMA, 'expected', 'generate.json'), 'utf8'))

test('greedy continuations of tiny Llama equal HF generate for every case (40 tokens, EOS suppressed)', async () => {
  const model = loadModel(LLAMA)
  for (const c of golden.cases) {
    const got = await generate(model, c.prompt_ids, { maxNewTokens: golden.max_new_tokens, temperature: 0, topP: 1, seed: 0, eosIds: [] })
    assert.equal(got, c.generated_ids, c.name)
  }
})

test('the cached decode equals a full forward pass over the whole sequence', async () => {
  const tf = await useBackend(process.env.ALIGN_TEST_BACKEND ?? 'wasm')
  const model = loadModel(join(FIXTURES, 'tiny-mistral-random', 'policy')) // sliding window 8: the cache must respect it
  const prompt = [1, 523, 28766, 1838, 28766, 28767, 13, 3195, 349]
  const gen = await generate(model, prompt, { maxNewTokens: 12, temperature: 0, topP: 1, seed: 0, eosIds: [] })
  const all = [...prompt, ...gen]
  const logits = tf.tidy(() => forward(model, tf.tensor2d(all, [1, all.length], 'int32')).arraySync() as number[][])
  for (let n = 0; n < gen.length; n++) {
    const row = Float32Array.from(logits[prompt.length - 1 + n]!)
    assert.is(pick(row, { maxNewTokens: 0, temperature: 0, topP: 1, seed: 0, eosIds: [] }, Rng.fromKey('x')), gen[n])
  }
})

test('sampling is reproducible from its seed and top-p keeps only the nucleus', () => {
  const logits = Float32Array.from([5, 4.9, -10, -10, 0])
  const o = { maxNewTokens: 0, temperature: 1, topP: 0.9, seed: 0, eosIds: [] }
  const draws = (seed: number) => Array.from({ length: 50 }, ((r) => () => pick(logits, o, r))(Rng.fromKey(String(seed))))
  assert.equal(draws(1), draws(1))
  assert.ok(draws(2).every((i) => i === 0 || i === 1))
})

test.run()
