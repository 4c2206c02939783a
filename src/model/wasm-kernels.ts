/**
 * Faster tfjs-backend-wasm kernels for the ops a training step needs, registered over the stock ones when the
 * wasm backend starts (backend.ts). Model code keeps calling plain tf ops, so it is the same on every backend.
 *
 * Hand-written because no library fixes these in tfjs 4.22's wasm backend (measured on the tiny-bench shapes):
 * - BatchMatMul: only an unbatched, untransposed product reaches XNNPACK; a batch > 1 or a transposed operand
 *   runs a scalar triple loop at ~2.8 GFLOP/s (the attention products, 2.6 s of a 7.2 s DPO step). Here each
 *   batch slice runs as its own XNNPACK product on aliases into the operands' heap memory (no copies), and a
 *   transposed operand is materialised once by the Transpose kernel: ~30 GFLOP/s, 10x on attention.
 * - Slice / SplitV: the stock kernel copies the *whole* input out of the wasm heap (readSync) for every slice it
 *   takes, so splitting a [16, 1088, 272] tensor in 16 allocates 16 × 19 MB. These read through a heap view.
 * - Transpose of the last two axes (the weights of dx = dy·Wᵀ, the LM head's blocks, attention's Kᵀ): the stock
 *   kernel walks the output element by element, ~4.5 ms for a [256, 4096] block; a copy in 32 × 32 tiles between
 *   heap views takes ~2 ms alone, ~3 ms inside a profiled step. Other permutations stay with the stock kernel.
 * - Identity: tfjs clones every tensor an op or customGrad saves for the backward pass, and the stock kernel copies
 *   it (~40 ms of a tiny-bench micro-batch: attention's probabilities, the head's blocks). Tensors are never
 *   written in place (Variable.assign swaps storage), so the clone shares the storage and counts a reference, as
 *   the cpu backend's Identity and the wasm backend's own Reshape do.
 * The aliases are tensor ids registered with the C++ side only (registerTensor / disposeData there never
 * allocate or free memory); they live for the duration of one call.
 */
import * as tf from '@tensorflow/tfjs'

/** The parts of tfjs-backend-wasm's BackendWasm these kernels use (it exports no type for them). */
interface WasmBackend {
  wasm: {
    cwrap: (name: string, ret: null, args: string[]) => (...args: unknown[]) => void
    tfjs: { registerTensor(id: number, size: number, offset: number): void; disposeData(id: number): void }
    HEAPU8: Uint8Array
  }
  dataIdNextNumber: number
  dataIdMap: { get(dataId: object): { memoryOffset: number } }
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo
  disposeData(dataId: object): boolean
  incRef(dataId: object): void
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array
}

type KernelArgs = { inputs: tf.NamedTensorInfoMap; attrs: tf.NamedAttrMap; backend: WasmBackend }
const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1)
const shapeBytes = (shape: number[]) => new Uint8Array(new Int32Array(shape).buffer)

/** The kernel functions registered here, by kernel name (tests check they are the ones tfjs dispatches to). */
export const installedKernels = new Map<string, unknown>()

/** A float32 tensor's values as a view of the wasm heap (no copy): valid until the next kernel may grow the heap. */
export function heapView(t: tf.Tensor): Float32Array {
  return (tf.backend() as unknown as WasmBackend).typedArrayFromHeap(t) as Float32Array
}

/** Register the kernels over the stock wasm ones. Call once the wasm backend is initialised. */
export function installWasmKernels(): void {
  if (installedKernels.size) return
  const stock = (name: string) => tf.getKernel(name, 'wasm')!.kernelFunc as unknown as (a: KernelArgs) => tf.TensorInfo
  const stockTranspose = stock('Transpose')
  const batchMatMulKernel = stock('BatchMatMul')
  const backend = tf.backend() as unknown as WasmBackend
  // the C++ entry point of BatchMatMul: (a_id, a_shape, a_rank, b_id, b_shape, b_rank, transpose_a, transpose_b, out_id)
  const cppBatchMatMul = backend.wasm.cwrap('BatchMatMul', null, ['number', 'array', 'number', 'number', 'array', 'number', 'number', 'number', 'number'])

  /** out[m, n] = a[m, k] @ b[k, n] on XNNPACK, operands given as byte offsets into the wasm heap. */
  function xnnMatMul(be: WasmBackend, aOff: number, bOff: number, outOff: number, m: number, k: number, n: number): void {
    const ids = [be.dataIdNextNumber++, be.dataIdNextNumber++, be.dataIdNextNumber++] as const
    be.wasm.tfjs.registerTensor(ids[0], m * k, aOff)
    be.wasm.tfjs.registerTensor(ids[1], k * n, bOff)
    be.wasm.tfjs.registerTensor(ids[2], m * n, outOff)
    cppBatchMatMul(ids[0], shapeBytes([1, m, k]), 3, ids[1], shapeBytes([1, k, n]), 3, 0, 0, ids[2])
    for (const id of ids) be.wasm.tfjs.disposeData(id) // also drops the XNNPACK operator cached on b's id
  }

  function batchMatMul(args: KernelArgs): tf.TensorInfo {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo }
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean }
    const be = args.backend
    const batchA = size(a.shape.slice(0, -2))
    const batchB = size(b.shape.slice(0, -2))
    const plain = !transposeA && !transposeB
    const broadcastable = batchA === batchB || batchA === 1 || batchB === 1
    if (a.dtype !== 'float32' || b.dtype !== 'float32' || !broadcastable || (plain && batchA === 1 && batchB === 1)) return batchMatMulKernel(args)
    const [m, k] = (transposeA ? a.shape.slice(-2).reverse() : a.shape.slice(-2)) as [number, number]
    const n = transposeB ? b.shape[b.shape.length - 2]! : b.shape[b.shape.length - 1]!
    const outer = (batchA >= batchB ? a : b).shape.slice(0, -2)
    // aᵀ·op(b) = (op(b)ᵀ·a)ᵀ: a as stored is already the right operand there, so transposing a [k, m] gives way to
    // transposing b [k, n] (unless transposed already) and the [n, m] result — far fewer elements when m·k is the
    // big one (attention's dV = pᵀ·dO and dK = dSᵀ·q in tiny-bench: [1536, 384] against [1536, 32] and [32, 384];
    // their 8 products a micro-batch 111 → 100 ms in a profiled step, 2026-11-29). The same products, each summed
    // over k in the same order: bit-identical on the attention shapes (checked), and tested against the plain product.
    if (transposeA && (transposeB ? 0 : k * n) + m * n < m * k + (transposeB ? k * n : 0)) {
      const lhs = transposeB ? b : transposeLast2(be, b) // [..., n, k]
      const outT = product(be, lhs, a, batchB, batchA, n, k, m, outer)
      const out = transposeLast2(be, outT)
      if (lhs !== b) be.disposeData(lhs.dataId)
      be.disposeData(outT.dataId)
      return out
    }
    const at = transposeA ? transposeLast2(be, a) : a // [..., m, k]
    const bt = transposeB ? transposeLast2(be, b) : b // [..., k, n]
    const out = product(be, at, bt, batchA, batchB, m, k, n, outer)
    if (at !== a) be.disposeData(at.dataId) // the transposed copies
    if (bt !== b) be.disposeData(bt.dataId)
    return out
  }

  /** out [...outer, m, n] = a [..., m, k] @ b [..., k, n] on XNNPACK, per batch slice; a batch of 1 broadcasts. */
  function product(be: WasmBackend, a: tf.TensorInfo, b: tf.TensorInfo, batchA: number, batchB: number, m: number, k: number, n: number, outer: number[]): tf.TensorInfo {
    const batch = Math.max(batchA, batchB)
    const out = be.makeOutput([...outer, m, n], 'float32')
    const [aOff, bOff, oOff] = [a, b, out].map((t) => be.dataIdMap.get(t.dataId).memoryOffset) as [number, number, number]
    if (batchB === 1) {
      xnnMatMul(be, aOff, bOff, oOff, batch * m, k, n) // a shared b: the batch folds into the rows, one product
    } else {
      for (let i = 0; i < batch; i++) {
        xnnMatMul(be, aOff + (batchA === 1 ? 0 : i * m * k * 4), bOff + i * k * n * 4, oOff + i * m * n * 4, m, k, n)
      }
    }
    return out
  }

  /** x [..., R, C] → [..., C, R], float32, copied in square tiles between views of the heap (exact: a copy). */
  function transposeLast2(be: WasmBackend, x: tf.TensorInfo): tf.TensorInfo {
    const [R, C] = x.shape.slice(-2) as [number, number]
    const out = be.makeOutput([...x.shape.slice(0, -2), C, R], 'float32')
    const xs = be.typedArrayFromHeap(x) as Float32Array // views taken after makeOutput: a heap growth detaches older ones
    const os = be.typedArrayFromHeap(out) as Float32Array
    const TILE = 32
    for (let b = 0, base = 0; b < size(x.shape.slice(0, -2)); b++, base += R * C) {
      for (let r0 = 0; r0 < R; r0 += TILE) {
        for (let c0 = 0; c0 < C; c0 += TILE) {
          const [r1, c1] = [Math.min(R, r0 + TILE), Math.min(C, c0 + TILE)]
          for (let r = r0; r < r1; r++) for (let c = c0, i = base + r * C + c0; c < c1; c++, i++) os[base + c * R + r] = xs[i]!
        }
      }
    }
    return out
  }

  /** x[begin : begin + size], read through a view of the heap (the stock kernel copies all of x per call). */
  function slice(be: WasmBackend, x: tf.TensorInfo, begin: number[], sz: number[]): tf.TensorInfo {
    const out = be.makeOutput(sz, x.dtype)
    const xs = be.typedArrayFromHeap(x) // views taken after makeOutput: a heap growth detaches older ones
    const os = be.typedArrayFromHeap(out)
    const r = x.shape.length
    const strides = x.shape.map((_, d) => size(x.shape.slice(d + 1)))
    const row = sz[r - 1] ?? 1
    const rows = size(sz) / Math.max(row, 1)
    const idx = new Array<number>(Math.max(r - 1, 0)).fill(0) // odometer over all but the last axis
    for (let q = 0; q < rows; q++) {
      let off = begin[r - 1] ?? 0
      for (let d = 0; d < r - 1; d++) off += (begin[d]! + idx[d]!) * strides[d]!
      if (row >= 64) os.set(xs.subarray(off, off + row), q * row)
      else for (let j = 0; j < row; j++) os[q * row + j] = xs[off + j]!
      for (let d = r - 2; d >= 0; d--) {
        if (++idx[d]! < sz[d]!) break
        idx[d] = 0
      }
    }
    return out
  }

  const sliceKernel = stock('Slice')
  const splitVKernel = stock('SplitV')
  const override = (kernelName: string, kernelFunc: (a: KernelArgs) => tf.TensorInfo | tf.TensorInfo[]) => {
    tf.unregisterKernel(kernelName, 'wasm')
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc })
    installedKernels.set(kernelName, kernelFunc)
  }
  override('BatchMatMul', batchMatMul)
  override('Identity', (args) => {
    const x = args.inputs.x as tf.TensorInfo
    args.backend.incRef(x.dataId)
    return { dataId: x.dataId, shape: x.shape, dtype: x.dtype }
  })
  override('Transpose', (args) => {
    const x = args.inputs.x as tf.TensorInfo
    const perm = args.attrs.perm as number[]
    const n = perm.length
    const last2 = n >= 2 && perm.every((p, i) => p === (i < n - 2 ? i : i === n - 2 ? n - 1 : n - 2))
    return x.dtype === 'float32' && last2 ? transposeLast2(args.backend, x) : stockTranspose(args)
  })
  override('Slice', (args) => {
    const x = args.inputs.x as tf.TensorInfo
    if (x.dtype === 'string') return sliceKernel(args)
    const [begin, sz] = tf.slice_util.parseSliceParams(x as tf.Tensor, args.attrs.begin as number[], args.attrs.size as number[]) as [number[], number[]]
    return slice(args.backend, x, begin, sz)
  })
  override('SplitV', (args) => {
    const x = args.inputs.x as tf.TensorInfo
    if (x.dtype === 'string') return splitVKernel(args)
    const axis = tf.util.parseAxisParam(args.attrs.axis as number, x.shape)[0]!
    const sizes = tf.backend_util.prepareSplitSize(x as tf.Tensor, args.attrs.numOrSizeSplits as number[], axis)
    const begin = x.shape.map(() => 0)
    return sizes.map((s) => {
      const out = slice(args.backend, x, begin, x.shape.map((d, i) => (i === axis ? s : d)))
      begin[axis]! += s
      return out
    })
  })
}
