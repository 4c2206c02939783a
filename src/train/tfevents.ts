/**
 * TensorBoard event files, written by hand: no maintained pure-JS writer exists on npm, and tfjs-node's
 * summaryFileWriter needs the native binding (and flushes every 2 minutes). ~80 lines.
 *
 * Format (tensorboard record_writer.py, event.proto, summary.proto): a TFRecord stream of
 *   u64 LE length | u32 LE masked_crc32c(length bytes) | data | u32 LE masked_crc32c(data)
 * where data is a serialized `Event`. First event: {wall_time, file_version: "brain.Event:2"}; scalars use
 * the simple_value form every reader accepts. CRC32C is Castagnoli, reflected 0x82F63B78;
 * mask(c) = ((c >>> 15) | (c << 17)) + 0xA282EAD8.
 */
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'

const TABLE = (() => {
  const t = new Uint32Array(256)
  for (let i = 0; i < 256; i++) {
    let c = i
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
    t[i] = c >>> 0
  }
  return t
})()

export function crc32c(buf: Uint8Array): number {
  let c = 0xffffffff
  for (const b of buf) c = TABLE[(c ^ b) & 0xff]! ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

export const maskCrc = (c: number) => ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0

function varint(n: number): number[] {
  const out: number[] = []
  let x = BigInt(n)
  do {
    let b = Number(x & 0x7fn)
    x >>= 7n
    if (x > 0n) b |= 0x80
    out.push(b)
  } while (x > 0n)
  return out
}

const lenField = (tag: number, bytes: Uint8Array | number[]) => [tag, ...varint(bytes.length), ...bytes]

function f64(x: number): number[] {
  const b = Buffer.alloc(8)
  b.writeDoubleLE(x)
  return [...b]
}
function f32(x: number): number[] {
  const b = Buffer.alloc(4)
  b.writeFloatLE(x)
  return [...b]
}

/** Serialized Event with a scalar summary (or the file_version header when tag is undefined). */
export function encodeEvent(wallTime: number, step: number, tag?: string, value?: number): Uint8Array {
  const ev = [0x09, ...f64(wallTime), 0x10, ...varint(step)]
  if (tag === undefined) return Uint8Array.from([...ev, ...lenField(0x1a, [...Buffer.from('brain.Event:2')])])
  const val = [...lenField(0x0a, [...Buffer.from(tag, 'utf8')]), 0x15, ...f32(value!)]
  const summary = lenField(0x0a, val)
  return Uint8Array.from([...ev, ...lenField(0x2a, summary)])
}

export function record(data: Uint8Array): Buffer {
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(BigInt(data.length))
  const head = Buffer.alloc(4)
  head.writeUInt32LE(maskCrc(crc32c(len)))
  const tail = Buffer.alloc(4)
  tail.writeUInt32LE(maskCrc(crc32c(data)))
  return Buffer.concat([len, head, Buffer.from(data), tail])
}

/** Appends scalars to `<dir>/events.out.tfevents.<secs>.<host>.<pid>.0`, flushed on every call. */
export class EventWriter {
  readonly path: string
  constructor(dir: string) {
    mkdirSync(dir, { recursive: true })
    const now = Date.now() / 1000
    this.path = join(dir, `events.out.tfevents.${Math.floor(now)}.${hostname()}.${process.pid}.0`)
    writeFileSync(this.path, record(encodeEvent(now, 0)))
  }
  /** HF's rewrite_logs: eval_x -> eval/x, everything else -> train/x. */
  scalars(step: number, values: Record<string, number>): void {
    const now = Date.now() / 1000
    const recs = Object.entries(values)
      .filter(([, v]) => Number.isFinite(v))
      .map(([k, v]) => record(encodeEvent(now, step, k.startsWith('eval_') ? `eval/${k.slice(5)}` : `train/${k}`, v)))
    if (recs.length) appendFileSync(this.path, Buffer.concat(recs))
  }
}

/** Read back (tag, step, value) triples, checking both CRCs of every record (for tests and inspect). */
export function readEvents(buf: Buffer): { step: number; tag: string; value: number }[] {
  const out: { step: number; tag: string; value: number }[] = []
  let off = 0
  while (off < buf.length) {
    const len = Number(buf.readBigUInt64LE(off))
    if (buf.readUInt32LE(off + 8) !== maskCrc(crc32c(buf.subarray(off, off + 8)))) throw new Error(`bad length crc at ${off}`)
    const data = buf.subarray(off + 12, off + 12 + len)
    if (buf.readUInt32LE(off + 12 + len) !== maskCrc(crc32c(data))) throw new Error(`bad data crc at ${off}`)
    off += 16 + len
    let i = 0
    let step = 0
    let tag: string | undefined
    let value = NaN
    const readVarint = (b: Uint8Array, at: number): [number, number] => {
      let x = 0
      let shift = 0
      let p = at
      for (;;) {
        const c = b[p++]!
        x += (c & 0x7f) * 2 ** shift
        shift += 7
        if (!(c & 0x80)) return [x, p]
      }
    }
    while (i < data.length) {
      const key = data[i++]!
      if (key === 0x09) i += 8
      else if (key === 0x10) [step, i] = readVarint(data, i)
      else if (key === 0x1a) {
        const [n, p] = readVarint(data, i)
        i = p + n
      } else if (key === 0x2a) {
        const [n, p] = readVarint(data, i)
        const summary = data.subarray(p, p + n)
        const [vn, vp] = readVarint(summary, 1) // 0x0a Value
        const value_ = summary.subarray(vp, vp + vn)
        const [tn, tp] = readVarint(value_, 1) // 0x0a tag
        tag = Buffer.from(value_.subarray(tp, tp + tn)).toString('utf8')
        value = Buffer.from(value_.subarray(tp + tn + 1, tp + tn + 5)).readFloatLE(0) // 0x15 simple_value
        i = p + n
      } else throw new Error(`unexpected field 0x${key.toString(16)}`)
    }
    if (tag !== undefined) out.push({ step, tag, value })
  }
  return out
}
