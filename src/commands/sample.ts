/**
 * `align sample`: generate from a checkpoint or adapter directory with its chat template and a KV cache,
 * streaming the decoded text to stdout.
 */
import { initBackend } from '../model/backend.ts'
import { generate } from '../model/generate.ts'
import { disposeModel } from '../model/mistral.ts'
import { describePolicy, policyTokenizer, resolvePolicy } from '../model/policy.ts'
import { encodeChat } from '../model/tokenizer.ts'
import { AlignError } from '../errors.ts'

export interface SampleArgs {
  dir: string
  prompt: string
  maxNewTokens: number
  temperature: number
  topP: number
  seed: number
  raw: boolean
  /** a system message before the prompt ('' = the empty one the Zephyr recipes train with) */
  system?: string
  backend?: string
}

export async function sample(a: SampleArgs, write: (text: string) => void = (t) => void process.stdout.write(t)): Promise<number[]> {
  if (!Number.isInteger(a.maxNewTokens) || a.maxNewTokens < 0) throw new AlignError(`--max-new-tokens ${a.maxNewTokens}: needs a whole number >= 0`)
  if (!(a.temperature >= 0)) throw new AlignError(`--temperature ${a.temperature}: needs a number >= 0 (0 = greedy)`)
  if (!(a.topP > 0 && a.topP <= 1)) throw new AlignError(`--top-p ${a.topP}: needs a number in (0, 1]`)
  await initBackend(a.backend)
  const tok = await policyTokenizer(describePolicy(a.dir), { probeTemplate: !a.raw, note: (s) => void process.stderr.write(s + '\n') })
  const { model } = resolvePolicy(a.dir, { trainable: false })
  const messages = [...(a.system !== undefined ? [{ role: 'system' as const, content: a.system }] : []), { role: 'user' as const, content: a.prompt }]
  const ids = a.raw ? tok.encode(a.prompt) : encodeChat(tok, tok.render(messages, true))
  let shown = ''
  const out: number[] = []
  try {
    await generate(model, ids, {
      maxNewTokens: a.maxNewTokens, temperature: a.temperature, topP: a.topP, seed: a.seed, eosIds: [tok.eosId],
      onToken: (id) => {
        out.push(id)
        const text = tok.decode(out)
        write(text.slice(shown.length))
        shown = text
      },
    })
  } finally {
    disposeModel(model)
  }
  write('\n')
  return out
}
