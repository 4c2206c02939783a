/**
 * The operations whose gradients align writes itself, each with the reason tfjs 4.22 needs it, so the model runs
 * the same on every backend (cpu, wasm, tensorflow):
 * - `linear`: x @ W with a gradient of plain matMuls (dx = dy Wᵀ, dW = xᵀ dy); the only matMul XNNPACK runs fast
 *   on wasm is the plain one, and tf.matMul's own gradient uses transposed products.
 * - `gatherRows`: table[ids] whose gradient is a scatterND (tf.gather's gradient needs UnsortedSegmentSum, which
 *   the wasm backend lacks). The embedding is this.
 * - `targetLogProbs`: log p(target) per row with the softmax saved for the backward pass (GatherNd has no gradient).
 * - `chunkedHeadLogProbs`: the LM head + target log-probs over chunks of tokens, recomputed chunk by chunk in the
 *   backward pass, so [tokens, vocab] logits are never whole in memory (the wasm heap stops at 4 GiB).
 */
import * as tf from '@tensorflow/tfjs'
import { AlignError } from '../errors.ts'
import { backendLimits } from './backend.ts'

type GradFn = (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[]

/** tf.customGrad with the inputs as an array (its own typing cannot express "tensors, then save"). */
function customGrad<T extends tf.Tensor[]>(f: (inputs: T, save: tf.GradSaveFunc) => { value: tf.Tensor; gradFunc: GradFn }): (...inputs: T) => tf.Tensor {
  return tf.customGrad(((...args: unknown[]) => {
    const save = args.pop() as tf.GradSaveFunc
    return f(args as T, save)
  }) as never) as never
}

/** x @ w with a gradient of plain matMuls (dx = dy @ wᵀ, dw = xᵀ @ dy) that stay on the fast kernel. */
export const linear: (x: tf.Tensor2D, w: tf.Tensor2D) => tf.Tensor2D = customGrad(([x, w]: [tf.Tensor2D, tf.Tensor2D], save) => {
  // save() clones what it keeps; weights are variables (never disposed by a tidy), so only x is saved
  save(w instanceof tf.Variable ? [x] : [x, w])
  return {
    value: tf.matMul(x, w),
    gradFunc: (dy, saved) => {
      const xs = saved[0] as tf.Tensor2D
      const ws = (saved[1] ?? w) as tf.Tensor2D
      return [tf.matMul(dy as tf.Tensor2D, tf.transpose(ws)), tf.matMul(tf.transpose(xs), dy as tf.Tensor2D)]
    },
  }
}) as never

/** table[ids] with a scatterND gradient (duplicate ids summed). */
export function gatherRows(table: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
  const f = customGrad(([t]: [tf.Tensor2D], save) => {
    save([ids]) // closure tensors must be saved, or the forward's tidy disposes them before the backward
    return {
      value: tf.gather(t, ids),
      gradFunc: (dy, [savedIds]) => tf.scatterND(tf.expandDims(savedIds!, 1), dy, t.shape),
    }
  })
  return f(table) as tf.Tensor2D
}

/** Row-major positions i·V + t_i of the targets in a flattened [N, V] tensor. int32 [N] */
function flatPositions(targets: tf.Tensor1D, V: number): tf.Tensor1D {
  const { maxIndex } = backendLimits()
  if (targets.shape[0] * V - 1 > maxIndex) throw new AlignError(`a [${targets.shape[0]}, ${V}] block of logits has positions past ${maxIndex}, which this backend cannot index exactly; the LM head must run in smaller chunks (logprobs.ts headChunkTokens)`)
  return tf.add(tf.mul(tf.range(0, targets.shape[0], 1, 'int32'), tf.scalar(V, 'int32')), targets)
}

/** d(log p(target)) / d(logits) scaled by dy, from the softmax probs [N, V]: dy · (onehot(t) − probs). */
function logProbGrad(probs: tf.Tensor2D, targets: tf.Tensor1D, dy: tf.Tensor1D): tf.Tensor2D {
  const [N, V] = probs.shape
  const hot = tf.reshape(tf.scatterND(tf.expandDims(flatPositions(targets, V), 1), dy, [N * V]), [N, V]) // dy at each target
  return tf.sub(hot, tf.mul(probs, tf.expandDims(dy, 1))) as tf.Tensor2D
}

/**
 * log p(target) per row, from logits [N, V] and int32 targets [N]: logits[i, t_i] − logsumexp(logits[i]).
 * logsumexp is taken as max − log(max softmax): the largest probability is ≥ 1/V, so its log cannot underflow,
 * and the softmax kernel is vectorised where exp is not (wasm, [1054, 32000]: 70 ms against 280 ms). The probs
 * are what the backward pass needs, dy · (onehot(t) − softmax), so they are saved instead of the logits.
 */
export function targetLogProbs(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Tensor1D {
  const [N, V] = logits.shape
  const f = customGrad(([l]: [tf.Tensor2D], save) => {
    const probs = tf.softmax(l) // [N, V]
    save([probs, targets])
    const picked = tf.gather(tf.reshape(l, [N * V]), flatPositions(targets, V)) // [N]
    const lse = tf.sub(tf.max(l, 1), tf.log(tf.max(probs, 1))) // [N]
    return {
      value: tf.sub(picked, lse),
      gradFunc: (dy, [savedProbs, savedTargets]) => logProbGrad(savedProbs as tf.Tensor2D, savedTargets as tf.Tensor1D, dy as tf.Tensor1D),
    }
  })
  return f(logits) as tf.Tensor1D
}

/**
 * log p(target) [N] of hidden states h [N, D] through the head w [D, V], `chunk` tokens at a time: the forward
 * keeps only the [N] results, and the backward recomputes each chunk's softmax (dh = g Wᵀ, dW += hᵀ g with
 * g = dy·(onehot − softmax)), so memory is bounded by one [chunk, V] block.
 */
export function chunkedHeadLogProbs(h: tf.Tensor2D, w: tf.Tensor2D, targets: tf.Tensor1D, chunk: number): tf.Tensor1D {
  const [N] = h.shape
  const starts = Array.from({ length: Math.ceil(N / chunk) }, (_, i) => i * chunk)
  const pieces = (t: tf.Tensor, s: number) => tf.slice(t, [s], [Math.min(chunk, N - s)])
  const f = customGrad(([hs, ws]: [tf.Tensor2D, tf.Tensor2D], save) => {
    save([hs, targets])
    const value = tf.concat(starts.map((s) => tf.tidy(() => {
      const hc = tf.slice(hs, [s, 0], [Math.min(chunk, N - s), -1]) as tf.Tensor2D // [C, D]
      return targetLogProbs(tf.matMul(hc, ws), pieces(targets, s) as tf.Tensor1D) // [C]; the [C, V] logits freed here
    })))
    return {
      value,
      gradFunc: (dy, [hSaved, tSaved]) => {
        const wT = tf.transpose(ws) // [V, D], once
        const dh: tf.Tensor[] = []
        let dw: tf.Tensor = tf.zerosLike(ws)
        for (const s of starts) {
          const [dhc, next] = tf.tidy(() => {
            const n = Math.min(chunk, N - s)
            const hc = tf.slice(hSaved!, [s, 0], [n, -1]) as tf.Tensor2D // [C, D]
            const g = logProbGrad(tf.softmax(tf.matMul(hc, ws)) as tf.Tensor2D, pieces(tSaved!, s) as tf.Tensor1D, pieces(dy, s) as tf.Tensor1D) // [C, V]
            return [tf.matMul(g, wT), tf.add(dw, tf.matMul(tf.transpose(hc), g))] // [C, D], [D, V]
          })
          dh.push(dhc!)
          dw.dispose()
          dw = next!
        }
        return [tf.concat(dh), dw]
      },
    }
  })
  return f(h, w) as tf.Tensor1D
}
