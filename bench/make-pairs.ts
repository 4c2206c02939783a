// The standard DPO bench set: pre-tokenized pairs of ~128 prompt + ~128 completion tokens (vocab 32000, seeded),
// with reference log-probs, as JSONL. With --varied, lengths spread the way real data's do (prompts 61–200,
// chosen 41–300, rejected 41–240 tokens), so that two micro-batches of a step differ in work: what the LM head
// hand-off (src/train/handoff.ts) evens out. Usage: tsx bench/make-pairs.ts <out.jsonl> [pairs] [--varied]
import { writeFileSync } from 'node:fs'
import { Rng } from '../src/rng.ts'

const args = process.argv.slice(2)
const varied = args.includes('--varied')
const [out = 'bench/out/pairs-128.jsonl', n = '64'] = args.filter((a) => a !== '--varied')
const rng = Rng.fromKey(varied ? 'varied-pairs' : 'bench-pairs')
const ids = (len: number) => Array.from({ length: len }, () => 3 + rng.int(31_997))
const [prompt, chosen, rejected] = varied ? [() => 60 + rng.int(140), () => 40 + rng.int(260), () => 40 + rng.int(200)] : [() => 120 + rng.int(16), () => 120 + rng.int(16), () => 120 + rng.int(16)]
const lines = Array.from({ length: Number(n) }, () => {
  const promptIds = [1, ...ids(prompt())]
  return JSON.stringify({ prompt_ids: promptIds, chosen_ids: [...ids(chosen()), 2], rejected_ids: [...ids(rejected()), 2], reference_chosen_logp: -1300, reference_rejected_logp: -1300 })
})
writeFileSync(out, lines.join('\n') + '\n')
