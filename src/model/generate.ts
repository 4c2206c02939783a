/**
 * Generation with a KV cache: a prefill of the prompt, then one token at a time through the model's own blocks
 * (mistral.ts `block` with a `KvCache`), each step attending to the cached keys/values of every earlier position
 * (within the sliding window). Greedy decoding takes the lowest
 * index among equal maxima (torch.argmax); sampling uses temperature and nucleus (top-p) filtering with align's
 * seeded RNG, so a seed reproduces a sample.
 */
import * as tf from '@tensorflow/tfjs'
import { Rng } from '../rng.ts'
import { attentionMask, block, embed, lmHead, param, rmsNorm, ropeTables, rotateHalfMatrix, type Ctx, type KvCache, type Model } from './mistral.ts'

/** Logits [V] of the last of `ids`, which sit at positions pos.., appending their keys/values to `caches`. */
async function step(model: Model, ids: number[], pos: number, caches: KvCache[], rope: { cos: tf.Tensor2D; sin: tf.Tensor2D; rot: tf.Tensor2D }): Promise<Float32Array> {
  const logits = tf.tidy(() => {
    const c = model.config
    const t = ids.length
    const ctx: Ctx = {
      B: 1,
      T: t,
      mask: attentionMask(t, c.numHeads / c.numKvHeads, c.slidingWindow, undefined, pos), // [1, 1, G*t, pos+t]
      cos: tf.slice(rope.cos, [pos, 0], [t, c.headDim]), // rows of the new positions
      sin: tf.slice(rope.sin, [pos, 0], [t, c.headDim]),
      rot: rope.rot,
    }
    let x = embed(model, tf.tensor1d(ids, 'int32')) // [t, D]
    for (let l = 0; l < c.numLayers; l++) x = block(model, l, x, ctx, caches[l])
    const last = tf.slice(x, [t - 1, 0], [1, c.hiddenSize]) as tf.Tensor2D // [1, D]
    return lmHead(model, rmsNorm(last, param<tf.Rank.R1>(model, 'model.norm.weight'), c.rmsNormEps)) // [1, V]
  })
  const values = (await logits.data()) as Float32Array
  logits.dispose()
  return values
}

export interface SampleOptions {
  maxNewTokens: number
  /** 0 = greedy */
  temperature: number
  topP: number
  seed: number
  /** stop at these ids (not emitted); empty = never stop early */
  eosIds: number[]
  onToken?: (id: number) => void
}

export function pick(logits: Float32Array, o: SampleOptions, rng: Rng): number {
  if (o.temperature <= 0) {
    let best = 0
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i
    return best
  }
  const scaled = Array.from(logits, (l) => l / o.temperature)
  const max = Math.max(...scaled)
  const probs = scaled.map((l) => Math.exp(l - max))
  const z = probs.reduce((a, b) => a + b, 0)
  const order = [...probs.keys()].sort((a, b) => probs[b]! - probs[a]! || a - b)
  let mass = 0
  const keep: number[] = []
  for (const i of order) {
    keep.push(i)
    mass += probs[i]! / z
    if (mass >= o.topP) break
  }
  const kz = keep.reduce((a, i) => a + probs[i]!, 0)
  let r = rng.random() * kz
  for (const i of keep) {
    r -= probs[i]!
    if (r <= 0) return i
  }
  return keep[keep.length - 1]!
}

/** Continue `promptIds`; returns the new ids (EOS excluded). */
export async function generate(model: Model, promptIds: number[], o: SampleOptions): Promise<number[]> {
  const total = promptIds.length + o.maxNewTokens
  const rope = { rot: rotateHalfMatrix(model.config.headDim), ...ropeTables(total, model.config.headDim, model.config.ropeTheta) }
  const caches: KvCache[] = Array.from({ length: model.config.numLayers }, () => ({}))
  const rng = Rng.fromKey(`sample:${o.seed}`)
  const out: number[] = []
  try {
    let logits = await step(model, promptIds, 0, caches, rope)
    for (let n = 0; n < o.maxNewTokens; n++) {
      const id = pick(logits, o, rng)
      if (o.eosIds.includes(id)) break
      out.push(id)
      o.onToken?.(id)
      if (n + 1 < o.maxNewTokens) logits = await step(model, [id], promptIds.length + n, caches, rope)
    }
  } finally {
    for (const c of caches) tf.dispose([c.k, c.v].filter((t): t is tf.Tensor4D => t !== undefined))
    tf.dispose([rope.cos, rope.sin, rope.rot])
  }
  return out
}
