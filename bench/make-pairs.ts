// The standard DPO bench set: pre-tokenized pairs of ~128 prompt + ~128 completion tokens (vocab 32000, seeded),
// with reference log-probs, as JSONL. Usage: tsx bench/make-pairs.ts <out.jsonl> [pairs]
import { writeFileSync } from 'node:fs'
import { Rng } from '../src/rng.ts'

const [out = 'bench/out/pairs-128.jsonl', n = '64'] = process.argv.slice(2)
const rng = Rng.fromKey('bench-pairs')
const ids = (len: number) => Array.from({ length: len }, () => 3 + rng.int(31_997))
const lines = Array.from({ length: Number(n) }, () => {
  const prompt = [1, ...ids(120 + rng.int(16))]
  return JSON.stringify({ prompt_ids: prompt, chosen_ids: [...ids(120 + rng.int(16)), 2], rejected_ids: [...ids(120 + rng.int(16)), 2], reference_chosen_logp: -1300, reference_rejected_logp: -1300 })
})
writeFileSync(out, lines.join('\n') + '\n')
