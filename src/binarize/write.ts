/**
 * Output side of binarize: pairs in HuggingFaceH4/ultrafeedback_binarized's schema (+ source and models),
 * spooled to a JSONL file while reading (memory stays flat), then split and written as parquet
 * (hyparquet-writer, explicit nested schema: list<struct<content, role>>) and/or JSONL.
 *
 * Everything is written inside a temp directory that replaces `--out` only when complete.
 */
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readSync, renameSync, rmSync, writeSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { basename, dirname, join, resolve } from 'node:path'
import { fileWriter, parquetWriteRows } from 'hyparquet-writer'
import { AlignError } from '../errors.ts'

export interface Message {
  content: string
  role: 'user' | 'assistant'
}

/** One output row. Key order here is the column order on disk. */
export interface PairRecord {
  prompt: string
  prompt_id: string
  chosen: Message[]
  rejected: Message[]
  messages: Message[]
  score_chosen: number
  score_rejected: number
  source: string
  chosen_model: string
  rejected_model: string
}

export const SPLITS = ['train_prefs', 'test_prefs'] as const
export type Split = (typeof SPLITS)[number]

export function promptId(prompt: string): string {
  return createHash('sha256').update(prompt, 'utf8').digest('hex')
}

export function pairRecord(prompt: string, id: string, source: string, chosen: { response: string; model: string; score: number }, rejected: { response: string; model: string; score: number }): PairRecord {
  const user: Message = { content: prompt, role: 'user' }
  const c: Message[] = [user, { content: chosen.response, role: 'assistant' }]
  const r: Message[] = [user, { content: rejected.response, role: 'assistant' }]
  return {
    prompt,
    prompt_id: id,
    chosen: c,
    rejected: r,
    messages: c,
    score_chosen: chosen.score,
    score_rejected: rejected.score,
    source,
    chosen_model: chosen.model,
    rejected_model: rejected.model,
  }
}

/** Append-only JSONL spool with a 1 MiB write buffer. */
export class Spool {
  private fd: number
  private buf: string[] = []
  private size = 0
  count = 0
  constructor(readonly path: string) {
    this.fd = openSync(path, 'w')
  }
  push(rec: PairRecord): void {
    const line = JSON.stringify(rec) + '\n'
    this.buf.push(line)
    this.size += line.length
    this.count++
    if (this.size > 1 << 20) this.flush()
  }
  flush(): void {
    if (this.buf.length) writeSync(this.fd, this.buf.join(''))
    this.buf = []
    this.size = 0
  }
  close(): void {
    this.flush()
    closeSync(this.fd)
  }
}

/** Lines of a file, read synchronously in 4 MiB chunks (parquetWriteRows pulls rows synchronously). */
export function* readLines(path: string): Generator<string> {
  const fd = openSync(path, 'r')
  const chunk = Buffer.alloc(1 << 22)
  let rest = Buffer.alloc(0)
  try {
    for (;;) {
      const n = readSync(fd, chunk, 0, chunk.length, null)
      if (n === 0) break
      let data = Buffer.concat([rest, chunk.subarray(0, n)])
      let start = 0
      for (let nl = data.indexOf(10, start); nl !== -1; nl = data.indexOf(10, start)) {
        yield data.toString('utf8', start, nl)
        start = nl + 1
      }
      rest = Buffer.from(data.subarray(start))
      data = rest
    }
    if (rest.length) yield rest.toString('utf8')
  } finally {
    closeSync(fd)
  }
}

const messagesSchema = (name: string) => [
  { name, repetition_type: 'OPTIONAL', converted_type: 'LIST', num_children: 1 },
  { name: 'list', repetition_type: 'REPEATED', num_children: 1 },
  { name: 'element', repetition_type: 'OPTIONAL', num_children: 2 },
  { name: 'content', type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: 'OPTIONAL' },
  { name: 'role', type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: 'OPTIONAL' },
]
const str = (name: string) => ({ name, type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: 'OPTIONAL' })
const dbl = (name: string) => ({ name, type: 'DOUBLE', repetition_type: 'OPTIONAL' })

/** The parquet schema of a pairs file, in PairRecord's column order. */
export const PAIRS_SCHEMA = [
  { name: 'schema', num_children: 10 },
  str('prompt'),
  str('prompt_id'),
  ...messagesSchema('chosen'),
  ...messagesSchema('rejected'),
  ...messagesSchema('messages'),
  dbl('score_chosen'),
  dbl('score_rejected'),
  str('source'),
  str('chosen_model'),
  str('rejected_model'),
]
const COLUMNS = ['prompt', 'prompt_id', 'chosen', 'rejected', 'messages', 'score_chosen', 'score_rejected', 'source', 'chosen_model', 'rejected_model']

/** Write the spooled lines selected by `keep(index)` as `<dir>/<split>.{parquet,jsonl}`. */
export function writeSplit(spoolPath: string, dir: string, split: Split, formats: ('parquet' | 'jsonl')[], keep: (i: number) => boolean): void {
  function* selected(): Generator<string> {
    let i = 0
    for (const line of readLines(spoolPath)) if (keep(i++)) yield line
  }
  if (formats.includes('jsonl')) {
    const fd = openSync(join(dir, `${split}.jsonl`), 'w')
    let buf: string[] = []
    for (const line of selected()) {
      buf.push(line + '\n')
      if (buf.length >= 2000) {
        writeSync(fd, buf.join(''))
        buf = []
      }
    }
    writeSync(fd, buf.join(''))
    closeSync(fd)
  }
  if (formats.includes('parquet')) {
    const writer = fileWriter(join(dir, `${split}.parquet`))
    const rows = (function* () {
      for (const line of selected()) yield JSON.parse(line) as Record<string, unknown>
    })()
    parquetWriteRows({
      writer,
      rows,
      columns: COLUMNS.map((name) => ({ name })),
      schema: PAIRS_SCHEMA as never,
      rowGroupSize: 5000,
      createdBy: 'align binarize',
    })
  }
}

/**
 * A temp directory beside `out` that becomes `out` on commit(). An existing `out` is replaced only if it
 * is empty or was written by binarize (it has stats.json); anything else is refused, never deleted.
 */
export class OutputDir {
  readonly tmp: string
  constructor(readonly out: string) {
    const parent = dirname(resolve(out))
    mkdirSync(parent, { recursive: true })
    if (existsSync(out)) {
      const files = readdirSync(out)
      if (files.length > 0 && !files.includes('stats.json')) {
        throw new AlignError(`--out ${out} exists and is not a binarize output (no stats.json); choose another --out or empty it`)
      }
    }
    this.tmp = join(parent, `.${basename(out)}.tmp-${process.pid}`)
    rmSync(this.tmp, { recursive: true, force: true })
    mkdirSync(this.tmp)
  }
  commit(): void {
    rmSync(this.out, { recursive: true, force: true })
    renameSync(this.tmp, this.out)
  }
  abort(): void {
    rmSync(this.tmp, { recursive: true, force: true })
  }
}
