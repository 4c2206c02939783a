/**
 * AlignError: the one kind of error a user should ever see. Its message is one line that says what is
 * wrong, where (file, row, column, key) and how to fix it; the CLI prints it as `align: error: …` and
 * exits 1. Anything else that escapes is a bug and is printed with its stack.
 */
export class AlignError extends Error {
  constructor(message: string) {
    super(message.replace(/\s*\n\s*/g, ' '))
    this.name = 'AlignError'
  }
}

/** Render any value briefly for an error message: `"abc"`, `12`, `null`, `an object`. */
export function describe(value: unknown): string {
  if (value === undefined) return 'nothing'
  if (value === null) return 'null'
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? value.slice(0, 37) + '...' : value)
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value)
  if (Array.isArray(value)) return `a list of ${value.length}`
  return 'an object'
}

/**
 * A WebAssembly abort as a one-line AlignError: emscripten's `Aborted()` is what the wasm backend throws when
 * its heap (which stops at 4 GiB) cannot grow, i.e. a batch too large for it. Any other error is returned as is.
 */
export function explainAbort(e: unknown): unknown {
  const message = (e as Error | undefined)?.message ?? ''
  if (!/^Aborted\(/.test(message)) return e
  return new AlignError(`the wasm backend aborted (${message.split('.')[0]}): its heap, which stops at 4 GiB, is almost certainly full; lower per_device_train_batch_size or max_length (--dry-run prints the memory plan), or spread the batch over workers with gradient_accumulation_steps`)
}
