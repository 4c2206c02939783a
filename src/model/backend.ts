/**
 * Backend selection. The model and training code are the same on every backend; only this file knows which
 * one runs. Order of preference:
 *   1. tensorflow (GPU)  — @tensorflow/tfjs-node-gpu: libtensorflow with CUDA 11.2 / cuDNN 8
 *   2. tensorflow (CPU)  — @tensorflow/tfjs-node: libtensorflow on the CPU
 *   3. webgpu            — @tensorflow/tfjs-backend-webgpu over `webgpu` (Dawn; its prebuilt dawn.node ships in
 *                          the npm package): any Vulkan driver. `auto` takes it for a hardware adapter only.
 *   4. wasm              — @tensorflow/tfjs-backend-wasm (XNNPACK, SIMD): the fastest backend that installs
 *                          from npm alone (~30 GFLOP/s plain matMul here vs ~0.7 for `cpu`; README "Backends")
 *   5. cpu               — pure JS, the reference backend for tests
 * The native and GPU packages are optional dependencies loaded with a dynamic import: where their install script
 * could not download libtensorflow they are absent (or present without a binary), and we say so.
 *
 * What differs between backends and matters to the code above this file is said here as data, `Limits`: how big
 * one tensor may be (webgpu binds a buffer whole, and the adapter caps a binding) and how large an integer an
 * index tensor may hold exactly (webgpu's kernels read int32 indices through f32). Everything else is the same.
 */
import * as tf from '@tensorflow/tfjs'
import { AlignError } from '../errors.ts'
import { heapView, installedKernels, installWasmKernels } from './wasm-kernels.ts'
import { probeAdapter, startWebgpu, type Adapter } from './webgpu.ts'

export const BACKENDS = ['tfjs-node-gpu', 'tfjs-node', 'webgpu', 'wasm', 'cpu'] as const
export type BackendName = (typeof BACKENDS)[number]

/** What one kernel may touch on the active backend. */
export interface Limits {
  /** bytes of the largest tensor a kernel may bind (webgpu: the adapter's maxStorageBufferBindingSize) */
  maxTensorBytes: number
  /** the largest value an int32 index tensor may hold and be read exactly (webgpu: 2^24, read through f32) */
  maxIndex: number
}

export const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 2 : 0)} MiB`

const UNLIMITED: Limits = { maxTensorBytes: Number.POSITIVE_INFINITY, maxIndex: 2 ** 31 - 1 }

export interface BackendInfo {
  /** what was asked for: a name, or 'auto' */
  requested: string
  active: BackendName
  /** tf.getBackend(): 'tensorflow', 'wasm' or 'cpu' */
  tfBackend: string
  why: string
  skipped: { name: BackendName; why: string }[]
  simd?: boolean
  threads?: number
  /** webgpu: the adapter found (also when auto skipped a software one) */
  adapter?: Adapter
  limits: Limits
  /** why `--workers auto` means one process here (a device backend), when it does */
  oneWorker?: string
}

let current: BackendInfo | undefined

/** The active backend's limits (unlimited before one starts: cpu, wasm and tensorflow have none that matter). */
export function backendLimits(): Limits {
  return current?.limits ?? UNLIMITED
}

/** Refuse a tensor of `bytes` that the active backend cannot hold in one binding: "<what> is N MiB, over …; <fix>". */
export function checkTensorBytes(what: string, bytes: number, fix: string): void {
  const max = backendLimits().maxTensorBytes
  if (bytes > max) throw new AlignError(`${what} is ${mib(bytes)} in fp32, over the largest tensor this backend binds (${mib(max)}, align info); ${fix}`)
}

/**
 * Copy a float32 tensor's values into `out`, a buffer the caller keeps and reuses. wasm copies straight from its
 * heap; other backends read, then copy. What this saves: a read returns a fresh array, and on the VMs we measure
 * on, first touching fresh memory costs ~3 ms per MiB (page faults) — up to ~0.55 s a step for the 76 MB of gradients
 * two workers exchange, against ~10 ms to copy into memory already touched (README "Workers").
 */
export async function readInto(t: tf.Tensor, out: Float32Array): Promise<void> {
  if (!readIntoSync(t, out)) out.set((await t.data()) as Float32Array)
}

/**
 * readInto from code that cannot wait (a gradient function, inside the backward pass): false, with nothing copied,
 * where the backend reads only asynchronously — webgpu, whose readSync draws through an OffscreenCanvas that Node
 * does not have. The rest read synchronously (wasm from its heap, cpu and tensorflow through dataSync).
 */
export function readIntoSync(t: tf.Tensor, out: Float32Array): boolean {
  if (t.dtype !== 'float32' || out.length !== t.size) throw new Error(`readInto: a float32 tensor of ${t.size} values into ${out.length}`)
  if (current?.active === 'webgpu') return false
  out.set(current?.active === 'wasm' ? heapView(t) : (t.dataSync() as Float32Array))
  return true
}

/**
 * A float32 tensor holding a copy of `data` (a view of memory the caller reuses, e.g. a shared slot). wasm copies
 * into its heap when the tensor is made; the cpu backend would keep the view itself, so it gets a copy.
 */
export function tensorCopy(data: Float32Array, shape: number[]): tf.Tensor {
  return tf.tensor(current?.active === 'wasm' ? data : data.slice(), shape, 'float32')
}

/**
 * A variable made from `t`, which it takes over: tf.variable shares t's data but leaves t's own reference, so
 * without disposing t the memory would outlive the variable (every variable of a run, in a process that runs many).
 */
export function variableOf(t: tf.Tensor, trainable: boolean): tf.Variable {
  const v = tf.variable(t, trainable)
  t.dispose()
  return v
}

export function explainImportError(pkg: string, e: unknown): string {
  const err = e as { code?: string; message?: string }
  if (err.code === 'ERR_MODULE_NOT_FOUND' || /Cannot find (package|module)/.test(err.message ?? '')) {
    const why = pkg.includes('tfjs-node') ? 'its install script could not download libtensorflow, or it was omitted' : 'omitted, e.g. by npm ci --omit=optional'
    return `not installed (optional dependency ${pkg}: ${why})`
  }
  if (/tfjs_binding\.node|native addon/i.test(err.message ?? '')) return `installed without its native binary (libtensorflow download failed; see README "Backends")`
  return `failed to load: ${(err.message ?? String(e)).split('\n')[0]}`
}

async function tryNative(pkg: string): Promise<string | undefined> {
  try {
    await import(pkg)
    if (!tf.findBackend('tensorflow')) return 'loaded but registered no tensorflow backend'
    if (!(await tf.setBackend('tensorflow'))) return 'the tensorflow backend failed to initialise'
    return undefined
  } catch (e) {
    return explainImportError(pkg, e)
  }
}

/** Start one backend: undefined `why` when it runs. `auto` probes webgpu first and never takes a software adapter. */
async function start(name: BackendName, auto: boolean): Promise<{ why?: string; adapter?: Adapter }> {
  if (name === 'tfjs-node-gpu') return { why: await tryNative('@tensorflow/tfjs-node-gpu') }
  if (name === 'tfjs-node') return { why: await tryNative('@tensorflow/tfjs-node') }
  if (name === 'webgpu') {
    if (!auto) return startWebgpu()
    const probe = probeAdapter()
    if (probe.why) return probe
    if (probe.adapter!.software) return { ...probe, why: `only a software adapter (${probe.adapter!.description}), slower than wasm: auto skips it, --backend webgpu uses it` }
    return startWebgpu()
  }
  if (name === 'wasm') {
    try {
      await import('@tensorflow/tfjs-backend-wasm')
      return { why: (await tf.setBackend('wasm')) ? undefined : 'failed to initialise' }
    } catch (e) {
      return { why: explainImportError('@tensorflow/tfjs-backend-wasm', e) }
    }
  }
  return { why: (await tf.setBackend('cpu')) ? undefined : 'failed to initialise' }
}

/**
 * Activate a backend: `auto` (default, or $ALIGN_BACKEND) walks the preference order; a name forces it and
 * fails loudly if it cannot run.
 */
export async function initBackend(requested: string = process.env.ALIGN_BACKEND ?? 'auto'): Promise<BackendInfo> {
  if (current && (requested === 'auto' || requested === current.active)) return current
  if (requested !== 'auto' && !(BACKENDS as readonly string[]).includes(requested)) {
    throw new AlignError(`--backend ${requested}: unknown; choose one of auto, ${BACKENDS.join(', ')}`)
  }
  tf.enableProdMode() // no per-op NaN checks, no "install tfjs-node" banner
  const auto = requested === 'auto'
  const skipped: BackendInfo['skipped'] = []
  let adapter: Adapter | undefined
  for (const name of auto ? BACKENDS : [requested as BackendName]) {
    const r = await start(name, auto)
    adapter ??= r.adapter
    if (r.why) {
      if (!auto) throw new AlignError(`--backend ${name}: ${r.why}`)
      skipped.push({ name, why: r.why })
      continue
    }
    await tf.ready()
    const reason = auto ? (skipped.length ? `first available (${skipped.map((s) => s.name).join(', ')} unavailable)` : 'first available') : 'requested'
    current = { requested, active: name, tfBackend: tf.getBackend(), why: reason, skipped, limits: UNLIMITED, adapter }
    if (name === 'wasm') {
      installWasmKernels()
      current.simd = tf.env().getBool('WASM_HAS_SIMD_SUPPORT') as boolean
      current.threads = tf.env().getBool('WASM_HAS_MULTITHREAD_SUPPORT') ? 2 : 1
    }
    if (name === 'webgpu') current.limits = { maxTensorBytes: adapter!.maxStorageBufferBindingSize, maxIndex: 2 ** 24 }
    if (name === 'webgpu' || name === 'tfjs-node-gpu' || name === 'tfjs-node') current.oneWorker = `auto: the ${name} backend runs one process per device`
    return current
  }
  throw new AlignError(`no tfjs backend could start: ${skipped.map((s) => `${s.name}: ${s.why}`).join('; ')}`)
}

export function describeBackend(b: BackendInfo): string {
  const lines = [`backend: ${b.active} (tf backend '${b.tfBackend}', ${b.why})`]
  if (b.simd !== undefined) lines.push(`  wasm SIMD: ${b.simd ? 'on' : 'off'}, threads: ${b.threads} (tfjs disables wasm threads under Node)`)
  if (b.active === 'wasm') lines.push(`  wasm kernels replaced by align's (src/model/wasm-kernels.ts): ${[...installedKernels.keys()].join(', ')}`)
  const a = b.adapter
  if (a) lines.push(`  webgpu adapter: ${a.vendor} ${a.architecture}${a.software ? ' (software)' : ''}, ${a.description || a.device}; maxStorageBufferBindingSize ${mib(a.maxStorageBufferBindingSize)}, maxBufferSize ${mib(a.maxBufferSize)}`)
  if (b.active === 'webgpu') lines.push(`  limits: one tensor <= ${mib(b.limits.maxTensorBytes)}, index values <= ${b.limits.maxIndex} (read through f32)`)
  for (const s of b.skipped) lines.push(`  skipped ${s.name}: ${s.why}`)
  return lines.join('\n')
}
