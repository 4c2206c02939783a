// alignment-handbook recipes run unchanged (its own files, both dataset schemas), with datasets by id read from a
// local directory in the Hub's file layout; keys that cannot apply are listed, unknown keys are errors.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { loadRecipe } from '../src/recipe.ts'
import { TRAIN_SCHEMA } from '../src/train/schema.ts'
import { train } from '../src/train/loop.ts'
import { BINARIZE_SECTION } from '../src/binarize/index.ts'
import { tokenizeRows } from '../src/preference/pairs.ts'
import { loadTokenizer } from '../src/model/tokenizer.ts'
import { FIXTURES, ROOT, rejects, tmp } from './helpers.ts'
import { tinyRun } from './tiny-run.ts'
import { useBackend } from './tfjs-helpers.ts'

test.before(async () => {
  await useBackend('wasm')
})
await useBackend('wasm')
const HB = join(FIXTURES, 'handbook')
const { work, policyDir, dataDir } = await tinyRun()
// a datasets_dir holding HuggingFaceH4/ultrafeedback_binarized in the Hub's own layout (parquet shards under data/)
const datasetsDir = join(work, 'datasets')
const { binarize } = await import('../src/binarize/index.ts')
const hubUF = join(datasetsDir, 'HuggingFaceH4', 'ultrafeedback_binarized')
{
  const o = loadRecipe('zephyr', { binarize: BINARIZE_SECTION }, ['test_size=8']).values.binarize as never
  const pq = join(work, 'pq')
  await binarize({ inputs: [join(FIXTURES, 'ultrafeedback', 'head200.zstd.parquet')], out: pq, formats: ['parquet'], recipeName: 'zephyr', options: o, quiet: true })
  mkdirSync(join(hubUF, 'data'), { recursive: true })
  for (const s of ['train_prefs', 'test_prefs']) copyFileSync(join(pq, `${s}.parquet`), join(hubUF, 'data', `${s}-00000-of-00001.parquet`))
  const chat = join(datasetsDir, 'HuggingFaceH4', 'ultrachat_200k', 'data')
  mkdirSync(chat, { recursive: true })
  for (const s of ['train_sft', 'test_sft']) copyFileSync(join(pq, `${s.startsWith('train') ? 'train' : 'test'}_prefs.parquet`), join(chat, `${s}-00000-of-00001.parquet`))
}
const tiny = (out: string, stage: 'sft' | 'dpo') => [`model.policy=${policyDir}`, `${stage}.output_dir=${out}`, `data.datasets_dir=${datasetsDir}`, 'data.test_split_size=8', `${stage}.max_steps=2`, `${stage}.max_length=48`, ...(stage === 'dpo' ? ['dpo.max_prompt_length=24'] : []), `${stage}.per_device_train_batch_size=2`, `${stage}.per_device_eval_batch_size=4`, `${stage}.save_steps=0`, 'data.max_eval_pairs=4']

test('the handbook Zephyr DPO recipe (dataset_mixture) reads as its values; the keys that cannot apply are listed', () => {
  const r = loadRecipe(join(HB, 'dpo-config_full.yaml'), TRAIN_SCHEMA)
  const v = r.values
  assert.is(v.model.policy, 'alignment-handbook/zephyr-7b-sft-full')
  assert.equal([v.dpo.beta, v.dpo.learning_rate, v.dpo.lr_scheduler_type, v.dpo.gradient_accumulation_steps, v.dpo.per_device_train_batch_size, v.dpo.max_length, v.dpo.max_prompt_length, v.dpo.warmup_ratio, v.dpo.optim, v.dpo.eval_steps, v.dpo.save_total_limit, v.dpo.output_dir], [0.01, 5e-7, 'cosine', 2, 8, 1024, 512, 0.1, 'adamw', 100, 1, 'data/zephyr-7b-dpo-full'])
  assert.equal(v.data.datasets.map((d) => [d.id, d.split, d.weight]), [['HuggingFaceH4/ultrafeedback_binarized', 'train_prefs', 1], ['HuggingFaceH4/ultrafeedback_binarized', 'test_prefs', 1]])
  assert.equal([v.data.test_split_size, v.data.mixture_seed, v.data.mixture_style], [2000, 0, 'mixture'])
  for (const k of ['bf16', 'gradient_checkpointing', 'push_to_hub', 'hub_model_id', 'dataset_num_proc', 'log_level']) assert.ok(r.notes!.some((n) => n.startsWith(`${k}: not applied (`)), k)
  const sft = loadRecipe(join(HB, 'sft-config_full.yaml'), TRAIN_SCHEMA)
  assert.equal([sft.values.sft.max_length, sft.values.sft.learning_rate, sft.values.sft.per_device_train_batch_size, sft.values.sft.overwrite_output_dir], [2048, 2e-5, 16, true])
  assert.match(sft.values.model.chat_template!, /<\|assistant\|>/)
  assert.ok(sft.notes!.some((n) => n.startsWith('attn_implementation: not applied')))
  const mixer = loadRecipe(join(HB, 'dpo-config_full-mixer.yaml'), TRAIN_SCHEMA).values.data
  assert.equal([mixer.mixture_style, mixer.datasets.map((d) => d.split)], ['mixer', ['train_prefs', 'test_prefs']])
  const qlora = loadRecipe(join(HB, 'dpo-config_qlora.yaml'), TRAIN_SCHEMA)
  assert.equal([qlora.values.lora.enabled, qlora.values.lora.r, qlora.values.lora.alpha, qlora.values.lora.target_modules.length], [true, 128, 128, 7])
  assert.ok(qlora.notes!.some((n) => n.startsWith('load_in_4bit: not applied')))
})

test('an unknown handbook key is an error naming the file and the nearest key', async () => {
  const p = join(tmp(), 'typo.yaml')
  writeFileSync(p, readFileSync(join(HB, 'dpo-config_full.yaml'), 'utf8').replace('learning_rate:', 'learning_rat:'))
  await rejects(() => loadRecipe(p, TRAIN_SCHEMA), /typo\.yaml: unknown key learning_rat; did you mean learning_rate\?/)
})

test('the handbook DPO recipe trains unchanged on local Hub-layout data (mixture pooled, test split held out)', async () => {
  const out = join(work, 'hb-dpo')
  const r = await train({ stage: 'dpo', recipe: loadRecipe(join(HB, 'dpo-config_full.yaml'), TRAIN_SCHEMA, tiny(out, 'dpo')), quiet: true })
  assert.is(r.dataStats.eval.pairs, 4)
  assert.is(r.dataStats.train.pairs, 191 - 8) // every pair of both splits pooled, 8 held out
  assert.ok(r.logHistory.some((x) => x.eval_loss !== undefined))
  const old = await train({ stage: 'dpo', recipe: loadRecipe(join(HB, 'dpo-config_full-mixer.yaml'), TRAIN_SCHEMA, tiny(join(work, 'hb-mixer'), 'dpo')), quiet: true })
  assert.equal([old.dataStats.train.pairs, old.dataStats.eval.pairs], [183, 4]) // dataset_splits: train_prefs trains, test_prefs evaluates
})

test('the handbook SFT recipe trains unchanged; its chat_template is the one saved with the model', async () => {
  const out = join(work, 'hb-sft')
  await train({ stage: 'sft', recipe: loadRecipe(join(HB, 'sft-config_full.yaml'), TRAIN_SCHEMA, tiny(out, 'sft')), quiet: true })
  const saved = JSON.parse(readFileSync(join(out, 'tokenizer_config.json'), 'utf8')).chat_template
  const recipe = loadRecipe(join(HB, 'sft-config_full.yaml'), TRAIN_SCHEMA).values.model.chat_template
  assert.is(saved, recipe)
})

test('SFT reads `messages` rows (ultrachat_200k); DPO still needs chosen/rejected', async () => {
  const tok = loadTokenizer(join(ROOT, 'data', 'tokenizer'))
  const rows = [{ messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }] }]
  const { pairs } = tokenizeRows(rows, () => 'row', tok, { maxLength: 64, maxPromptLength: 32, sft: true })
  assert.is(tok.decode(pairs[0]!.chosenIds), 'Hello!</s>')
  await rejects(() => tokenizeRows(rows, () => 'x.parquet row 1', tok, { maxLength: 64, maxPromptLength: 32 }), /x\.parquet row 1: missing column prompt/)
})

test('a lone pairs file: eval is off unless data.eval_pairs names one', async () => {
  const file = join(dataDir, 'train_prefs.jsonl')
  const base = [`model.policy=${policyDir}`, `data.pairs=${file}`, 'data.max_train_pairs=4', 'dpo.max_steps=1', 'dpo.max_length=48', 'dpo.max_prompt_length=24', 'dpo.per_device_train_batch_size=2']
  const a = await train({ stage: 'dpo', recipe: loadRecipe('tiny', TRAIN_SCHEMA, [...base, `dpo.output_dir=${join(work, 'lone')}`]), quiet: true })
  assert.is(a.dataStats.eval.pairs, 0)
  assert.not.ok(a.logHistory.some((x) => x.eval_loss !== undefined))
  const b = await train({ stage: 'dpo', recipe: loadRecipe('tiny', TRAIN_SCHEMA, [...base, `data.eval_pairs=${join(dataDir, 'test_prefs.jsonl')}`, 'data.max_eval_pairs=2', `dpo.output_dir=${join(work, 'lone-eval')}`]), quiet: true })
  assert.is(b.dataStats.eval.pairs, 2)
  assert.ok(b.logHistory.some((x) => x.eval_loss !== undefined))
})

test.run()
