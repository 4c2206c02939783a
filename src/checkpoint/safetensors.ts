/**
 * safetensors read and write (https://github.com/huggingface/safetensors, "Format"):
 *   u64 LE header length N | N bytes of JSON header | data buffer
 * The header maps names to {dtype, shape, data_offsets: [begin, end)} relative to the data buffer, plus an
 * optional `__metadata__: {string: string}`. We read the header alone (8 + N bytes) and then one tensor at a
 * time, so a 15 GB bf16 shard never sits in memory twice. BF16/F16 convert to F32 on load; saving rounds to
 * nearest even. Written files carry `__metadata__ {"format": "pt"}`, without which transformers refuses them.
 *
 * Hand-written: the npm safetensors readers load whole files (or need a runtime we do not use), and the format
 * is 150 lines of byte handling.
 */
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs'
import { writeAtomic } from '../files.ts'
import { AlignError, describe } from '../errors.ts'

export type DType = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL'
const BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 }
const MAX_HEADER = 100_000_000

export interface TensorInfo {
  name: string
  dtype: DType
  shape: number[]
  /** absolute byte offsets in the file */
  begin: number
  end: number
}

export interface SafetensorsHeader {
  path: string
  fileSize: number
  metadata: Record<string, string>
  tensors: Map<string, TensorInfo>
}

/** Read and validate the header only. Every problem names the file (and tensor). */
export function readHeader(path: string): SafetensorsHeader {
  const fd = openSync(path, 'r')
  try {
    const fileSize = fstatSync(fd).size
    if (fileSize < 8) throw new AlignError(`${path}: not a safetensors file (${fileSize} bytes)`)
    const len8 = Buffer.alloc(8)
    readSync(fd, len8, 0, 8, 0)
    const n = Number(len8.readBigUInt64LE(0))
    if (n > MAX_HEADER || 8 + n > fileSize) throw new AlignError(`${path}: not a safetensors file or truncated (header length ${n}, file ${fileSize} bytes)`)
    const hbuf = Buffer.alloc(n)
    readSync(fd, hbuf, 0, n, 8)
    let json: Record<string, unknown>
    try {
      json = JSON.parse(hbuf.toString('utf8'))
    } catch (e) {
      throw new AlignError(`${path}: corrupt safetensors header (${(e as Error).message})`)
    }
    if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new AlignError(`${path}: corrupt safetensors header (not a JSON object)`)
    const dataStart = 8 + n
    const metadata = (json.__metadata__ ?? {}) as Record<string, string>
    const tensors = new Map<string, TensorInfo>()
    for (const [name, v] of Object.entries(json)) {
      if (name === '__metadata__') continue
      tensors.set(name, tensorEntry(path, name, v, dataStart, fileSize))
    }
    // the format requires the offsets to tile the data buffer exactly: no gaps, no overlaps, nothing after
    let at = 0
    for (const t of [...tensors.values()].sort((x, y) => x.begin - y.begin || x.end - y.end)) {
      if (t.begin - dataStart !== at) throw new AlignError(`${path}: tensor ${t.name} starts at data offset ${t.begin - dataStart} but the previous tensor ends at ${at} (offsets must tile the data: ${t.begin - dataStart < at ? 'overlap' : 'gap'}); the file is corrupt`)
      at = t.end - dataStart
    }
    if (dataStart + at !== fileSize) throw new AlignError(`${path}: ${fileSize - dataStart - at} bytes after the last tensor belong to none; the file is corrupt`)
    return { path, fileSize, metadata, tensors }
  } finally {
    closeSync(fd)
  }
}

/** One header entry, checked: a known dtype, a list of non-negative integer dims, offsets that fit the file. */
function tensorEntry(path: string, name: string, v: unknown, dataStart: number, fileSize: number): TensorInfo {
  if (v === null || typeof v !== 'object') throw new AlignError(`${path}: tensor ${name} has header entry ${describe(v)}, not {dtype, shape, data_offsets}; the file is corrupt`)
  const { dtype, shape, data_offsets } = v as { dtype: unknown; shape: unknown; data_offsets: unknown }
  if (typeof dtype !== 'string' || !(dtype in BYTES)) throw new AlignError(`${path}: tensor ${name} has unsupported dtype ${describe(dtype)}`)
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) throw new AlignError(`${path}: tensor ${name} has shape ${describe(shape)}, not a list of non-negative integers; the file is corrupt`)
  const [b, e] = Array.isArray(data_offsets) ? data_offsets : []
  const want = shape.reduce((a: number, d: number) => a * d, 1) * BYTES[dtype as DType]
  if (!Number.isInteger(b) || !Number.isInteger(e) || b < 0 || e - b !== want) throw new AlignError(`${path}: tensor ${name} ${dtype}[${shape}] has data_offsets ${JSON.stringify(data_offsets)} (needs ${want} bytes)`)
  if (dataStart + e > fileSize) throw new AlignError(`${path}: truncated: tensor ${name} ends at byte ${dataStart + e} of ${fileSize}`)
  return { name, dtype: dtype as DType, shape, begin: dataStart + b, end: dataStart + e }
}

/** Read one tensor as float32 (F32, F16, BF16, and integer dtypes converted). */
export function readTensor(h: SafetensorsHeader, name: string): Float32Array {
  const t = h.tensors.get(name)
  if (!t) throw new AlignError(`${h.path}: no tensor ${name}`)
  const raw = Buffer.alloc(t.end - t.begin)
  const fd = openSync(h.path, 'r')
  try {
    let off = 0
    while (off < raw.length) {
      const got = readSync(fd, raw, off, Math.min(raw.length - off, 1 << 30), t.begin + off)
      if (got === 0) throw new AlignError(`${h.path}: truncated while reading ${name}`)
      off += got
    }
  } finally {
    closeSync(fd)
  }
  return toFloat32(raw, t.dtype)
}

export function toFloat32(raw: Buffer, dtype: DType): Float32Array {
  const n = raw.length / BYTES[dtype]
  const out = new Float32Array(n)
  switch (dtype) {
    case 'F32':
      if (raw.byteOffset % 4 === 0) return new Float32Array(raw.buffer, raw.byteOffset, n).slice()
      for (let i = 0; i < n; i++) out[i] = raw.readFloatLE(4 * i)
      return out
    case 'BF16': {
      const bits = new Uint32Array(out.buffer)
      if (raw.byteOffset % 2 === 0) {
        const u16 = new Uint16Array(raw.buffer, raw.byteOffset, n)
        for (let i = 0; i < n; i++) bits[i] = u16[i]! << 16
      } else for (let i = 0; i < n; i++) bits[i] = raw.readUInt16LE(2 * i) << 16
      return out
    }
    case 'F16':
      for (let i = 0; i < n; i++) out[i] = halfToFloat(raw.readUInt16LE(2 * i))
      return out
    case 'F64':
      for (let i = 0; i < n; i++) out[i] = raw.readDoubleLE(8 * i)
      return out
    case 'I64':
      for (let i = 0; i < n; i++) out[i] = Number(raw.readBigInt64LE(8 * i))
      return out
    case 'I32':
      for (let i = 0; i < n; i++) out[i] = raw.readInt32LE(4 * i)
      return out
    case 'I16':
      for (let i = 0; i < n; i++) out[i] = raw.readInt16LE(2 * i)
      return out
    case 'I8':
      for (let i = 0; i < n; i++) out[i] = raw.readInt8(i)
      return out
    case 'U8':
    case 'BOOL':
      for (let i = 0; i < n; i++) out[i] = raw[i]!
      return out
  }
}

export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1
  const e = (h >> 10) & 0x1f
  const f = h & 0x3ff
  if (e === 0) return s * f * 2 ** -24
  if (e === 31) return f ? NaN : s * Infinity
  return s * (1 + f / 1024) * 2 ** (e - 15)
}

const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)

/** float32 -> bfloat16 bits, round to nearest even (torch's rounding); NaN stays NaN. */
export function floatToBf16(x: number): number {
  f32[0] = x
  const b = u32[0]!
  if ((b & 0x7fffffff) > 0x7f800000) return 0x7fc0
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff
}

/** float32 -> IEEE half bits, round to nearest even. */
export function floatToHalf(x: number): number {
  f32[0] = x
  const b = u32[0]!
  const sign = (b >>> 16) & 0x8000
  const exp = (b >>> 23) & 0xff
  let mant = b & 0x7fffff
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0)
  let e = exp - 127 + 15
  if (e >= 31) return sign | 0x7c00
  if (e <= 0) {
    if (e < -10) return sign
    mant |= 0x800000
    const shift = 14 - e
    let half = mant >>> shift
    const rem = mant & ((1 << shift) - 1)
    const mid = 1 << (shift - 1)
    if (rem > mid || (rem === mid && half & 1)) half++
    return sign | half
  }
  let half = (e << 10) | (mant >>> 13)
  const rem = mant & 0x1fff
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++
  return sign | half
}

export interface TensorToWrite {
  name: string
  shape: number[]
  /** float data, or a function producing it (a read back from the backend), called once when the tensor is written */
  data: Float32Array | (() => Float32Array | Promise<Float32Array>)
}

function encode(data: Float32Array, dtype: 'F32' | 'F16' | 'BF16'): Buffer {
  if (dtype === 'F32') return Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  const out = new Uint16Array(data.length)
  const conv = dtype === 'BF16' ? floatToBf16 : floatToHalf
  for (let i = 0; i < data.length; i++) out[i] = conv(data[i]!)
  return Buffer.from(out.buffer)
}

/**
 * Write tensors (sorted by name, as the reference writer orders equal-dtype tensors) to `path`, through a
 * temp file renamed into place. Tensor data is produced and written one tensor at a time.
 */
export async function writeSafetensors(path: string, tensors: TensorToWrite[], dtype: 'F32' | 'F16' | 'BF16', metadata: Record<string, string> = {}): Promise<number> {
  const sorted = [...tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', ...metadata } }
  let off = 0
  for (const t of sorted) {
    const bytes = t.shape.reduce((a, d) => a * d, 1) * BYTES[dtype]
    header[t.name] = { dtype, shape: t.shape, data_offsets: [off, off + bytes] }
    off += bytes
  }
  let json = JSON.stringify(header)
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8) // data buffer 8-byte aligned
  await writeAtomic(path, async (tmp) => {
    const fd = openSync(tmp, 'w')
    try {
      const len = Buffer.alloc(8)
      len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)))
      writeSync(fd, len)
      writeSync(fd, json)
      for (const t of sorted) {
        const data = typeof t.data === 'function' ? await t.data() : t.data
        const want = t.shape.reduce((a, d) => a * d, 1)
        if (data.length !== want) throw new AlignError(`writing ${path}: tensor ${t.name} has ${data.length} values for shape [${t.shape}]`)
        writeSync(fd, encode(data, dtype))
      }
    } finally {
      closeSync(fd)
    }
  })
  return off
}
