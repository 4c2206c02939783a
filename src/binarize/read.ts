/**
 * Input side of binarize: expand `--input` specs (files, directories, globs) and stream UltraFeedback
 * rows out of parquet (one row group at a time, via hyparquet + hyparquet-compressors for zstd, gzip,
 * brotli, lz4; snappy is built in) or JSONL (line by line). Memory is bounded by one row group, never by
 * the file. Every failure names the file and the row, row group or line.
 */
import { createReadStream, openSync, readSync, closeSync, readdirSync, statSync, existsSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { join, relative, resolve } from 'node:path'
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects, type FileMetaData, type SchemaElement } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'
import { AlignError } from '../errors.ts'
import { REQUIRED_COLUMNS } from './ultrafeedback.ts'

/** Leaf columns binarize decodes; rationales, critiques and the rest of the nested schema are skipped. */
const LEAVES = new Set(['source', 'instruction', 'model', 'response', 'overall_score', 'fine-grained_score', 'Rating'])
const wanted = (path: string[]) => (path.length === 1 ? LEAVES.has(path[0]!) : path[0] === 'completions' && LEAVES.has(path[path.length - 1]!))

export interface InputFile {
  path: string
  format: 'parquet' | 'jsonl'
  bytes: number
}

/** A batch of raw rows; `firstRow` is the 0-based index in its file of rows[0]. */
export interface RowBatch {
  rows: unknown[]
  firstRow: number
  /** where row i came from, for error messages */
  where: (i: number) => string
  /** bytes of the file consumed after this batch */
  bytesDone: number
}

const EXTENSIONS: Record<string, InputFile['format']> = { '.parquet': 'parquet', '.jsonl': 'jsonl', '.json': 'jsonl' }

/** Files, directories (their *.parquet / *.jsonl, sorted) and globs (`*`, `?`, `**`), in order, deduplicated. */
export function expandInputs(specs: string[]): InputFile[] {
  if (specs.length === 0) throw new AlignError('no --input given: pass a parquet/JSONL file, a directory or a glob')
  const paths: string[] = []
  for (const spec of specs) {
    if (/[*?]/.test(spec)) {
      const matches = glob(spec)
      if (matches.length === 0) throw new AlignError(`--input ${spec}: the glob matched no file`)
      paths.push(...matches)
    } else if (!existsSync(spec)) {
      throw new AlignError(`--input ${spec}: no such file or directory`)
    } else if (statSync(spec).isDirectory()) {
      const files = readdirSync(spec).filter((f) => extOf(f) !== undefined).sort().map((f) => join(spec, f))
      if (files.length === 0) throw new AlignError(`--input ${spec}: the directory has no .parquet or .jsonl file`)
      paths.push(...files)
    } else {
      paths.push(spec)
    }
  }
  const seen = new Set<string>()
  return paths
    .filter((p) => !seen.has(resolve(p)) && seen.add(resolve(p)))
    .map((p) => ({ path: p, format: formatOf(p), bytes: statSync(p).size }))
}

function extOf(name: string): string | undefined {
  const m = /\.[a-z]+$/i.exec(name)
  return m && EXTENSIONS[m[0].toLowerCase()] ? m[0].toLowerCase() : undefined
}

/** By extension, else by the first bytes (PAR1 or `{`). */
function formatOf(path: string): InputFile['format'] {
  const ext = extOf(path)
  if (ext) return EXTENSIONS[ext]!
  const head = readHead(path, 4)
  if (head.toString('latin1') === 'PAR1') return 'parquet'
  if (head.toString('utf8').trimStart().startsWith('{')) return 'jsonl'
  throw new AlignError(`${path}: neither parquet nor JSONL (name it .parquet or .jsonl)`)
}

function readHead(path: string, n: number, position = 0): Buffer {
  const fd = openSync(path, 'r')
  try {
    const buf = Buffer.alloc(n)
    const got = readSync(fd, buf, 0, n, position)
    return buf.subarray(0, got)
  } finally {
    closeSync(fd)
  }
}

function glob(pattern: string): string[] {
  const parts = pattern.split('/')
  const firstWild = parts.findIndex((p) => /[*?]/.test(p))
  const base = parts.slice(0, firstWild).join('/') || '.'
  const rest = parts.slice(firstWild).join('/')
  const re = new RegExp(
    '^' +
      rest
        .replace(/[.+^${}()|[\]\\]/g, '\\$&')
        .replace(/\*\*\/?/g, '\u0000')
        .replace(/\*/g, '[^/]*')
        .replace(/\?/g, '[^/]')
        .replace(/\u0000/g, '(?:.*/)?') +
      '$',
  )
  if (!existsSync(base)) return []
  const out: string[] = []
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = join(dir, e.name)
      if (e.isDirectory()) walk(p)
      else if (re.test(relative(base, p))) out.push(p)
    }
  }
  walk(base)
  return out
}

/** Number of rows when cheap to know (parquet footer), else undefined. */
export async function countRows(file: InputFile): Promise<number | undefined> {
  if (file.format !== 'parquet') return undefined
  return Number((await parquetMeta(file)).num_rows)
}

async function parquetMeta(file: InputFile): Promise<FileMetaData> {
  if (file.bytes < 12) throw new AlignError(`${file.path}: not a parquet file (only ${file.bytes} bytes)`)
  if (readHead(file.path, 4).toString('latin1') !== 'PAR1') throw new AlignError(`${file.path}: not a parquet file (no PAR1 magic at the start)`)
  if (readHead(file.path, 4, file.bytes - 4).toString('latin1') !== 'PAR1') {
    throw new AlignError(`${file.path}: truncated parquet file (no PAR1 footer at the end); copy or download it again`)
  }
  try {
    return await parquetMetadataAsync(await asyncBufferFromFile(file.path))
  } catch (e) {
    throw new AlignError(`${file.path}: unreadable parquet footer (${(e as Error).message}); the file is corrupt or truncated`)
  }
}

export async function* readBatches(file: InputFile): AsyncGenerator<RowBatch> {
  if (file.format === 'parquet') yield* readParquet(file)
  else yield* readJsonl(file)
}

async function* readParquet(file: InputFile): AsyncGenerator<RowBatch> {
  const metadata = await parquetMeta(file)
  const top = new Set(metadata.schema.slice(1).map((e) => e.name))
  for (const c of REQUIRED_COLUMNS) {
    if (!top.has(c)) {
      throw new AlignError(`${file.path}: missing column ${JSON.stringify(c)} (has ${[...top].join(', ')}); binarize needs the openbmb/UltraFeedback schema`)
    }
  }
  const buffer = await asyncBufferFromFile(file.path)
  const projected = projectLeaves(metadata, wanted)
  let rowStart = 0
  for (const [g, group] of metadata.row_groups.entries()) {
    const n = Number(group.num_rows)
    let rows: unknown[]
    try {
      rows = await parquetReadObjects({ file: buffer, metadata: projected, columns: [...REQUIRED_COLUMNS], rowStart, rowEnd: rowStart + n, compressors })
    } catch (e) {
      throw new AlignError(`${file.path}: row group ${g} (rows ${rowStart + 1}-${rowStart + n}) cannot be decoded: ${(e as Error).message}`)
    }
    const first = rowStart
    const end = group.columns.reduce((m, c) => Math.max(m, Number(c.meta_data?.data_page_offset ?? 0n) + Number(c.meta_data?.total_compressed_size ?? 0n)), 0)
    yield { rows, firstRow: first, where: (i) => `${file.path} row ${first + i + 1}`, bytesDone: Math.min(end, file.bytes) }
    rowStart += n
  }
}

async function* readJsonl(file: InputFile): AsyncGenerator<RowBatch> {
  const lines = createInterface({ input: createReadStream(file.path, { encoding: 'utf8' }), crlfDelay: Infinity })
  let lineNo = 0
  let bytes = 0
  let rows: unknown[] = []
  let lineOf: number[] = []
  let firstRow = 0
  const flush = (): RowBatch => {
    const lineNos = lineOf
    const batch: RowBatch = { rows, firstRow, where: (i) => `${file.path} line ${lineNos[i]}`, bytesDone: Math.min(bytes, file.bytes) }
    firstRow += rows.length
    rows = []
    lineOf = []
    return batch
  }
  for await (const line of lines) {
    lineNo++
    bytes += Buffer.byteLength(line) + 1
    if (line.trim() === '') continue
    try {
      rows.push(JSON.parse(line))
    } catch (e) {
      throw new AlignError(`${file.path} line ${lineNo}: invalid JSON (${(e as Error).message}); a truncated file ends mid-line`)
    }
    lineOf.push(lineNo)
    if (rows.length === 1000) yield flush()
  }
  if (rows.length > 0) yield flush()
}

/**
 * The footer with only the leaf columns `keep` accepts (and the groups above them), so hyparquet decodes
 * and assembles just those: hyparquet selects top-level columns only, and a `completions` struct carries
 * ~25 leaves of which binarize needs 8. Halves decode time on UltraFeedback.
 */
export function projectLeaves(md: FileMetaData, keep: (path: string[]) => boolean): FileMetaData {
  interface Node { el: SchemaElement; children: Node[] }
  let i = 0
  const build = (): Node => {
    const el = md.schema[i++]!
    const children: Node[] = []
    for (let c = 0; c < (el.num_children ?? 0); c++) children.push(build())
    return { el, children }
  }
  const prune = (n: Node, path: string[]): Node | undefined => {
    if (!n.el.num_children) return keep(path) ? n : undefined
    const children = n.children.map((c) => prune(c, [...path, c.el.name])).filter((c): c is Node => c !== undefined)
    return children.length ? { el: { ...n.el, num_children: children.length }, children } : undefined
  }
  const root = prune(build(), [])
  const schema: SchemaElement[] = []
  const flatten = (n: Node) => {
    schema.push(n.el)
    n.children.forEach(flatten)
  }
  if (root) flatten(root)
  const row_groups = md.row_groups.map((g) => ({ ...g, columns: g.columns.filter((c) => c.meta_data && keep(c.meta_data.path_in_schema)) }))
  return { ...md, schema, row_groups }
}
