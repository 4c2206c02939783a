/**
 * Generation with a KV cache: a prefill of the prompt, then one token at a time, each step attending to the
 * cached keys/values of every earlier position (within the sliding window). Greedy decoding takes the lowest
 * index among equal maxima (torch.argmax); sampling uses temperature and nucleus (top-p) filtering with align's
 * seeded RNG, so a seed reproduces a sample.
 */
import * as tf from '@tensorflow/tfjs'
import { Rng } from '../rng.ts'
import { embed, lmHead, mlp, proj, rmsNorm, rope, ropeTables, rotateHalfMatrix, type Model, type RopeTables } from './mistral.ts'

interface LayerCache {
  k: tf.Tensor4D // [1, KV, S, hd]
  v: tf.Tensor4D // [1, KV, S, hd]
}

/** Attention of `t` new positions starting at `pos` over the cache plus themselves. x: [t, D] */
function cachedAttention(model: Model, layer: number, x: tf.Tensor2D, pos: number, cache: LayerCache[], rt: RopeTables): tf.Tensor2D {
  const c = model.config
  const [t] = x.shape
  const H = c.numHeads
  const KV = c.numKvHeads
  const G = H / KV
  const hd = c.headDim
  const p = (n: string, y: tf.Tensor2D) => proj(model, `model.layers.${layer}.self_attn.${n}`, y)
  const cs = tf.slice(rt.cos, [pos, 0], [t, hd]) as tf.Tensor2D // rows of the new positions
  const sn = tf.slice(rt.sin, [pos, 0], [t, hd]) as tf.Tensor2D
  const q = rope(tf.reshape(p('q_proj', x), [1, t, H, hd]) as tf.Tensor4D, cs, sn, rt.rot) // [1, t, H, hd]
  const k = rope(tf.reshape(p('k_proj', x), [1, t, KV, hd]) as tf.Tensor4D, cs, sn, rt.rot) // [1, t, KV, hd]
  const v = tf.reshape(p('v_proj', x), [1, t, KV, hd]) // [1, t, KV, hd]
  const kNew = tf.transpose(k, [0, 2, 1, 3]) as tf.Tensor4D // [1, KV, t, hd]
  const vNew = tf.transpose(v, [0, 2, 1, 3]) as tf.Tensor4D // [1, KV, t, hd]
  const prev = cache[layer]
  const kAll = tf.keep(prev ? tf.concat([prev.k, kNew], 2) : kNew) as tf.Tensor4D // [1, KV, S, hd]
  const vAll = tf.keep(prev ? tf.concat([prev.v, vNew], 2) : vNew) as tf.Tensor4D
  if (prev) tf.dispose([prev.k, prev.v])
  cache[layer] = { k: kAll, v: vAll }
  const S = pos + t
  const mask = new Float32Array(G * t * S) // rows g*t + i (query position pos+i), columns key j
  for (let g = 0; g < G; g++) {
    for (let i = 0; i < t; i++) {
      for (let j = 0; j < S; j++) {
        const qi = pos + i
        const visible = j <= qi && (c.slidingWindow === null || qi - j < c.slidingWindow)
        mask[(g * t + i) * S + j] = visible ? 0 : -1e9
      }
    }
  }
  const qf = tf.reshape(tf.transpose(q, [0, 2, 1, 3]), [KV, G * t, hd]) // [KV, G*t, hd]
  const scores = tf.add(tf.mul(tf.matMul(qf, tf.reshape(kAll, [KV, S, hd]), false, true), 1 / Math.sqrt(hd)), tf.tensor2d(mask, [G * t, S])) // [KV, G*t, S]
  const out = tf.matMul(tf.softmax(scores), tf.reshape(vAll, [KV, S, hd])) // [KV, G*t, hd]
  const merged = tf.reshape(tf.transpose(tf.reshape(out, [1, H, t, hd]), [0, 2, 1, 3]), [t, H * hd]) as tf.Tensor2D // [t, H*hd]
  return p('o_proj', merged)
}

/** Logits [V] of the last of `ids`, appending their keys/values to `cache`. */
function step(model: Model, ids: number[], pos: number, cache: LayerCache[], rt: RopeTables): Float32Array {
  return tf.tidy(() => {
    const c = model.config
    let x = embed(model.params.get('model.embed_tokens.weight')! as unknown as tf.Tensor2D, tf.tensor1d(ids, 'int32')) // [t, D]
    for (let l = 0; l < c.numLayers; l++) {
      const w = (n: string) => model.params.get(`model.layers.${l}.${n}.weight`)! as unknown as tf.Tensor1D
      const h: tf.Tensor2D = tf.add(x, cachedAttention(model, l, rmsNorm(x, w('input_layernorm'), c.rmsNormEps), pos, cache, rt))
      x = tf.add(h, mlp(model, l, rmsNorm(h, w('post_attention_layernorm'), c.rmsNormEps)))
    }
    const last = tf.slice(x, [ids.length - 1, 0], [1, c.hiddenSize]) as tf.Tensor2D
    const normed = rmsNorm(last, model.params.get('model.norm.weight')! as unknown as tf.Tensor1D, c.rmsNormEps)
    return lmHead(model, normed).dataSync() as Float32Array
  })
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
export function generate(model: Model, promptIds: number[], o: SampleOptions): number[] {
  const total = promptIds.length + o.maxNewTokens
  const rt: RopeTables = { rot: rotateHalfMatrix(model.config.headDim), ...ropeTables(total, model.config.headDim, model.config.ropeTheta) }
  const cache: LayerCache[] = []
  const rng = Rng.fromKey(`sample:${o.seed}`)
  const out: number[] = []
  try {
    let logits = step(model, promptIds, 0, cache, rt)
    for (let n = 0; n < o.maxNewTokens; n++) {
      const id = pick(logits, o, rng)
      if (o.eosIds.includes(id)) break
      out.push(id)
      o.onToken?.(id)
      if (n + 1 < o.maxNewTokens) logits = step(model, [id], promptIds.length + n, cache, rt)
    }
  } finally {
    for (const c of cache) tf.dispose([c.k, c.v])
    tf.dispose([rt.cos, rt.sin, rt.rot])
  }
  return out
}
