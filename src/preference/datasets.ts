/**
 * Datasets by id, offline. An id resolves to the directory `<datasets_dir>/<id>/` holding the Hub's own file layout
 * (what `huggingface-cli download --repo-type dataset <id> --local-dir <datasets_dir>/<id>` leaves there), and a
 * split to its files in it:
 *   data/<split>-00000-of-0000N.parquet (all shards)   the Hub's parquet layout (default config)
 *   <config>/<split>-*.parquet                          a named config
 *   <split>.parquet | <split>.jsonl                     align binarize's output, or any such directory
 * A local path works as an id. A mixture (alignment-handbook's `dataset_mixture` or the older `dataset_mixer` +
 * `dataset_splits`) is applied with the handbook's semantics: per dataset a weight (a fraction of its rows), then
 * the pool is shuffled and, with a test size, split; without one, `train*` splits train and `test*` splits
 * evaluate. Shuffles use align's seeded generator (rng.ts), not numpy's, so the same seed selects other rows
 * than `datasets.shuffle` would; sizes and semantics are the handbook's.
 */
import { existsSync, readdirSync, statSync } from 'node:fs'
import { isAbsolute, join } from 'node:path'
import { AlignError } from '../errors.ts'
import { Rng } from '../rng.ts'
import { readRows } from '../rows.ts'

export interface DatasetEntry {
  id: string
  split: string
  config?: string | null
  columns?: string[] | null
  /** fraction of the split's rows to use (the handbook's weight / mixer fraction); 1 = all */
  weight?: number | null
}

export interface Mixture {
  datasets: DatasetEntry[]
  /** rows (>= 1) or a fraction (< 1) of the pooled, shuffled rows held out for eval; 0 = split by name */
  testSplitSize: number
  seed: number
  datasetsDir: string
  /** the older `dataset_mixer` style: train fractions take the first rows, test splits are never subsampled */
  style: 'mixture' | 'mixer'
}

/** The directory a dataset id names: a local path as is, else `<datasetsDir>/<id>`. */
export function datasetDir(id: string, datasetsDir: string): string {
  if ((isAbsolute(id) || id.startsWith('.')) && existsSync(id)) return id
  const dir = join(datasetsDir, id)
  if (existsSync(dir) && statSync(dir).isDirectory()) return dir
  if (existsSync(id) && statSync(id).isDirectory()) return id
  throw new AlignError(`dataset ${id}: not found at ${dir}; download it there with \`huggingface-cli download --repo-type dataset ${id} --local-dir ${dir}\` (or set data.datasets_dir)`)
}

/** The files of `split` in a dataset directory, in shard order. */
export function splitFiles(dir: string, split: string, config?: string | null): string[] {
  const shards = (sub: string) => {
    const d = join(dir, sub)
    if (!existsSync(d) || !statSync(d).isDirectory()) return []
    return readdirSync(d).filter((f) => f.startsWith(`${split}-`) && /-\d+-of-\d+\.parquet$/.test(f)).sort().map((f) => join(d, f))
  }
  for (const found of [shards('data'), config && config !== 'default' ? shards(config) : [], shards('.')]) if (found.length) return found
  for (const f of [`${split}.parquet`, `${split}.jsonl`, join('data', `${split}.parquet`), join('data', `${split}.jsonl`)]) if (existsSync(join(dir, f))) return [join(dir, f)]
  throw new AlignError(`${dir}: no files for split ${split} (looked for data/${split}-*-of-*.parquet, ${split}.parquet and ${split}.jsonl)`)
}

/** All rows of a split, its files concatenated. */
export async function splitRows(dir: string, split: string, config?: string | null): Promise<{ rows: Record<string, any>[]; files: string[] }> {
  const files = splitFiles(dir, split, config)
  const rows: Record<string, any>[] = []
  for (const f of files) rows.push(...(await readRows(f)))
  return { rows, files }
}

const take = (rows: Record<string, any>[], weight: number | null | undefined) => rows.slice(0, Math.floor(rows.length * (weight ?? 1)))

/** Train and eval rows of a mixture, and the files they came from. */
export async function mixtureRows(m: Mixture): Promise<{ train: Record<string, any>[]; eval: Record<string, any>[]; files: string[] }> {
  const files: string[] = []
  const pools: { train: Record<string, any>[]; eval: Record<string, any>[] } = { train: [], eval: [] }
  for (const [i, d] of m.datasets.entries()) {
    if (d.weight !== undefined && d.weight !== null && !(d.weight >= 0)) throw new AlignError(`data.datasets[${i}] (${d.id}): weight ${d.weight} must be >= 0`)
    const { rows, files: f } = await splitRows(datasetDir(d.id, m.datasetsDir), d.split, d.config)
    files.push(...f)
    if (m.style === 'mixture') pools.train.push(...take(Rng.fromKey(`${m.seed}:mixture:${i}`).shuffle(rows), d.weight))
    else if (d.split.includes('test')) pools.eval.push(...rows) // the handbook never subsamples test splits
    else if (d.split.includes('train')) pools.train.push(...take(rows, d.weight))
    else throw new AlignError(`data.datasets[${i}] (${d.id}): split ${d.split} is neither a train nor a test split (dataset_splits need a train_/test_ prefix)`)
  }
  const train = Rng.fromKey(`${m.seed}:mixture:pool`).shuffle(pools.train)
  if (m.style === 'mixer' || m.testSplitSize <= 0) return { train, eval: Rng.fromKey(`${m.seed}:mixture:test`).shuffle(pools.eval), files }
  const n = m.testSplitSize >= 1 ? Math.floor(m.testSplitSize) : Math.ceil(m.testSplitSize * train.length)
  if (n >= train.length) throw new AlignError(`data.test_split_size ${m.testSplitSize}: the mixture has only ${train.length} rows`)
  return { train: train.slice(n), eval: train.slice(0, n), files }
}
