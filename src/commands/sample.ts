/**
 * `align sample`: generate from a checkpoint or adapter directory with its chat template and a KV cache,
 * streaming the decoded text to stdout.
 */
import { initBackend } from '../model/backend.ts'
import { generate } from '../model/generate.ts'
import { disposeModel } from '../model/mistral.ts'
import { resolvePolicy } from '../model/policy.ts'
import { encodeChat, loadTokenizer } from '../model/tokenizer.ts'

export interface SampleArgs {
  dir: string
  prompt: string
  maxNewTokens: number
  temperature: number
  topP: number
  seed: number
  raw: boolean
  backend?: string
}

export async function sample(a: SampleArgs, write: (text: string) => void = (t) => void process.stdout.write(t)): Promise<number[]> {
  await initBackend(a.backend)
  const { model, spec } = resolvePolicy(a.dir, { trainable: false })
  const tok = loadTokenizer(spec.tokenizerDir)
  const ids = a.raw ? tok.encode(a.prompt) : encodeChat(tok, tok.render([{ role: 'user', content: a.prompt }], true))
  let shown = ''
  const out: number[] = []
  try {
    generate(model, ids, {
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
