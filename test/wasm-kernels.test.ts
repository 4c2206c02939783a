// The wasm kernels registered over tfjs's stock ones (src/model/wasm-kernels.ts) against plain-JS references:
// batched / transposed / broadcast matMuls, their gradients, clones that share storage, and strided slices and splits.
import { test } from 'uvu'
import * as assert from 'uvu/assert'
import * as tf from '@tensorflow/tfjs'
import { describeBackend, initBackend } from '../src/model/backend.ts'
import { installedKernels } from '../src/model/wasm-kernels.ts'
import { Rng } from '../src/rng.ts'
import { maxAbsDiff } from './tfjs-helpers.ts'

test.before(async () => {
  await initBackend('wasm')
})

test('the wasm backend dispatches to these kernels, and align info says so', async () => {
  for (const name of ['BatchMatMul', 'Identity', 'Slice', 'SplitV', 'Transpose']) {
    assert.ok(installedKernels.has(name), name)
    assert.is(tf.getKernel(name, 'wasm')?.kernelFunc, installedKernels.get(name), name)
  }
  assert.match(describeBackend(await initBackend('wasm')), /kernels replaced by align's .*: BatchMatMul, Identity, Transpose, Slice, SplitV/) // `align info`
})

const rng = Rng.fromKey('wasm-kernels')
const rand = (n: number) => Float32Array.from({ length: n }, () => 2 * rng.random() - 1)

/** Reference batched product with broadcasting of a batch of 1: out[b] = op(a[b]) @ op(b[b]). */
function refMatMul(a: Float32Array, aShape: number[], b: Float32Array, bShape: number[], ta: boolean, tb: boolean): Float32Array {
  const [ba, r0, c0] = aShape as [number, number, number]
  const [bb, r1, c1] = bShape as [number, number, number]
  const [m, k] = ta ? [c0, r0] : [r0, c0]
  const n = tb ? r1 : c1
  const batch = Math.max(ba, bb)
  const out = new Float32Array(batch * m * n)
  for (let s = 0; s < batch; s++) {
    const ao = (ba === 1 ? 0 : s) * r0 * c0
    const bo = (bb === 1 ? 0 : s) * r1 * c1
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let acc = 0
        for (let p = 0; p < k; p++) acc += a[ao + (ta ? p * c0 + i : i * c0 + p)]! * b[bo + (tb ? j * c1 + p : p * c1 + j)]!
        out[s * m * n + i * n + j] = acc
      }
    }
  }
  return out
}

test('batched, transposed and broadcast matMuls equal the plain product', () => {
  const cases: [number[], number[], boolean, boolean][] = [
    [[3, 5, 7], [3, 7, 4], false, false],
    [[3, 5, 7], [3, 4, 7], false, true], // attention scores: q @ kᵀ
    [[3, 7, 5], [3, 7, 4], true, false], // dV = pᵀ @ dO
    [[3, 7, 5], [3, 4, 7], true, true],
    [[3, 5, 7], [1, 7, 4], false, false], // a shared right operand folds into one product
    [[1, 5, 7], [3, 7, 4], false, false],
    [[1, 6, 9], [1, 5, 9], false, true], // unbatched with transposeB (the tied LM head)
    [[1, 9, 6], [1, 9, 5], true, false], // unbatched with transposeA (a weight gradient)
    // transposeA where aᵀ·b runs as (bᵀ·a)ᵀ, a's transpose the biggest of the copies (attention's dV and dK)
    [[3, 12, 5], [3, 12, 2], true, false],
    [[3, 12, 5], [3, 2, 12], true, true],
    [[1, 12, 5], [3, 12, 2], true, false],
    [[3, 12, 5], [1, 12, 2], true, false],
  ]
  for (const [as, bs, ta, tb] of cases) {
    const a = rand(as.reduce((x, y) => x * y))
    const b = rand(bs.reduce((x, y) => x * y))
    const got = tf.tidy(() => tf.matMul(tf.tensor3d(a, as as [number, number, number]), tf.tensor3d(b, bs as [number, number, number]), ta, tb).dataSync())
    const want = refMatMul(a, as, b, bs, ta, tb)
    assert.ok(maxAbsDiff(got, want) < 1e-5, `${as} x ${bs} (${ta}, ${tb}): ${maxAbsDiff(got, want)}`)
    if (!ta) continue
    // a transposed a: the same bits as transposing it first, whichever way the kernel runs it (sums over k in order)
    const explicit = tf.tidy(() => {
      const [x, y] = [tf.tensor3d(a, as as [number, number, number]), tf.tensor3d(b, bs as [number, number, number])]
      return tf.matMul(tf.transpose(x, [0, 2, 1]), tb ? tf.transpose(y, [0, 2, 1]) : y).dataSync()
    })
    assert.equal([...got], [...explicit], `${as} x ${bs} (${ta}, ${tb}): bits`)
  }
})

test('the batched matMul gradient matches the product rule', () => {
  const a = tf.tensor3d(rand(2 * 4 * 3), [2, 4, 3])
  const b = tf.tensor3d(rand(2 * 5 * 3), [2, 5, 3])
  const dy = rand(2 * 4 * 5)
  const [da, db] = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.matMul(x as tf.Tensor3D, y as tf.Tensor3D, false, true))([a, b], tf.tensor3d(dy, [2, 4, 5]))
  // d/da (a bᵀ) = dy b ; d/db = dyᵀ a
  assert.ok(maxAbsDiff(da!.dataSync(), refMatMul(dy, [2, 4, 5], b.dataSync() as Float32Array, [2, 5, 3], false, false)) < 1e-5)
  assert.ok(maxAbsDiff(db!.dataSync(), refMatMul(dy, [2, 4, 5], a.dataSync() as Float32Array, [2, 4, 3], true, false)) < 1e-5)
  tf.dispose([a, b, da!, db!])
})

test('a clone shares storage and outlives its source; a variable assigned after a clone leaves the clone as it was', () => {
  const buffers = () => tf.engine().backend.numDataIds()
  const before = buffers()
  const x = tf.tensor1d([1, 2, 3])
  const y = tf.clone(x)
  assert.is(buffers() - before, 1) // two tensors, one buffer
  x.dispose()
  assert.equal([...y.dataSync()], [1, 2, 3])
  const init = tf.tensor1d([4, 5, 6])
  const v = tf.variable(init)
  const saved = tf.clone(v)
  const next = tf.tensor1d([7, 8, 9])
  v.assign(next)
  assert.equal([...saved.dataSync()], [4, 5, 6])
  assert.equal([...v.dataSync()], [7, 8, 9])
  tf.dispose([y, init, v, saved, next])
  assert.is(buffers(), before)
})

test('strided slices and splits read the right elements', () => {
  const x = tf.tensor4d(Float32Array.from({ length: 144 }, (_, i) => i), [2, 3, 4, 6])
  const at = (i: number, j: number, k: number, l: number) => ((i * 3 + j) * 4 + k) * 6 + l
  const [lo, hi] = tf.split(x, 2, 3) as [tf.Tensor, tf.Tensor] // split of the last axis
  assert.equal(lo.shape, [2, 3, 4, 3])
  const [loData, hiData] = [lo.dataSync(), hi.dataSync()]
  for (const [i, j, k, l] of [[0, 0, 0, 0], [1, 2, 3, 2], [0, 1, 2, 1]] as const) {
    assert.is(loData[((i * 3 + j) * 4 + k) * 3 + l], at(i, j, k, l))
    assert.is(hiData[((i * 3 + j) * 4 + k) * 3 + l], at(i, j, k, l + 3))
  }
  const s = tf.slice(x, [1, 1, 2, 1], [1, 2, 2, 4]) // strided in every axis
  const want: number[] = []
  for (let j = 1; j < 3; j++) for (let k = 2; k < 4; k++) for (let l = 1; l < 5; l++) want.push(at(1, j, k, l))
  assert.equal([...s.dataSync()], want)
  const c = tf.slice(x, [1, 0, 0, 0], [1, 3, 4, 6]) // contiguous
  assert.equal([...c.dataSync()].slice(0, 3), [72, 73, 74])
  const parts = tf.split(tf.tensor1d([1, 2, 3, 4, 5]), [2, 3])
  assert.equal([...parts[1]!.dataSync()], [3, 4, 5])
  tf.dispose([x, lo, hi, s, c, ...parts])
})

test('transposes of the last two axes move every element (tiles with ragged edges), others go to the stock kernel', () => {
  for (const shape of [[37, 70], [3, 33, 65], [2, 2, 5, 1]]) {
    const n = shape.reduce((a, b) => a * b, 1)
    const x = tf.tensor(Float32Array.from({ length: n }, (_, i) => i), shape)
    const perm = shape.map((_, i) => i)
    perm.splice(-2, 2, perm.length - 1, perm.length - 2)
    const y = tf.transpose(x, perm)
    const [R, C] = shape.slice(-2) as [number, number]
    assert.equal(y.shape, [...shape.slice(0, -2), C, R])
    const got = y.dataSync()
    const want = Float32Array.from({ length: n }, (_, o) => {
      const [b, c, r] = [Math.floor(o / (R * C)), Math.floor((o % (R * C)) / R), o % R]
      return b * R * C + r * C + c
    })
    assert.equal([...got], [...want], `${shape}`)
    tf.dispose([x, y])
  }
  const z = tf.tensor3d(Float32Array.from({ length: 24 }, (_, i) => i), [2, 3, 4])
  assert.equal([...tf.transpose(z, [1, 0, 2]).dataSync()].slice(0, 6), [0, 1, 2, 3, 12, 13]) // another permutation
  assert.equal([...tf.transpose(tf.tensor2d([1, 2, 3, 4], [2, 2], 'int32')).dataSync()], [1, 3, 2, 4]) // int32
})

test.run()
