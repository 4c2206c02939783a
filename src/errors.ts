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
