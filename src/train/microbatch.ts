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
