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
import { spawnSync } from 'node:child_process'
import * as tf from '@tensorflow/tfjs'
import { AlignError } from '../errors.ts'
import { installedKernels, installWasmKernels } from './wasm-kernels.ts'

export const BACKENDS = ['tfjs-node-gpu', 'tfjs-node', 'webgpu', 'wasm', 'cpu'] as const
export type BackendName = (typeof BACKENDS)[number]

/** What one kernel may touch on the active backend. */
export interface Limits {
  /** bytes of the largest tensor a kernel may bind (webgpu: the adapter's maxStorageBufferBindingSize) */
  maxTensorBytes: number
  /** the largest value an int32 index tensor may hold and be read exactly (webgpu: 2^24, read through f32) */
  maxIndex: number
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 2 : 0)} MiB`

const UNLIMITED: Limits = { maxTensorBytes: Number.POSITIVE_INFINITY, maxIndex: 2 ** 31 - 1 }

/** A WebGPU adapter as `align info` shows it. */
export interface Adapter {
  vendor: string
  architecture: string
  device: string
  description: string
  /** a CPU implementation (llvmpipe / lavapipe, SwiftShader): correct, slower than wasm */
  software: boolean
  maxStorageBufferBindingSize: number
  maxBufferSize: number
}

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

function explainImportError(pkg: string, e: unknown): string {
  const err = e as { code?: string; message?: string }
  if (err.code === 'ERR_MODULE_NOT_FOUND' || /Cannot find (package|module)/.test(err.message ?? '')) {
    return `not installed (optional dependency ${pkg}: its install script could not download libtensorflow, or it was omitted)`
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

/** What Dawn says of an adapter; the probe child runs this same function (its source is sent along). */
function adapterFields(a: GpuAdapterLike | null): RawAdapter | null {
  if (!a) return null
  return {
    vendor: a.info.vendor, architecture: a.info.architecture, device: a.info.device, description: a.info.description,
    fallback: a.info.isFallbackAdapter ?? a.isFallbackAdapter ?? false,
    maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize, maxBufferSize: a.limits.maxBufferSize,
  }
}
interface GpuAdapterLike {
  info: { vendor: string; architecture: string; device: string; description: string; isFallbackAdapter?: boolean }
  isFallbackAdapter?: boolean
  limits: { maxStorageBufferBindingSize: number; maxBufferSize: number }
}
type RawAdapter = Omit<Adapter, 'software'> & { fallback: boolean }

function toAdapter(raw: RawAdapter): Adapter {
  const { fallback, ...rest } = raw
  const software = fallback || raw.architecture === 'software' || /llvmpipe|lavapipe|swiftshader/i.test(`${raw.device} ${raw.description}`)
  return { ...rest, software }
}

const NO_ADAPTER = 'Dawn found no WebGPU adapter (no Vulkan driver it can use; on Debian 12 a software one is mesa-vulkan-drivers from bookworm-backports, README "Backends")'

/**
 * `auto` asks for the adapter in a child process: Dawn prints its driver warnings on the native stderr, and on a
 * machine without a GPU `auto` should neither show them nor keep a Dawn instance alive. ~0.25 s.
 */
function probeAdapter(): { adapter?: Adapter; why?: string } {
  let url: string
  try {
    url = import.meta.resolve('webgpu')
  } catch (e) {
    return { why: explainImportError('webgpu', e) }
  }
  const script = `const { create } = await import(${JSON.stringify(url)}); const a = await create([]).requestAdapter({ powerPreference: 'high-performance' }); process.stdout.write(JSON.stringify((${adapterFields.toString()})(a))); process.exit(0)`
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 })
  if (r.status !== 0) return { why: `the adapter probe failed: ${r.error?.message ?? r.stderr.split('\n').find((l) => /Error\b/.test(l)) ?? `exit ${r.status}`}` }
  const raw = JSON.parse(r.stdout) as RawAdapter | null
  return raw ? { adapter: toAdapter(raw) } : { why: NO_ADAPTER }
}

/**
 * Start tfjs's webgpu backend on Dawn. `navigator.gpu` (and the GPU* globals) must exist before the backend
 * module is imported: it registers itself only if it sees them. Reads are async only on this backend
 * (`dataSync` needs OffscreenCanvas), which is why the code above reads tensors with `await t.data()`.
 */
let webgpuStarted: Adapter | undefined

async function startWebgpu(): Promise<{ adapter?: Adapter; why?: string }> {
  if (webgpuStarted) return (await tf.setBackend('webgpu')) ? { adapter: webgpuStarted } : { why: 'the webgpu backend failed to initialise', adapter: webgpuStarted }
  let webgpu: { create(flags: string[]): { requestAdapter(o?: object): Promise<unknown> }; globals: object }
  try {
    webgpu = (await import('webgpu')) as never
  } catch (e) {
    return { why: explainImportError('webgpu', e) }
  }
  Object.assign(globalThis, webgpu.globals)
  const gpu = webgpu.create([])
  Object.defineProperty(globalThis, 'navigator', { value: { ...(globalThis as { navigator?: object }).navigator, gpu }, configurable: true, writable: true })
  const raw = adapterFields((await gpu.requestAdapter({ powerPreference: 'high-performance' })) as GpuAdapterLike | null)
  if (!raw) return { why: NO_ADAPTER }
  const adapter = toAdapter(raw)
  try {
    await import('@tensorflow/tfjs-backend-webgpu')
  } catch (e) {
    return { why: explainImportError('@tensorflow/tfjs-backend-webgpu', e), adapter }
  }
  if (!(await tf.setBackend('webgpu'))) return { why: 'the webgpu backend failed to initialise', adapter }
  guardBindings(adapter.maxStorageBufferBindingSize)
  webgpuStarted = adapter
  return { adapter }
}

/**
 * Dawn rejects a bind group over maxStorageBufferBindingSize with a console message, and the kernel then reads
 * and writes nothing: tfjs returns zeros. The code above sizes its tensors from `Limits`; this is the backstop
 * that turns any tensor it missed into an error at the moment its buffer is made.
 */
function guardBindings(maxBytes: number): void {
  const STORAGE = (globalThis as unknown as { GPUBufferUsage: { STORAGE: number } }).GPUBufferUsage.STORAGE
  const manager = (tf.backend() as unknown as { bufferManager: { acquireBuffer(size: number, usage: number, ...rest: unknown[]): unknown } }).bufferManager
  const acquire = manager.acquireBuffer.bind(manager)
  manager.acquireBuffer = (size, usage, ...rest) => {
    if (usage & STORAGE && size > maxBytes) {
      throw new AlignError(`webgpu: a ${mib(size)} tensor is over this adapter's ${mib(maxBytes)} binding limit (maxStorageBufferBindingSize), where it would silently read as zeros; lower per_device_*_batch_size or max_length, or use --backend wasm`)
    }
    return acquire(size, usage, ...rest)
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
  if (b.active === 'webgpu') lines.push(`  limits: one tensor <= ${mib(b.limits.maxTensorBytes)}, index values <= 2^24 (read through f32)`)
  for (const s of b.skipped) lines.push(`  skipped ${s.name}: ${s.why}`)
  return lines.join('\n')
}
