/**
 * The operations whose gradients align writes itself, each with the reason tfjs 4.22 needs it, so the model runs
 * the same on every backend (cpu, wasm, tensorflow):
 * - `linear`: x @ W with a gradient of plain matMuls (dx = dy Wᵀ, dW = xᵀ dy); the only matMul XNNPACK runs fast
 *   on wasm is the plain one, and tf.matMul's own gradient uses transposed products.
 * - `gatherRows`: table[ids] whose gradient is a scatterND (tf.gather's gradient needs UnsortedSegmentSum, which
 *   the wasm backend lacks). The embedding is this.
 * - `targetLogProbs`: log p(target) per row with the softmax saved for the backward pass (GatherNd has no gradient).
 * - `blockedHeadLogProbs`: the LM head + target log-probs over blocks of the vocabulary, so every product contracts
 *   over a short dimension and each block's logits stay small (tfjs has no fused cross-entropy).
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

/** Refuse an [N, V] block of logits with flat positions this backend cannot index exactly (webgpu: f32 indices). */
function checkPositions(N: number, V: number): void {
  const { maxIndex } = backendLimits()
  if (N * V - 1 > maxIndex) throw new AlignError(`a [${N}, ${V}] block of logits has positions past ${maxIndex}, which this backend cannot index exactly; the LM head must run in smaller chunks (logprobs.ts headChunkTokens)`)
}

/** Row-major positions i·V + t_i of the targets in a flattened [N, V] tensor. int32 [N] */
function flatPositions(targets: tf.Tensor1D, V: number): tf.Tensor1D {
  checkPositions(targets.shape[0], V)
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
 * The LM head's weight gradient of one backward pass, handed to whoever asked for it (logprobs.ts
 * `deferringHeadGrad`) instead of returned to autograd: either `ready` (the chunked head computes it as it goes), or
 * the parts of dW = hᵀ·g, one product per vocabulary block — computed once the rest of the backward pass is done,
 * where a replica that finished first can take some of them (handoff.ts, from as soon as they are handed on). `headWeightGrad` computes it here.
 */
export type HeadBackward = { ready: tf.Tensor2D } | { hT: tf.Tensor2D; g: tf.Tensor2D[] }

/** A vocabulary block's weight gradient hᵀ [D, N] · g [N, vb] → [D, vb]: the product a replica computes wherever it runs. */
export const headBlockGrad = (hT: tf.Tensor2D, g: tf.Tensor2D): tf.Tensor2D => tf.matMul(hT, g)

/** The head's weight gradient [D, V] of a HeadBackward, computed here; the parts are disposed. */
export function headWeightGrad(d: HeadBackward): tf.Tensor2D {
  if ('ready' in d) return d.ready
  const dw = d.g.map((g) => headBlockGrad(d.hT, g))
  const dW = tf.concat(dw, 1) as tf.Tensor2D // [D, V]
  tf.dispose([d.hT, ...d.g, ...dw])
  return dW
}

/**
 * log p(target) [N] of hidden states h [N, D] through the head w [D, V], the vocabulary taken `block` columns at a
 * time — the blockwise cross-entropy of Liger-Kernel and of "Cut Your Losses in Large-Vocabulary Language Models"
 * (Wijmans et al., 2024), in plain tf ops. The math is targetLogProbs(h·w); the order of the float operations is
 * not. Every product contracts over at most `block` columns — dh = Σ_b g_b W_bᵀ instead of one product over the whole
 * vocabulary, which runs at ~2/3 of the matMul rate on wasm ([536, 32000]·[32000, 256]: 400 ms against 250–270 ms
 * in blocks) — and each block's logits, softmax and gradient are [N, block]. Per block the forward keeps the
 * softmax and its logsumexp lse_b (max − log max softmax, as targetLogProbs); lse over the vocabulary is the
 * logsumexp of the lse_b, and the backward turns a block's softmax into the whole one with exp(lse_b − lse) per row.
 * `targets` are plain numbers: which block holds each row's target is known before any kernel runs.
 * With `defer`, w (a variable) is no input: the backward returns dh only and hands dW's parts to `defer`.
 */
export function blockedHeadLogProbs(h: tf.Tensor2D, w: tf.Tensor2D, targets: readonly number[], block: number, defer?: (d: HeadBackward) => void): tf.Tensor1D {
  const [N, D] = h.shape
  const V = w.shape[1]
  checkPositions(N, Math.min(block, V))
  // per block: its columns [v0, v0 + vb), and the rows whose target falls in it with the target's flat position in
  // the block's [N, vb] logits
  const blocks = Array.from({ length: Math.ceil(V / block) }, (_, b) => {
    const v0 = b * block
    const vb = Math.min(block, V - v0)
    const rows: number[] = []
    const at: number[] = []
    targets.forEach((t, i) => {
      if (t >= v0 && t < v0 + vb) (rows.push(i), at.push(i * vb + t - v0))
    })
    return { v0, vb, rows, at }
  })
  const columns = (ws: tf.Tensor2D, b: (typeof blocks)[number]) => tf.slice(ws, [0, b.v0], [D, b.vb]) as tf.Tensor2D // [D, vb]
  const head = ([hs, ws]: [tf.Tensor2D, tf.Tensor2D], save: tf.GradSaveFunc) => {
    const parts = blocks.map((b) => tf.tidy(() => {
      const logits = tf.matMul(hs, columns(ws, b)) // [N, vb]
      const probs = tf.softmax(logits) // [N, vb]
      const lse = tf.sub(tf.max(logits, 1), tf.log(tf.max(probs, 1))) // [N]
      // the target's logit for the rows whose target is here, zero elsewhere
      const picked = b.rows.length ? tf.scatterND(tf.tensor2d(b.rows, [b.rows.length, 1], 'int32'), tf.gather(tf.reshape(logits, [N * b.vb]), tf.tensor1d(b.at, 'int32')), [N]) : tf.zeros([N])
      return { probs, lse, picked }
    }))
    const L = tf.stack(parts.map((p) => p.lse), 1) // [N, blocks]
    const top = tf.max(L, 1, true) // [N, 1]
    const lse = tf.add(tf.reshape(top, [N]), tf.log(tf.sum(tf.exp(tf.sub(L, top)), 1))) // [N]
    const toWhole = tf.exp(tf.sub(L, tf.reshape(lse, [N, 1]))) // [N, blocks]: block softmax → softmax over the vocabulary
    // save() keeps copies; a weight variable outlives the step, a computed head (a tied table's transpose) may not
    save([hs, toWhole, ...parts.map((p) => p.probs), ...(ws instanceof tf.Variable ? [] : [ws])])
    return {
      value: tf.sub(tf.addN(parts.map((p) => p.picked)), lse),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [hSaved, scale] = saved as [tf.Tensor2D, tf.Tensor2D]
        const wSaved = (saved[2 + blocks.length] ?? ws) as tf.Tensor2D
        const hT = tf.transpose(hSaved) as tf.Tensor2D // [D, N]
        const negDy = tf.neg(tf.reshape(dy, [N, 1])) // [N, 1]
        let dh: tf.Tensor = tf.zeros([N, D])
        const gs = blocks.map((b, i) => {
          const [dhNext, g] = tf.tidy(() => {
            // g = dy · (onehot(t) − softmax), the gradient of the block's logits [N, vb]
            let g: tf.Tensor = tf.mul(saved[2 + i]!, tf.mul(negDy, tf.slice(scale, [0, i], [N, 1])))
            if (b.rows.length) g = tf.add(g, tf.reshape(tf.scatterND(tf.tensor2d(b.at, [b.at.length, 1], 'int32'), tf.gather(dy, tf.tensor1d(b.rows, 'int32')), [N * b.vb]), [N, b.vb]))
            return [tf.add(dh, tf.matMul(g as tf.Tensor2D, tf.transpose(columns(wSaved, b)))), g] // [N, D], [N, vb]
          })
          dh.dispose()
          dh = dhNext!
          return g as tf.Tensor2D
        })
        negDy.dispose()
        // the backward pass runs in a tidy: what is handed on outlives it
        if (defer) return (defer({ hT: tf.keep(hT), g: gs.map((g) => tf.keep(g)) }), [dh])
        return [dh, headWeightGrad({ hT, g: gs })] // [N, D], [D, V]
      },
    }
  }
  if (defer) return customGrad(([hs]: [tf.Tensor2D], save) => head([hs, w], save))(h) as tf.Tensor1D
  return customGrad(head)(h, w) as tf.Tensor1D
}

/**
 * log p(target) [N] of hidden states h [N, D] through the head w [D, V], `chunk` tokens at a time: the forward
 * keeps only the [N] results, and the backward recomputes each chunk's softmax (dh = g Wᵀ, dW += hᵀ g with
 * g = dy·(onehot − softmax)), so memory is bounded by one [chunk, V] block. With `defer`, w (a variable) is no
 * input: the backward returns dh only and hands dW, `ready`, to `defer`.
 */
export function chunkedHeadLogProbs(h: tf.Tensor2D, w: tf.Tensor2D, targets: tf.Tensor1D, chunk: number, defer?: (d: HeadBackward) => void): tf.Tensor1D {
  const [N] = h.shape
  const starts = Array.from({ length: Math.ceil(N / chunk) }, (_, i) => i * chunk)
  const pieces = (t: tf.Tensor, s: number) => tf.slice(t, [s], [Math.min(chunk, N - s)])
  const head = ([hs, ws]: [tf.Tensor2D, tf.Tensor2D], save: tf.GradSaveFunc) => {
    save([hs, targets])
    const value = tf.concat(starts.map((s) => tf.tidy(() => {
      const hc = tf.slice(hs, [s, 0], [Math.min(chunk, N - s), -1]) as tf.Tensor2D // [C, D]
      return targetLogProbs(tf.matMul(hc, ws), pieces(targets, s) as tf.Tensor1D) // [C]; the [C, V] logits freed here
    })))
    return {
      value,
      gradFunc: (dy: tf.Tensor, [hSaved, tSaved]: tf.Tensor[]) => {
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
        wT.dispose()
        if (defer) return (defer({ ready: tf.keep(dw) as tf.Tensor2D }), [tf.concat(dh)]) // kept past the backward's tidy
        return [tf.concat(dh), dw]
      },
    }
  }
  if (defer) return customGrad(([hs]: [tf.Tensor2D], save) => head([hs, w], save))(h) as tf.Tensor1D
  return customGrad(head)(h, w) as tf.Tensor1D
}
