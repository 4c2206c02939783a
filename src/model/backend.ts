/**
 * Backend selection. The model and training code are the same on every backend; only this file knows which
 * one runs. Order of preference:
 *   1. tensorflow (GPU)  — @tensorflow/tfjs-node-gpu: libtensorflow with CUDA 11.2 / cuDNN 8
 *   2. tensorflow (CPU)  — @tensorflow/tfjs-node: libtensorflow on the CPU
 *   3. wasm              — @tensorflow/tfjs-backend-wasm (XNNPACK, SIMD): the fastest backend that installs
 *                          from npm alone (~30 GFLOP/s plain matMul here vs ~0.7 for `cpu`; README "Backends")
 *   4. cpu               — pure JS, the reference backend for tests
 * The two native packages are optional dependencies loaded with a dynamic import: where their install script
 * could not download libtensorflow they are absent (or present without a binary), and we say so.
 */
import * as tf from '@tensorflow/tfjs'
import { AlignError } from '../errors.ts'
import { installedKernels, installWasmKernels } from './wasm-kernels.ts'

export const BACKENDS = ['tfjs-node-gpu', 'tfjs-node', 'wasm', 'cpu'] as const
export type BackendName = (typeof BACKENDS)[number]

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
}

let current: BackendInfo | undefined

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
  const order: BackendName[] = requested === 'auto' ? [...BACKENDS] : [requested as BackendName]
  const skipped: BackendInfo['skipped'] = []
  for (const name of order) {
    let why: string | undefined
    if (name === 'tfjs-node-gpu') why = await tryNative('@tensorflow/tfjs-node-gpu')
    else if (name === 'tfjs-node') why = await tryNative('@tensorflow/tfjs-node')
    else if (name === 'wasm') {
      try {
        await import('@tensorflow/tfjs-backend-wasm')
        if (!(await tf.setBackend('wasm'))) why = 'failed to initialise'
      } catch (e) {
        why = explainImportError('@tensorflow/tfjs-backend-wasm', e)
      }
    } else if (!(await tf.setBackend('cpu'))) why = 'failed to initialise'
    if (why) {
      if (requested !== 'auto') throw new AlignError(`--backend ${name}: ${why}`)
      skipped.push({ name, why })
      continue
    }
    await tf.ready()
    const reason = requested === 'auto' ? (skipped.length ? `first available (${skipped.map((s) => s.name).join(', ')} unavailable)` : 'first available') : 'requested'
    current = { requested, active: name, tfBackend: tf.getBackend(), why: reason, skipped }
    if (name === 'wasm') {
      installWasmKernels()
      current.simd = tf.env().getBool('WASM_HAS_SIMD_SUPPORT') as boolean
      current.threads = tf.env().getBool('WASM_HAS_MULTITHREAD_SUPPORT') ? 2 : 1
    }
    return current
  }
  throw new AlignError(`no tfjs backend could start: ${skipped.map((s) => `${s.name}: ${s.why}`).join('; ')}`)
}

export function describeBackend(b: BackendInfo): string {
  const lines = [`backend: ${b.active} (tf backend '${b.tfBackend}', ${b.why})`]
  if (b.simd !== undefined) lines.push(`  wasm SIMD: ${b.simd ? 'on' : 'off'}, threads: ${b.threads} (tfjs disables wasm threads under Node)`)
  if (b.active === 'wasm') lines.push(`  wasm kernels replaced by align's (src/model/wasm-kernels.ts): ${[...installedKernels.keys()].join(', ')}`)
  for (const s of b.skipped) lines.push(`  skipped ${s.name}: ${s.why}`)
  return lines.join('\n')
}
