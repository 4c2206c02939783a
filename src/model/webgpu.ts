/**
 * The webgpu backend: tfjs-backend-webgpu over Dawn (`webgpu`, whose prebuilt dawn.node ships in the npm package),
 * on any Vulkan driver. What it needs that the other backends do not, all here:
 *   - `navigator.gpu` and the GPU* globals before the backend module is imported (it registers itself only if it
 *     sees them), and reads that are async only (`dataSync` needs OffscreenCanvas; src/ reads with `await t.data()`);
 *   - errors instead of zeros: Dawn rejects an invalid kernel with a console message and tfjs then reads zeros.
 *     A buffer over the adapter's binding limit is refused when it is made, a device error fails the next read,
 *     and AddN (which tfjs 4.22 sends to one shader whatever the input count, past the adapter's storage-buffer
 *     limit) runs in groups that fit, summed left to right as one AddN would;
 *   - the adapter's description for `align info`, probed in a child process by `auto` (Dawn prints driver
 *     warnings on the native stderr, and a machine without a GPU should not show them or keep Dawn alive).
 */
import { spawnSync } from 'node:child_process'
import * as tf from '@tensorflow/tfjs'
import { AlignError } from '../errors.ts'
import { explainImportError, mib } from './backend.ts'

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
export function probeAdapter(): { adapter?: Adapter; why?: string } {
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

let webgpuStarted: Adapter | undefined

/** Start tfjs's webgpu backend on Dawn (once per process; later calls switch back to it). */
const NOT_STARTED = 'the webgpu backend failed to initialise'

export async function startWebgpu(): Promise<{ adapter?: Adapter; why?: string }> {
  if (webgpuStarted) return { adapter: webgpuStarted, why: (await tf.setBackend('webgpu')) ? undefined : NOT_STARTED }
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
  if (!(await tf.setBackend('webgpu'))) return { why: NOT_STARTED, adapter }
  const backend = tf.backend() as unknown as WebgpuBackend
  guardBindings(backend, adapter.maxStorageBufferBindingSize)
  failReadsOnDeviceErrors(backend)
  chunkAddN(backend.device.limits.maxStorageBuffersPerShaderStage - 1)
  webgpuStarted = adapter
  return { adapter }
}

/**
 * Dawn rejects a bind group over maxStorageBufferBindingSize with a console message, and the kernel then reads
 * and writes nothing: tfjs returns zeros. The code above sizes its tensors from `Limits`; this is the backstop
 * that turns any tensor it missed into an error at the moment its buffer is made.
 */
function guardBindings(backend: WebgpuBackend, maxBytes: number): void {
  const STORAGE = (globalThis as unknown as { GPUBufferUsage: { STORAGE: number } }).GPUBufferUsage.STORAGE
  const manager = backend.bufferManager
  const acquire = manager.acquireBuffer.bind(manager)
  manager.acquireBuffer = (size, usage, ...rest) => {
    if (usage & STORAGE && size > maxBytes) {
      throw new AlignError(`webgpu: a ${mib(size)} tensor is over this adapter's ${mib(maxBytes)} binding limit (maxStorageBufferBindingSize), where it would silently read as zeros; lower per_device_*_batch_size or max_length, or use --backend wasm`)
    }
    return acquire(size, usage, ...rest)
  }
}

/** The parts of tfjs's WebGPUBackend this file touches. */
interface WebgpuBackend {
  bufferManager: { acquireBuffer(size: number, usage: number, ...rest: unknown[]): unknown }
  device: { limits: { maxStorageBuffersPerShaderStage: number }; onuncapturederror: ((ev: { error: { message: string } }) => void) | null }
  read(dataId: object): Promise<unknown>
}

/** A kernel the device rejected (its output reads as zeros) fails the next read, naming the device's reason. */
function failReadsOnDeviceErrors(backend: WebgpuBackend): void {
  let error: string | undefined
  backend.device.onuncapturederror = (ev) => void (error ??= ev.error.message.split('\n')[0])
  const read = backend.read.bind(backend)
  backend.read = async (dataId) => {
    const values = await read(dataId)
    if (error === undefined) return values
    const why = error
    error = undefined
    throw new AlignError(`webgpu: the device rejected a kernel (${why}); its results would read as zeros, so the run stops`)
  }
}

/** AddN in groups of at most `max` inputs (+ the running sum), each an AddN of the stock kernel. */
function chunkAddN(max: number): void {
  const stock = tf.getKernel('AddN', 'webgpu')!.kernelFunc
  tf.unregisterKernel('AddN', 'webgpu')
  tf.registerKernel({
    kernelName: 'AddN',
    backendName: 'webgpu',
    kernelFunc: (args) => {
      const xs = args.inputs as unknown as tf.TensorInfo[]
      if (xs.length <= max) return stock(args)
      const backend = args.backend as unknown as { disposeData(id: object): void }
      let acc = stock({ ...args, inputs: xs.slice(0, max) as never }) as tf.TensorInfo
      for (let i = max; i < xs.length; i += max - 1) {
        const next = stock({ ...args, inputs: [acc, ...xs.slice(i, i + max - 1)] as never }) as tf.TensorInfo
        backend.disposeData(acc.dataId)
        acc = next
      }
      return acc
    },
  })
}
