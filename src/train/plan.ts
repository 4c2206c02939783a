/**
 * The memory plan `--dry-run` prints: weights, gradients, optimizer states, reference and activations for full
 * fine-tuning vs LoRA, at fp32 (tfjs computes in float32 on every backend; it has no bf16 kernels).
 * Activations are an estimate per token: the residual stream and attention/MLP intermediates kept for the
 * backward pass (~(16·hidden + 3·intermediate)·layers floats) plus the [tokens, vocab] logits three times
 * (logits, softmax in the backward, its gradient); attention scores add heads·T floats per token per layer.
 */
import type { ModelConfig } from '../model/config.ts'
import { parameterCount } from '../model/config.ts'
import type { TrainerArgs } from './schema.ts'

export interface PlanRow {
  mode: 'full' | 'lora'
  weights: number
  gradients: number
  optimizer: number
  reference: number
  activations: number
  total: number
}

const GB = 1e9

export function memoryPlan(c: ModelConfig, stage: 'sft' | 'dpo', a: TrainerArgs, referenceMode: 'precompute' | 'frozen', backend: string, loraEnabled: boolean, loraR = 16): { params: number; rows: PlanRow[]; backend: string; loraEnabled: boolean; tokensPerMicroBatch: number } {
  const params = parameterCount(c)
  const rowsPerMicro = stage === 'dpo' ? 2 * a.per_device_train_batch_size : a.per_device_train_batch_size
  const T = a.max_length
  const tokens = rowsPerMicro * T
  const perTokenLayer = 16 * c.hiddenSize + 3 * c.intermediateSize + c.numHeads * T
  const activations = 4 * tokens * (perTokenLayer * c.numLayers + 3 * c.vocabSize)
  const loraParams = c.numLayers * loraR * (2 * c.hiddenSize + c.numHeads * c.headDim + 2 * (c.hiddenSize + c.numKvHeads * c.headDim) + 2 * c.hiddenSize + 3 * (c.hiddenSize + c.intermediateSize))
  const optimizerFactor = a.optim === 'adamw' ? 2 : 1
  const reference = stage === 'dpo' && referenceMode === 'frozen' ? 4 * params : 0
  const full: PlanRow = { mode: 'full', weights: 4 * params, gradients: 4 * params, optimizer: 4 * params * optimizerFactor, reference, activations, total: 0 }
  const lora: PlanRow = { mode: 'lora', weights: 4 * (params + loraParams), gradients: 4 * loraParams, optimizer: 4 * loraParams * optimizerFactor, reference: 0, activations, total: 0 }
  for (const r of [full, lora]) r.total = r.weights + r.gradients + r.optimizer + r.reference + r.activations
  return { params, rows: [full, lora], backend, loraEnabled, tokensPerMicroBatch: tokens }
}

export function formatPlan(p: ReturnType<typeof memoryPlan>): string {
  const g = (x: number) => `${(x / GB).toFixed(2)} GB`.padStart(11)
  const lines = [
    `model: ${(p.params / 1e6).toFixed(1)}M parameters · ${p.tokensPerMicroBatch} tokens per micro-batch · backend ${p.backend} (fp32)`,
    `mode   ${'weights'.padStart(11)}${'grads'.padStart(11)}${'optimizer'.padStart(11)}${'reference'.padStart(11)}${'activations'.padStart(12)}${'total'.padStart(11)}   fits 80 GB GPU`,
  ]
  for (const r of p.rows) lines.push(`${(r.mode + (r.mode === (p.loraEnabled ? 'lora' : 'full') ? '*' : '')).padEnd(7)}${g(r.weights)}${g(r.gradients)}${g(r.optimizer)}${g(r.reference)} ${g(r.activations)}${g(r.total)}   ${r.total < 80 * GB ? 'yes' : 'no'}`)
  lines.push('(* = this recipe; reference 0 = precomputed log-probs; activations assume every row padded to max_length)')
  return lines.join('\n')
}
