/**
 * Tokenizer and chat template: `tokenizer.json` through @huggingface/tokenizers, `chat_template` from
 * `tokenizer_config.json` rendered by @huggingface/jinja; Zephyr's template (alignment-handbook
 * `DEFAULT_CHAT_TEMPLATE`) for tokenizers that have none, such as the Mistral-7B base tokenizer.
 *
 * A turn is tokenized as TRL's DPOTrainer does (trl/trainer/dpo_trainer.py, `tokenize_row` up to v0.8 and
 * `process_row` after): the prompt is the chat template with the generation prompt; prompt+completion is
 * rendered and tokenized whole and the completion is what follows the prompt's tokens, so the token boundary is
 * the one the model sees at inference (a separately tokenized completion would start with a spurious "▁"). The
 * completion is the assistant text + one EOS (the template's trailing newline after EOS is dropped; an EOS is
 * appended if the template has none). Exactly one BOS: added by the tokenizer unless the template renders it.
 */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { Template } from '@huggingface/jinja'
import { Tokenizer } from '@huggingface/tokenizers'
import { AlignError } from '../errors.ts'
import { readJson } from '../files.ts'

/** alignment-handbook recipes/zephyr-7b-beta/sft/config_full.yaml `chat_template` (and Zephyr-7B-β's). */
export const ZEPHYR_TEMPLATE =
  "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"

export interface Message {
  role: 'system' | 'user' | 'assistant'
  content: string
}

export interface ChatTokenizer {
  dir: string
  bos: string
  eos: string
  bosId: number
  eosId: number
  padId: number
  vocabSize: number
  templateSource: 'tokenizer_config.json' | 'recipe' | 'zephyr default'
  /** the chat template's source text */
  template: string
  encode(text: string, addSpecialTokens?: boolean): number[]
  decode(ids: number[]): string
  render(messages: Message[], addGenerationPrompt: boolean): string
}

const tokenText = (v: unknown): string | undefined => (typeof v === 'string' ? v : typeof v === 'object' && v !== null ? ((v as { content?: string }).content ?? undefined) : undefined)

/** Load `dir`'s tokenizer; `chatTemplate` (a recipe's `chat_template`, as the handbook's) replaces the file's own. */
export function loadTokenizer(dir: string, chatTemplate?: string | null): ChatTokenizer {
  const tjPath = join(dir, 'tokenizer.json')
  if (!existsSync(tjPath)) throw new AlignError(`${dir}: no tokenizer.json (align needs the HF fast tokenizer file; tokenizer.model alone is not enough)`)
  const json = readJson(tjPath)
  const cfgPath = join(dir, 'tokenizer_config.json')
  const cfg: Record<string, any> = existsSync(cfgPath) ? readJson(cfgPath) : {}
  let tok: Tokenizer
  try {
    tok = new Tokenizer(json, cfg)
    tok.encode('ok')
  } catch (e) {
    throw new AlignError(`${tjPath}: not a tokenizer @huggingface/tokenizers can load (${(e as Error).message.split('\n')[0]}); copy the model's own tokenizer.json`)
  }
  const bos = tokenText(cfg.bos_token) ?? '<s>'
  const eos = tokenText(cfg.eos_token) ?? '</s>'
  const id = (t: string) => {
    const i = tok.token_to_id(t)
    if (i === undefined || i === null) throw new AlignError(`${dir}: special token ${t} is not in the vocabulary`)
    return i as number
  }
  const pad = tokenText(cfg.pad_token)
  const vocab = tok.get_vocab() as Map<string, number> | Record<string, number>
  const ids = vocab instanceof Map ? [...vocab.values()] : Object.values(vocab)
  const fromRecipe = typeof chatTemplate === 'string'
  const src = fromRecipe ? chatTemplate : typeof cfg.chat_template === 'string' ? cfg.chat_template : undefined
  let template: Template
  try {
    template = new Template(src ?? ZEPHYR_TEMPLATE)
  } catch (e) {
    throw new AlignError(`${fromRecipe ? 'the recipe' : cfgPath}: chat_template does not parse (${(e as Error).message.split('\n')[0]})`)
  }
  const bosId = id(bos)
  const eosId = id(eos)
  return {
    dir,
    bos,
    eos,
    bosId,
    eosId,
    padId: pad ? id(pad) : eosId, // TRL: no pad token -> eos
    vocabSize: Math.max(...ids) + 1,
    templateSource: fromRecipe ? 'recipe' : src ? 'tokenizer_config.json' : 'zephyr default',
    template: src ?? ZEPHYR_TEMPLATE,
    encode: (text, addSpecialTokens = true) => tok.encode(text, { add_special_tokens: addSpecialTokens } as never).ids as number[],
    decode: (ids) => tok.decode(ids, { skip_special_tokens: false } as never) as string,
    render: (messages, addGenerationPrompt) => {
      try {
        return template.render({ messages, add_generation_prompt: addGenerationPrompt, bos_token: bos, eos_token: eos })
      } catch (e) {
        throw new AlignError(`${src ? cfgPath : 'the Zephyr template'}: chat_template failed to render (${(e as Error).message.split('\n')[0]})`)
      }
    },
  }
}

const PROBE = [
  { role: 'system', content: 'You are a helpful assistant.' },
  { role: 'user', content: 'What is 2 + 2?' },
  { role: 'assistant', content: '4.' },
  { role: 'user', content: 'And 3 + 3?' },
]
// runs in a worker: a template that loops without bound is stopped by terminating the worker
const PROBE_WORKER = `import('@huggingface/jinja').then(({ Template }) => {
  const { parentPort, workerData: w } = require('node:worker_threads')
  try { parentPort.postMessage({ chars: new Template(w.src).render(w.ctx).length }) } catch (e) { parentPort.postMessage({ error: String(e && e.message || e).split('\\n')[0] }) }
})`

/**
 * Render a checkpoint's own chat template once on a 4-message conversation, in a worker with a time limit and an
 * output-size limit: a template from a file can loop without bound (jinja's range/for), and rendering is
 * synchronous, so it is tried where it can be stopped before any data is rendered with it.
 */
export async function checkTemplate(t: ChatTokenizer, limitMs = 5000, maxChars = 1_000_000): Promise<void> {
  if (t.templateSource === 'zephyr default') return
  const { Worker } = await import('node:worker_threads')
  const where = join(t.dir, 'tokenizer_config.json')
  const result = await new Promise<{ chars?: number; error?: string; timeout?: boolean }>((resolve) => {
    const w = new Worker(PROBE_WORKER, { eval: true, workerData: { src: t.template, ctx: { messages: PROBE, add_generation_prompt: true, bos_token: t.bos, eos_token: t.eos } } })
    const timer = setTimeout(() => void w.terminate().then(() => resolve({ timeout: true })), limitMs)
    w.on('message', (m) => {
      clearTimeout(timer)
      void w.terminate()
      resolve(m)
    })
    w.on('error', (e) => {
      clearTimeout(timer)
      resolve({ error: e.message })
    })
  })
  if (result.timeout) throw new AlignError(`${where}: chat_template did not finish rendering a 4-message conversation in ${limitMs / 1000} s (it loops without bound); fix the template or set model.tokenizer to another directory`)
  if (result.error) throw new AlignError(`${where}: chat_template failed to render (${result.error})`)
  if (result.chars! > maxChars) throw new AlignError(`${where}: chat_template renders ${result.chars} characters for a 4-message conversation (limit ${maxChars}); fix the template`)
}

/**
 * alignment-handbook's `maybe_insert_system_message` (auto_insert_empty_system_msg, on in its Zephyr recipes): an
 * empty system turn before a conversation that has none, when the template knows a system role.
 */
export function withEmptySystem(t: ChatTokenizer, messages: Message[]): Message[] {
  if (messages[0]?.role === 'system' || !(t.template.includes('system') || t.template.includes('<|im_start|>'))) return messages
  return [{ role: 'system', content: '' }, ...messages]
}

/** Encode a rendered chat with exactly one BOS. */
export function encodeChat(t: ChatTokenizer, text: string): number[] {
  return text.startsWith(t.bos) ? t.encode(text, false) : t.encode(text, true)
}

/** Prompt ids (template + generation prompt) and completion ids (assistant text + EOS) at the real boundary. */
export function tokenizeTurn(t: ChatTokenizer, prompt: Message[], completion: string): { promptIds: number[]; completionIds: number[]; boundaryMismatch: boolean } {
  const promptIds = encodeChat(t, t.render(prompt, true))
  const full = encodeChat(t, t.render([...prompt, { role: 'assistant', content: completion }], false))
  let completionIds: number[]
  let boundaryMismatch = false
  if (full.length >= promptIds.length && promptIds.every((x, i) => full[i] === x)) {
    completionIds = full.slice(promptIds.length)
    const lastEos = completionIds.lastIndexOf(t.eosId)
    if (lastEos >= 0) completionIds = completionIds.slice(0, lastEos + 1)
    else completionIds.push(t.eosId)
  } else {
    // the template's prompt is not a token prefix of prompt+completion (TRL warns here): tokenize apart
    boundaryMismatch = true
    completionIds = [...t.encode(completion, false), t.eosId]
  }
  return { promptIds, completionIds, boundaryMismatch }
}

/** A tokenizer whose ids do not all index the model's embedding table would read garbage rows: refuse it. */
export function checkVocabulary(tok: ChatTokenizer, vocabSize: number): void {
  if (tok.vocabSize > vocabSize) throw new AlignError(`tokenizer ${tok.dir} has ${tok.vocabSize} tokens but the model's vocab_size is ${vocabSize}; use the policy's own tokenizer`)
}
