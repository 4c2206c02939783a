// The decoder against HF goldens computed by an independent reference (test/fixtures/PROVENANCE.md).
import { copyFileSync, cpSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { readHeader, readTensor } from '../src/checkpoint/safetensors.ts'
import { loadModel } from '../src/model/weights.ts'
import { disposeModel, forward, hidden } from '../src/model/mistral.ts'
import { loadConfig } from '../src/model/weights.ts'
import { parseConfig, PRESETS } from '../src/model/config.ts'
import { FIXTURES, rejects, tmp } from './helpers.ts'
import { maxAbsDiff, useBackend } from './tfjs-helpers.ts'

const tf = await useBackend()
test.before(async () => {
  await useBackend()
})
const LLAMA = join(FIXTURES, 'tiny-llama-random')
const MISTRAL = join(FIXTURES, 'tiny-mistral-random')

test('tiny Llama: every layer and the logits match HF (fp32 forward of bf16 weights): measured 5e-7 and 3.8e-6, allowed 10x', () => {
  const model = loadModel(LLAMA)
  const meta = JSON.parse(readFileSync(join(LLAMA, 'expected', 'meta.json'), 'utf8'))
  const golden = readHeader(join(LLAMA, 'expected', 'activations.safetensors'))
  const ids = tf.tensor2d(meta.input_ids, [1, meta.input_ids.length], 'int32')
  const layers: Float32Array[] = []
  tf.tidy(() => {
    hidden(model, ids, undefined, (i, x) => layers.push(x.dataSync() as Float32Array))
  })
  assert.is(maxAbsDiff(layers[0]!, readTensor(golden, 'embeddings')), 0) // a bf16 row gathered: exact
  assert.ok(maxAbsDiff(layers[1]!, readTensor(golden, 'layers.0')) < 5e-6)
  assert.ok(maxAbsDiff(layers[2]!, readTensor(golden, 'layers.1')) < 5e-6)
  const logits = tf.tidy(() => forward(model, ids).dataSync())
  const d = maxAbsDiff(logits, readTensor(golden, 'logits'))
  assert.ok(d < 4e-5, `max |Δlogit| ${d}`)
  disposeModel(model)
})

test('tiny Llama from the sharded layout gives the same logits', () => {
  const a = loadModel(LLAMA)
  const dir = tmp()
  cpSync(join(LLAMA, 'sharded'), dir, { recursive: true })
  copyFileSync(join(LLAMA, 'config.json'), join(dir, 'config.json'))
  const b = loadModel(dir)
  const ids = tf.tensor2d([[1, 5, 9, 300, 42]], [1, 5], 'int32')
  assert.is(maxAbsDiff(tf.tidy(() => forward(a, ids).dataSync()), tf.tidy(() => forward(b, ids).dataSync())), 0)
  disposeModel(a)
  disposeModel(b)
})

test('tiny Mistral (sliding window 8): logits for 24 tokens match within 1e-5', () => {
  const model = loadModel(join(MISTRAL, 'policy'))
  const dpo = JSON.parse(readFileSync(join(MISTRAL, 'expected', 'dpo.json'), 'utf8'))
  const ids = tf.tensor2d(dpo.logits_input_ids, [1, 24], 'int32')
  const got = tf.tidy(() => forward(model, ids).dataSync())
  const want = readTensor(readHeader(join(MISTRAL, 'expected', 'logits.safetensors')), 'logits')
  assert.ok(maxAbsDiff(got, want) < 1e-5) // measured 8.2e-7
  // without the window the last rows differ: the window is really applied
  const full = loadModel(join(MISTRAL, 'policy'))
  full.config.slidingWindow = null
  const noWindow = tf.tidy(() => forward(full, ids).dataSync())
  assert.ok(maxAbsDiff(noWindow, want) > 1e-3)
  disposeModel(model)
  disposeModel(full)
})

test('config: every field read from the file; errors name the key', async () => {
  const c = loadConfig(join(MISTRAL, 'policy'))
  assert.equal([c.architecture, c.vocabSize, c.hiddenSize, c.numLayers, c.numHeads, c.numKvHeads, c.headDim, c.slidingWindow, c.ropeTheta, c.rmsNormEps, c.tieWordEmbeddings], ['MistralForCausalLM', 32000, 64, 2, 4, 2, 16, 8, 10000, 1e-5, false])
  const real = JSON.parse(readFileSync(join(FIXTURES, 'mistral-7b-v0.1', 'config.json'), 'utf8'))
  const m7 = parseConfig(real)
  assert.equal([m7.hiddenSize, m7.numLayers, m7.numKvHeads, m7.headDim, m7.slidingWindow, m7.intermediateSize], [4096, 32, 8, 128, 4096, 14336])
  assert.equal(parseConfig(PRESETS['mistral-7b']!).headDim, m7.headDim)
  const { rms_norm_eps: _drop, ...noEps } = real
  await rejects(() => parseConfig(noEps, 'x/config.json'), /x\/config\.json: rms_norm_eps must be a positive number, got nothing/)
  await rejects(() => parseConfig({ ...real, architectures: ['GPT2LMHeadModel'] }), /supports MistralForCausalLM, LlamaForCausalLM/)
  await rejects(() => parseConfig({ ...real, num_key_value_heads: 5 }), /not a multiple of num_key_value_heads 5/)
})

test.run()
