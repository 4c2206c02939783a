// The real Mistral-7B tokenizer, the Zephyr chat template, and DPO tokenization at the right boundary.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { loadTokenizer, tokenizeTurn, withEmptySystem } from '../src/model/tokenizer.ts'
import { tokenizePair } from '../src/preference/pairs.ts'
import { FIXTURES } from './helpers.ts'

const DIR = join(FIXTURES, 'mistral-7b-v0.1')
const t = loadTokenizer(DIR)

test('tokenizer.json gives the reference ids (HF tokenizers, mistral-common v1)', () => {
  assert.equal(t.encode('Hello world!'), [1, 22557, 1526, 28808])
  const official = JSON.parse(readFileSync(join(DIR, 'mistral-common-vectors', 'no_tools_tokens_v1.json'), 'utf8')).tokens
  assert.equal(t.encode("[INST] What's the result of 5 + 5? [/INST]"), official.slice(0, 20))
  assert.equal([t.bosId, t.eosId, t.padId, t.vocabSize], [1, 2, 2, 32000])
})

test('the Zephyr template is the default for a tokenizer without one, rendered as transformers does', () => {
  assert.is(t.templateSource, 'zephyr default')
  assert.is(t.render([{ role: 'system', content: '' }, { role: 'user', content: 'Hi?' }], true), '<|system|>\n</s>\n<|user|>\nHi?</s>\n<|assistant|>\n')
  assert.is(t.render([{ role: 'assistant', content: 'Hello.' }], false), '<|assistant|>\nHello.</s>\n')
})

test('DPO tokenization: one BOS, completion = text + one EOS, real token boundary', () => {
  const p = tokenizePair(t, [{ role: 'user', content: 'What is the capital of France?' }], 'The capital of France is Paris.', 'France is a country.', 1024, 512)
  assert.is(p.promptIds.filter((x) => x === 1).length, 1)
  assert.is(p.promptIds[0], 1)
  assert.is(t.decode(p.promptIds), '<s> <|user|>\nWhat is the capital of France?</s>\n<|assistant|>\n')
  assert.is(p.chosenIds[p.chosenIds.length - 1], 2)
  assert.is(p.chosenIds.filter((x) => x === 2).length, 1)
  assert.is(t.decode(p.chosenIds), 'The capital of France is Paris.</s>')
  // after "\n" the first word has no "▁" (1014 'The'), unlike a separately tokenized completion (415 '▁The')
  assert.is(p.chosenIds[0], 1014)
  assert.is(t.encode('The capital', false)[0], 415)
  assert.not.ok(p.boundaryMismatch)
  // prompt + completion equals the whole conversation tokenized at once, up to the EOS
  const whole = t.encode(t.render([{ role: 'user', content: 'What is the capital of France?' }, { role: 'assistant', content: 'The capital of France is Paris.' }], false))
  assert.equal([...p.promptIds, ...p.chosenIds], whole.slice(0, p.promptIds.length + p.chosenIds.length))
})

test('truncation: prompt keeps its end (and BOS), then completions are cut to max_length', () => {
  const long = Array.from({ length: 60 }, (_, i) => `word${i}`).join(' ')
  const full = tokenizeTurn(t, [{ role: 'user', content: long }], 'short answer')
  const p = tokenizePair(t, [{ role: 'user', content: long }], 'short answer', 'another short answer', 64, 32)
  assert.ok(p.promptTruncated)
  assert.is(p.promptIds.length, 32)
  assert.is(p.promptIds[0], 1)
  assert.equal(p.promptIds.slice(1), full.promptIds.slice(-31))
  assert.not.ok(p.completionTruncated)
  const q = tokenizePair(t, [{ role: 'user', content: 'Hi' }], long, 'ok', 24, 16)
  assert.ok(q.completionTruncated)
  assert.is(q.promptIds.length + q.chosenIds.length, 24)
  assert.equal(tokenizePair(t, [{ role: 'user', content: 'Hi' }], 'a', 'b', 1024, 512).promptTruncated, false)
})

test('auto_insert_empty_system_msg: an empty system turn first, as the handbook renders Zephyr prompts', () => {
  const tok = loadTokenizer(join(FIXTURES, 'mistral-7b-v0.1'))
  const msgs = withEmptySystem(tok, [{ role: 'user', content: 'Hi' }])
  assert.equal(msgs, [{ role: 'system', content: '' }, { role: 'user', content: 'Hi' }])
  assert.is(tok.render(msgs, true), '<|system|>\n</s>\n<|user|>\nHi</s>\n<|assistant|>\n')
  // a conversation that has a system turn keeps it; a template without a system role gets none
  assert.equal(withEmptySystem(tok, [{ role: 'system', content: 'Be brief.' }]), [{ role: 'system', content: 'Be brief.' }])
  const plain = loadTokenizer(join(FIXTURES, 'mistral-7b-v0.1'), "{% for m in messages %}{{ m['content'] }}{% endfor %}")
  assert.is(plain.templateSource, 'recipe')
  assert.equal(withEmptySystem(plain, [{ role: 'user', content: 'Hi' }]), [{ role: 'user', content: 'Hi' }])
})

test.run()
