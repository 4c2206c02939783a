/**
 * Output side of binarize: pairs in HuggingFaceH4/ultrafeedback_binarized's schema (+ source and models),
 * spooled to a JSONL file while reading (memory stays flat), then split and written as parquet
 * (hyparquet-writer, explicit nested schema: list<struct<content, role>>; hysnappy's wasm snappy, ~2x the
 * built-in JS one) and/or JSONL.
 *
 * Everything is written inside a temp directory that replaces `--out` only when complete.
 */
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readSync, rmSync, statSync, writeSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { dirname, join, resolve } from 'node:path'
import { ParquetWriter, fileWriter } from 'hyparquet-writer'
import { snappyCompressor } from 'hysnappy'
import { AlignError } from '../errors.ts'
import { commitTemp, tempPath } from '../files.ts'

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

/** Strings appended to a file through an 8 MiB byte buffer (no large joined strings, few syscalls). */
export class BufferedFile {
  private fd: number
  private buf = Buffer.allocUnsafe(1 << 23)
  private pos = 0
  constructor(readonly path: string) {
    this.fd = openSync(path, 'w')
  }
  write(s: string): void {
    if (this.pos + s.length * 3 > this.buf.length) {
      this.flush()
      if (s.length * 3 > this.buf.length) {
        writeSync(this.fd, s)
        return
      }
    }
    this.pos += this.buf.write(s, this.pos)
  }
  flush(): void {
    if (this.pos > 0) writeSync(this.fd, this.buf, 0, this.pos)
    this.pos = 0
  }
  close(): void {
    this.flush()
    closeSync(this.fd)
  }
}

/**
 * Append-only spool of compact pairs (the prompt once, not four times as in the H4 layout), one JSON array
 * per line, behind an 8 MiB write buffer. The full records are built when the splits are written.
 */
export class Spool {
  private file: BufferedFile
  count = 0
  constructor(readonly path: string) {
    this.file = new BufferedFile(path)
  }
  push(rec: PairRecord): void {
    const c = rec.chosen[1]!.content
    const r = rec.rejected[1]!.content
    this.file.write(JSON.stringify([rec.prompt, rec.prompt_id, rec.source, c, rec.chosen_model, rec.score_chosen, r, rec.rejected_model, rec.score_rejected]) + '\n')
    this.count++
  }
  close(): void {
    this.file.close()
  }
}

function fromSpool(line: string): PairRecord {
  const [prompt, id, source, c, cm, cs, r, rm, rs] = JSON.parse(line) as [string, string, string, string, string, number, string, string, number]
  return pairRecord(prompt, id, source, { response: c, model: cm, score: cs }, { response: r, model: rm, score: rs })
}

/** Lines of a file, read synchronously in 4 MiB chunks. */
export function* readLines(path: string): Generator<string> {
  const fd = openSync(path, 'r')
  const chunk = Buffer.alloc(1 << 22)
  let rest = Buffer.alloc(0)
  try {
    for (;;) {
      const n = readSync(fd, chunk, 0, chunk.length, null)
      if (n === 0) break
      const data = rest.length ? Buffer.concat([rest, chunk.subarray(0, n)]) : chunk.subarray(0, n)
      let start = 0
      for (let nl = data.indexOf(10, start); nl !== -1; nl = data.indexOf(10, start)) {
        yield data.toString('utf8', start, nl)
        start = nl + 1
      }
      rest = Buffer.from(data.subarray(start))
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

const ROW_GROUP = 5000

/** One snappy compressor for every page: hysnappy's `snappyCompress` instantiates a fresh wasm module (and grows
 * its memory from nothing) on each call, ~1.5 s of the 64k-row bench. */
const snappy = snappyCompressor()

/** One split's open outputs: a buffered JSONL file and/or a parquet writer fed one row group at a time. */
class SplitWriter {
  private jsonl?: BufferedFile
  private pq?: ParquetWriter
  private rows: PairRecord[] = []
  constructor(dir: string, split: Split, formats: ('parquet' | 'jsonl')[]) {
    if (formats.includes('jsonl')) this.jsonl = new BufferedFile(join(dir, `${split}.jsonl`))
    if (formats.includes('parquet')) {
      this.pq = new ParquetWriter({ writer: fileWriter(join(dir, `${split}.parquet`)), schema: PAIRS_SCHEMA as never, createdBy: 'align binarize', compressors: { SNAPPY: snappy } })
    }
  }
  push(rec: PairRecord): void {
    this.jsonl?.write(JSON.stringify(rec) + '\n')
    if (this.pq) {
      this.rows.push(rec)
      if (this.rows.length >= ROW_GROUP) this.flushParquet()
    }
  }
  private flushParquet(): void {
    if (!this.pq || (this.rows.length === 0 && this.pq.num_rows > 0n)) return
    const rows = this.rows
    const columnData = COLUMNS.map((name) => ({ name, data: rows.map((r) => r[name as keyof PairRecord]) }))
    this.pq.write({ columnData: columnData as never, rowGroupSize: Math.max(rows.length, 1) })
    this.rows = []
  }
  close(): void {
    this.jsonl?.close()
    this.flushParquet()
    this.pq?.finish()
  }
}

/** One pass over the spool: pair i goes to test_prefs when `isTest(i)`, else to train_prefs. */
export function writeSplits(spoolPath: string, dir: string, formats: ('parquet' | 'jsonl')[], isTest: (i: number) => boolean): void {
  const train = new SplitWriter(dir, 'train_prefs', formats)
  const test = new SplitWriter(dir, 'test_prefs', formats)
  let i = 0
  for (const line of readLines(spoolPath)) (isTest(i++) ? test : train).push(fromSpool(line))
  train.close()
  test.close()
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
      if (!statSync(out).isDirectory()) throw new AlignError(`--out ${out} is a file; binarize writes a directory (train_prefs/test_prefs + stats.json): choose another --out`)
      const files = readdirSync(out)
      if (files.length > 0 && !files.includes('stats.json')) {
        throw new AlignError(`--out ${out} exists and is not a binarize output (no stats.json); choose another --out or empty it`)
      }
    }
    this.tmp = tempPath(out)
    rmSync(this.tmp, { recursive: true, force: true })
    mkdirSync(this.tmp)
  }
  commit(): void {
    commitTemp(this.tmp, this.out)
  }
  abort(): void {
    rmSync(this.tmp, { recursive: true, force: true })
  }
}
