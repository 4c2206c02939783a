/**
 * One micro-batch's gradients: the objective's loss scaled by 1/GA, differentiated with respect to the trainable
 * parameters, with LoRA dropout seeded by the micro-batch's place in the stream. The same function runs in the
 * main thread and in every worker (workers.ts), so a micro-batch gives the same bits wherever it runs.
 */
import * as tf from '@tensorflow/tfjs'
import { withAdapters } from '../model/lora.ts'
import type { Model } from '../model/mistral.ts'
import type { BatchStats, Objective } from '../preference/objective.ts'
import type { PairIds } from '../preference/pairs.ts'
import type { PairLogps } from '../preference/reference.ts'
import { Optimizer, clipByGlobalNorm } from './optim.ts'

export const trainableParams = (model: Model): [string, tf.Variable][] => [...model.params].filter(([, p]) => p.trainable)

/** LoRA dropout seed of micro-batch k of the stream (the same on every worker and after a resume). */
export const dropoutSeed = (seed: number, k: number) => seed * 1_000_003 + k

export function microBatchGrads(model: Model, objective: Objective, pairs: PairIds[], ref: PairLogps | undefined, o: { padId: number; ga: number; dropoutSeed: number }): { grads: Map<string, tf.Tensor>; stats: BatchStats } {
  const trainable = trainableParams(model)
  let stats: Omit<BatchStats, 'loss'> | undefined
  const { value, grads } = withAdapters(model, true, () => tf.variableGrads(() => {
    const r = objective.step(model, pairs, ref, o.padId, o.ga)
    stats = r.stats
    return r.loss
  }, trainable.map(([, p]) => p)), o.dropoutSeed)
  const loss = value.dataSync()[0]! * o.ga
  value.dispose()
  return { grads: new Map(trainable.map(([name, p]) => [name, grads[p.name]!])), stats: { ...stats!, loss } }
}

/**
 * Sum per-micro-batch gradients in micro-batch order (the same additions on every replica), parameter by
 * parameter in the model's order; the inputs are disposed.
 */
export function sumInOrder(model: Model, perMicroBatch: Map<string, tf.Tensor>[]): Map<string, tf.Tensor> {
  const acc = new Map<string, tf.Tensor>()
  for (const grads of perMicroBatch) {
    for (const [name] of trainableParams(model)) {
      const g = grads.get(name)!
      const prev = acc.get(name)
      acc.set(name, prev ? tf.add(prev, g) : g)
      if (prev) tf.dispose([prev, g])
    }
  }
  return acc
}

/**
 * One optimizer update from summed gradients: global-norm clip, then the optimizer's step at `lr`. A non-finite
 * norm applies nothing (the main thread stops the run there). Returns the norm before clipping.
 */
export function applyUpdate(model: Model, opt: Optimizer, grads: Map<string, tf.Tensor>, lr: number, maxNorm: number): number {
  const { grads: clipped, norm } = clipByGlobalNorm(grads, maxNorm)
  if (Number.isFinite(norm)) opt.apply(new Map(trainableParams(model)), clipped, lr)
  tf.dispose([...clipped.values()])
  return norm
}
