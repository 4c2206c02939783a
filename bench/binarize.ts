// bench/binarize: `align binarize --recipe zephyr` on a full-scale 64k-row UltraFeedback parquet.
// Reports wall time, rows/s, MB/s of parquet and peak RSS. Target: < 15 s and < 1 GiB on 2 cores.
// The input is built once by make-ultrafeedback-64k.ts (in its own process, so its memory is not counted).
// Usage: npm run bench:binarize [-- rows [parquet|jsonl|both]]
import { existsSync, mkdirSync, statSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { binarize, BINARIZE_SECTION, type BinarizeOptions } from '../src/binarize/index.ts'
import { loadRecipe } from '../src/recipe.ts'

const rows = Number(process.argv[2] ?? 64000)
const format = process.argv[3] ?? 'parquet'
const formats = (format === 'both' ? ['parquet', 'jsonl'] : [format]) as ('parquet' | 'jsonl')[]
const input = `bench/out/ultrafeedback-${rows}.parquet`
mkdirSync('bench/out', { recursive: true })
if (!existsSync(input)) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/make-ultrafeedback-64k.ts', input, String(rows)], { stdio: 'inherit' })
  if (r.status !== 0) process.exit(1)
}
const options = loadRecipe('zephyr', { binarize: BINARIZE_SECTION }).values.binarize as unknown as BinarizeOptions
const mb = statSync(input).size / 1e6
const t0 = performance.now()
const stats = await binarize({ inputs: [input], out: 'bench/out/binarized', formats, recipeName: 'zephyr', options })
const s = (performance.now() - t0) / 1000
const rssMiB = process.resourceUsage().maxRSS / 1024
const result = {
  bench: 'binarize', format, rows: stats.rows_read, pairs: stats.pairs_total, parquet_mb: +mb.toFixed(1),
  wall_s: +s.toFixed(2), rows_per_s: Math.round(stats.rows_read / s), mb_per_s: +(mb / s).toFixed(1), peak_rss_mib: Math.round(rssMiB),
  targets: { wall_s: 15, peak_rss_mib: 1024 }, date: new Date().toISOString().slice(0, 10),
}
console.log(JSON.stringify(result))
