// Test helper: one tfjs backend for a test file. ALIGN_TEST_BACKEND picks it (default cpu, the reference).
import * as tf from '@tensorflow/tfjs'
import { initBackend } from '../src/model/backend.ts'

export async function useBackend(name = process.env.ALIGN_TEST_BACKEND ?? 'cpu'): Promise<typeof tf> {
  await initBackend(name)
  return tf
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`)
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!))
  return m
}
