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
import { tinyRun, useBackend } from './tfjs-helpers.ts'

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

test('align export --to handbook: configs the handbook reads (round trip), its zero3 keys, launch.sh, Hub-layout data', async () => {
  const out = join(work, 'export')
  const { exportHandbook } = await import('../src/commands/export.ts')
  const recipe = loadRecipe('zephyr', TRAIN_SCHEMA, ['model.policy=alignment-handbook/zephyr-7b-sft-full', `data.pairs=${join(work, 'pq')}`])
  exportHandbook(recipe, { out, gpus: 8, hasSft: false })
  // read back with align's handbook reader: every key is one the handbook knows, every value the recipe's
  const back = loadRecipe(join(out, 'config_dpo.yaml'), TRAIN_SCHEMA, [`data.datasets_dir=${datasetsDir}`])
  const [a, b] = [recipe.values.dpo, back.values.dpo]
  for (const k of ['beta', 'learning_rate', 'lr_scheduler_type', 'warmup_ratio', 'num_train_epochs', 'per_device_train_batch_size', 'max_length', 'max_prompt_length', 'optim', 'seed', 'output_dir', 'reference_mode', 'save_total_limit'] as const) assert.equal(b[k], a[k], k)
  assert.is(b.gradient_accumulation_steps * 8 * b.per_device_train_batch_size, a.gradient_accumulation_steps * a.per_device_train_batch_size) // global batch kept on 8 GPUs
  assert.is(back.values.model.policy, 'alignment-handbook/zephyr-7b-sft-full')
  assert.equal(back.values.data.datasets.map((d) => d.split), ['train_prefs', 'test_prefs'])
  // the exported dataset directory is read as a dataset by id (Hub layout + card)
  const { splitFiles } = await import('../src/preference/datasets.ts')
  assert.match(splitFiles(back.values.data.datasets[0]!.id, 'train_prefs')[0]!, /data\/train_prefs-00000-of-00001\.parquet$/)
  const YAML = (await import('yaml')).default
  const keys = (o: unknown): unknown => (o && typeof o === 'object' && !Array.isArray(o) ? Object.fromEntries(Object.entries(o).map(([k, x]) => [k, keys(x)])) : typeof o)
  assert.equal(keys(YAML.parse(readFileSync(join(out, 'zero3.yaml'), 'utf8'))), keys(YAML.parse(readFileSync(join(HB, 'zero3.yaml'), 'utf8'))))
  assert.match(readFileSync(join(out, 'launch.sh'), 'utf8'), /accelerate launch --config_file "\$HERE\/zero3\.yaml" scripts\/dpo\.py --config "\$HERE\/config_dpo\.yaml"/)
})

test('align inspect reads a run directory written by the HF Trainer (trainer_state.json in its own format)', async () => {
  const { inspect } = await import('../src/inspect/index.ts')
  const run = join(tmp(), 'hf-run')
  mkdirSync(join(run, 'checkpoint-200'), { recursive: true })
  // the shape transformers 4.4x writes: TrainerState fields, log rows with loss/grad_norm/learning_rate/epoch/step
  const state = { best_global_step: null, best_metric: null, best_model_checkpoint: null, epoch: 0.42, eval_steps: 100, global_step: 200, is_hyper_param_search: false, is_local_process_zero: true, is_world_process_zero: true,
    log_history: [{ epoch: 0.21, grad_norm: 5.1, learning_rate: 4.9e-7, logits_chosen: -2.7, loss: 0.6914, 'rewards/accuracies': 0.55, 'rewards/chosen': 0.01, 'rewards/margins': 0.004, 'rewards/rejected': 0.006, step: 100 }, { epoch: 0.21, eval_loss: 0.689, 'eval_rewards/accuracies': 0.6, eval_runtime: 80.1, eval_samples_per_second: 24.9, eval_steps_per_second: 0.4, step: 100 }, { epoch: 0.42, grad_norm: 4.2, learning_rate: 4.5e-7, loss: 0.6702, 'rewards/accuracies': 0.66, 'rewards/margins': 0.05, step: 200 }],
    logging_steps: 10, max_steps: 478, num_input_tokens_seen: 0, num_train_epochs: 1, save_steps: 100, stateful_callbacks: { TrainerControl: { args: { should_save: true }, attributes: {} } }, total_flos: 0.0, train_batch_size: 8, trial_name: null, trial_params: null }
  writeFileSync(join(run, 'checkpoint-200', 'trainer_state.json'), JSON.stringify(state))
  writeFileSync(join(run, 'trainer_state.json'), JSON.stringify(state))
  const r = await inspect({ dir: run, json: true })
  assert.equal(r.report.run!.checkpoints.map((c) => c.step), [200])
  assert.is(r.report.last!.loss!.value, 0.6702)
  assert.is(r.report.last!['eval_rewards/accuracies']!.step, 100)
})

test.run()
