// `align inspect`: checkpoints, adapters and run directories read from headers; curves; comparisons; no tfjs.
import { copyFileSync, cpSync, readFileSync, truncateSync, writeFileSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { inspect } from '../src/inspect/index.ts'
import { writeSafetensors } from '../src/checkpoint/safetensors.ts'
import { FIXTURES, ROOT, rejects, tmp } from './helpers.ts'

const LLAMA = join(FIXTURES, 'tiny-llama-random')
const MISTRAL = join(FIXTURES, 'tiny-mistral-random')

test('a real HF checkpoint: architecture, parameter count, dtypes, shards — from headers only', async () => {
  const { report, text } = await inspect({ dir: LLAMA })
  const c = report.checkpoint!
  assert.is(c.architecture, 'LlamaForCausalLM')
  // 2·(512·64) embed+head + 2 layers·(q 64·64 + k,v 2·32·64 + o 64·64 + 3·176·64 + 2·64) + 64 final norm
  assert.is(c.parameters, 2 * 512 * 64 + 2 * (64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 176 * 64 + 2 * 64) + 64)
  assert.equal(Object.keys(c.dtypes), ['BF16'])
  assert.match(text, /LlamaForCausalLM/)
  assert.match(text, /layers 2 · hidden 64 · heads 4\/2 kv/)
  const dir = tmp()
  cpSync(join(LLAMA, 'sharded'), dir, { recursive: true })
  const sharded = await (await inspect({ dir, json: true })).report.checkpoint!
  assert.is(sharded.parameters, c.parameters)
  assert.equal(new Set(sharded.tensors.map((t) => t.file)).size, 2)
})

test('--stats: per-tensor mean/std/min/max and NaN/Inf counts', async () => {
  const dir = tmp()
  await writeSafetensors(join(dir, 'model.safetensors'), [{ name: 'a', shape: [4], data: Float32Array.from([1, 2, NaN, Infinity]) }, { name: 'b', shape: [2], data: Float32Array.from([-1, 3]) }], 'F32')
  const t = await (await inspect({ dir, stats: true })).report.checkpoint!.tensors
  assert.equal(t[0]!.stats, { mean: 1.5, std: 0.5, min: 1, max: 2, nan: 1, inf: 1 })
  assert.equal(t[1]!.stats, { mean: 1, std: 2, min: -1, max: 3, nan: 0, inf: 0 })
})

test('a PEFT adapter directory: rank, alpha, targets, adapter parameters', async () => {
  const dir = tmp()
  const key = (m: string, ab: string) => `base_model.model.model.layers.0.self_attn.${m}.lora_${ab}.weight`
  await writeSafetensors(join(dir, 'adapter_model.safetensors'), [
    { name: key('q_proj', 'A'), shape: [8, 64], data: new Float32Array(512) }, { name: key('q_proj', 'B'), shape: [64, 8], data: new Float32Array(512) },
  ], 'F32')
  writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 8, lora_alpha: 16, lora_dropout: 0.05, target_modules: ['q_proj'], base_model_name_or_path: 'x/base' }))
  const { report, text } = await inspect({ dir })
  assert.is(report.checkpoint!.kind, 'adapter')
  assert.equal(report.checkpoint!.lora, { r: 8, alpha: 16, dropout: 0.05, targets: ['q_proj'], base: 'x/base', parameters: 1024 })
  assert.match(text, /LoRA r 8 · alpha 16/)
})

test('a run directory: checkpoints, last values with TRL names, terminal charts, SVG plot', async () => {
  const run = tmp()
  for (const s of [2, 4]) cpSync(join(MISTRAL, 'policy'), join(run, `checkpoint-${s}`), { recursive: true })
  cpSync(join(MISTRAL, 'policy'), join(run, 'final'), { recursive: true })
  const rows = [1, 2, 3, 4].map((step) => ({ step, loss: 0.7 - 0.05 * step, 'rewards/accuracies': 0.5 + 0.1 * step, 'rewards/margins': 0.1 * step, learning_rate: 1e-3 }))
  writeFileSync(join(run, 'metrics.jsonl'), [...rows, { step: 4, eval_loss: 0.6, 'eval_rewards/accuracies': 0.75 }].map((r) => JSON.stringify(r)).join('\n') + '\n')
  const svg = join(run, 'curves.svg')
  const { report, text } = await inspect({ dir: run, plot: svg })
  assert.equal(report.run!.checkpoints.map((c) => c.step), [2, 4])
  assert.is(report.last!['rewards/accuracies']!.value, 0.9)
  assert.is(report.last!['eval_rewards/accuracies']!.value, 0.75)
  assert.match(text, /rewards\/margins\s+0\.4000/)
  assert.match(text, /[▁▂▃▄▅▆▇█]/)
  const doc = readFileSync(svg, 'utf8')
  assert.match(doc, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/)
  assert.is((doc.match(/<polyline/g) ?? []).length, 6) // loss, eval_loss, accuracies, eval accuracies, margins, lr
  assert.is((doc.match(/<circle[^>]*fill="white"/g) ?? []).length, 4) // each eval point marked, and its legend entry
  assert.ok((doc.match(/stroke="#e5e5e5"/g) ?? []).length >= 4 * 8, 'a grid on both axes of every panel')
  assert.match(doc, />0\.001</) // the learning rate's tick labels, unclipped
  assert.match(doc, /font-weight="bold">[^<]*\b(align-test|tmp)[^<\/]*</) // the title is the run's name, not its path
  assert.not.match(doc, new RegExp(`>${run.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}<`))
})

test('plots: legends under the data, EMA smoothing, two runs overlaid, a PNG that is not blank', async () => {
  const { ema, niceTicks, svgPlot, svgToPng } = await import('../src/inspect/plot.ts')
  assert.equal(niceTicks(0.12, 0.93, 4), [0, 0.25, 0.5, 0.75, 1])
  assert.equal(ema([[1, 1], [2, 0]], 0.5).map((p) => +p[1].toFixed(4)), [1, 0.3333]) // TensorBoard's debiased EMA
  const rows = (shift: number) => Array.from({ length: 20 }, (_, i) => ({ step: i + 1, loss: 0.7 - 0.01 * i + shift + (i % 2) * 0.02, learning_rate: 2e-4 }))
  const doc = svgPlot([{ name: 'runA', rows: rows(0) }, { name: 'runB', rows: rows(0.05) }], { smooth: 0.6 })
  assert.match(doc, />runA: loss</)
  assert.match(doc, />runB: loss</)
  assert.is((doc.match(/stroke-opacity="0\.25"/g) ?? []).length, 2) // the raw loss curves kept faint under the smoothed ones (the lr is never smoothed)
  // every legend line sits below its panel's plot area: no legend over the data
  const plotBottoms = [...doc.matchAll(/<rect x="\d+" y="(\d+)" width="\d+" height="(\d+)" fill="none"/g)].map((m) => Number(m[1]) + Number(m[2]))
  const legendYs = [...doc.matchAll(/<text x="\d+" y="(\d+)" fill="#222">/g)].map((m) => Number(m[1]))
  assert.ok(legendYs.length === 4 && legendYs.every((y) => plotBottoms.some((b) => y > b + 20)), `legends ${legendYs} vs plot bottoms ${plotBottoms}`)
  const png = await svgToPng(doc)
  assert.equal([...png.subarray(1, 4)].map((c) => String.fromCharCode(c)).join(''), 'PNG')
  const { Resvg } = await import('@resvg/resvg-js')
  const pixels = new Resvg(doc, { font: { loadSystemFonts: false } }).render().pixels
  let inked = 0
  for (let i = 0; i < pixels.length; i += 4) if (pixels[i]! < 200 || pixels[i + 1]! < 200 || pixels[i + 2]! < 200) inked++
  assert.ok(inked > 2000, `${inked} drawn pixels`)
  const run = tmp()
  writeFileSync(join(run, 'metrics.jsonl'), rows(0).map((r) => JSON.stringify(r)).join('\n'))
  await inspect({ dir: run, plot: join(run, 'curves.png') })
  assert.ok(readFileSync(join(run, 'curves.png')).length > 10_000)
  await rejects(() => inspect({ dir: run, plot: join(run, 'curves.jpg') }), /--plot .*curves\.jpg: name an \.svg or \.png file/)
})

test('two checkpoints: per-tensor relative change, largest first; identical -> 0', async () => {
  const rows = (await inspect({ dir: join(MISTRAL, 'policy'), other: join(MISTRAL, 'reference') })).report.compare!.tensors
  assert.is(rows.length, 21)
  for (let i = 1; i < rows.length; i++) assert.ok(rows[i - 1]!.relative >= rows[i]!.relative)
  assert.ok(rows[0]!.relative > 0.1)
  assert.ok((await inspect({ dir: join(MISTRAL, 'policy'), other: join(MISTRAL, 'policy') })).report.compare!.tensors.every((t) => t.relative === 0))
})

test('corrupt or missing checkpoints: one line naming the file', async () => {
  const dir = tmp()
  copyFileSync(join(LLAMA, 'model.safetensors'), join(dir, 'model.safetensors'))
  truncateSync(join(dir, 'model.safetensors'), 1000)
  await rejects(() => inspect({ dir }), /model\.safetensors: (truncated|not a safetensors)/)
  const empty = tmp()
  mkdirSync(join(empty, 'x'))
  await rejects(() => inspect({ dir: empty }), /neither a checkpoint .* nor a run directory/)
})

test('inspect and binarize never load tfjs', async () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', "await import('./src/inspect/index.ts'); await import('./src/binarize/index.ts'); const { inspect } = await import('./src/inspect/index.ts'); await inspect({ dir: 'test/fixtures/tiny-llama-random' }); console.log('_tfGlobals' in globalThis)"], { cwd: ROOT, encoding: 'utf8' })
  assert.is(r.stdout.trim(), 'false', r.stderr)
})

test.run()
