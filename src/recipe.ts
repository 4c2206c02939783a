/**
 * Recipes: one commented YAML file per run (`recipes/<name>.yaml`), torchtune-style, checked against a
 * typed schema. `key=value` overrides (`binarize.min_margin=0.5`, or `min_margin=0.5` when the key is
 * unique across sections) are parsed as YAML scalars and type-checked like the file; unknown keys are
 * errors that name the file and line and suggest the nearest valid key.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import YAML, { LineCounter, isMap, isScalar, type Node } from 'yaml'
import { AlignError, describe } from './errors.ts'
import { RECIPES_DIR } from './paths.ts'
import { isHandbookRecipe, translateHandbook } from './handbook.ts'

export type FieldType =
  | { kind: 'number'; min?: number; max?: number; /** exclusive bounds */ above?: number; below?: number }
  | { kind: 'integer'; min?: number; max?: number }
  | { kind: 'boolean' }
  | { kind: 'string' }
  | { kind: 'enum'; choices: readonly string[] }
  | { kind: 'strings' }
  | { kind: 'weights' } // { name: number }
  | { kind: 'datasets' } // [{ id, split, config?, columns?, weight? }]

export interface Field {
  type: FieldType
  default: unknown
  nullable?: boolean
  doc: string
}
export type Section = Record<string, Field>
export type Schema = Record<string, Section>

/** The TypeScript type of a field's value, from its declaration: recipes are typed by their schema alone. */
type TypeOf<T extends FieldType> = T extends { kind: 'number' | 'integer' }
  ? number
  : T extends { kind: 'boolean' }
    ? boolean
    : T extends { kind: 'string' }
      ? string
      : T extends { kind: 'enum'; choices: readonly (infer C)[] }
        ? C
        : T extends { kind: 'strings' }
          ? string[]
          : T extends { kind: 'datasets' }
            ? DatasetSpec[]
            : Record<string, number>

/** One entry of a data mixture (alignment-handbook's DatasetConfig). */
export interface DatasetSpec {
  id: string
  split: string
  config?: string | null
  columns?: string[] | null
  weight?: number | null
}
export type ValueOf<F extends Field> = TypeOf<F['type']> | (F extends { nullable: true } ? null : never)
export type Values<S extends Section> = { -readonly [K in keyof S]: ValueOf<S[K]> }
export type RecipeValues<S extends Schema> = { [K in keyof S]: Values<S[K]> }

/** Field constructors that keep the literal kind, so `Values<typeof SECTION>` is exact. */
export const field = {
  number: (d: number, doc: string, min = 0, max?: number) => ({ type: { kind: 'number' as const, min, max }, default: d, doc }),
  /** a number > above (torch's check of epsilon) */
  above: (d: number, doc: string, above: number) => ({ type: { kind: 'number' as const, above }, default: d, doc }),
  /** a number in [0, 1) (torch's check of Adam's betas) */
  fraction: (d: number, doc: string) => ({ type: { kind: 'number' as const, min: 0, below: 1 }, default: d, doc }),
  integer: (d: number, doc: string, min = 0) => ({ type: { kind: 'integer' as const, min }, default: d, doc }),
  boolean: (d: boolean, doc: string) => ({ type: { kind: 'boolean' as const }, default: d, doc }),
  string: (d: string, doc: string) => ({ type: { kind: 'string' as const }, default: d, doc }),
  optionalString: (doc: string) => ({ type: { kind: 'string' as const }, default: null, nullable: true as const, doc }),
  enum: <C extends readonly string[]>(choices: C, d: C[number], doc: string) => ({ type: { kind: 'enum' as const, choices }, default: d, doc }),
  strings: (d: string[], doc: string) => ({ type: { kind: 'strings' as const }, default: d, doc }),
}

/** Every section any command reads; a recipe with another top-level key is an error (a typo would be ignored). */
export const KNOWN_SECTIONS = ['description', 'binarize', 'model', 'data', 'sft', 'dpo', 'lora']

export interface LoadedRecipe<S extends Schema = Schema> {
  name: string
  path: string
  /** section -> key -> value, every key present (defaults filled in) */
  values: RecipeValues<S>
  overrides: string[]
  /** an alignment-handbook recipe: the keys that could not apply here, with the reason */
  notes?: string[]
}

/** `zephyr` -> recipes/zephyr.yaml; anything with a slash or .yaml suffix is a path. */
export function resolveRecipePath(nameOrPath: string): string {
  const isPath = nameOrPath.includes('/') || /\.ya?ml$/.test(nameOrPath)
  const path = isPath ? resolve(nameOrPath) : join(RECIPES_DIR, `${nameOrPath}.yaml`)
  if (!existsSync(path)) {
    const known = listRecipes().join(', ')
    throw new AlignError(`recipe ${JSON.stringify(nameOrPath)} not found (looked for ${path}); known recipes: ${known}`)
  }
  return path
}

export function listRecipes(): string[] {
  return readdirSync(RECIPES_DIR).filter((f) => f.endsWith('.yaml')).map((f) => f.slice(0, -5)).sort()
}

/** Load a recipe, keep only the sections `schema` knows, fill defaults, apply overrides. */
export function loadRecipe<S extends Schema>(nameOrPath: string, schema: S, overrides: string[] = []): LoadedRecipe<S> {
  const path = resolveRecipePath(nameOrPath)
  const text = readFileSync(path, 'utf8')
  const lines = new LineCounter()
  const doc = YAML.parseDocument(text, { lineCounter: lines, prettyErrors: false })
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!
    const at = lines.linePos(e.pos[0])
    throw new AlignError(`${path}:${at.line}: invalid YAML: ${e.message.split('\n')[0]}`)
  }
  const where = (node: Node | null | undefined) => (node?.range ? `${path}:${lines.linePos(node.range[0]).line}` : path)
  const values: Record<string, Record<string, unknown>> = {}
  for (const [section, fields] of Object.entries(schema)) {
    values[section] = Object.fromEntries(Object.entries(fields).map(([k, f]) => [k, structuredClone(f.default)]))
  }
  const root = doc.contents
  const json = doc.toJS() as unknown
  if (json !== null && typeof json === 'object' && !Array.isArray(json) && isHandbookRecipe(json as Record<string, unknown>, KNOWN_SECTIONS)) {
    return handbookRecipe(nameOrPath, path, json as Record<string, unknown>, schema, values, overrides)
  }
  if (root !== null && !isMap(root)) throw new AlignError(`${path}: a recipe is a YAML mapping of sections (${Object.keys(schema).join(', ')})`)
  for (const pair of root?.items ?? []) {
    const section = String(isScalar(pair.key) ? pair.key.value : pair.key)
    if (!KNOWN_SECTIONS.includes(section)) throw unknownKey(where(pair.key as Node), '', section, Object.fromEntries(KNOWN_SECTIONS.map((k) => [k, 1])))
    const fields = schema[section]
    if (!fields) continue // sections of other commands are checked by those commands
    if (pair.value === null) continue
    if (!isMap(pair.value)) throw new AlignError(`${where(pair.key as Node)}: section ${section} must be a mapping of key: value`)
    for (const item of pair.value.items) {
      const key = String(isScalar(item.key) ? item.key.value : item.key)
      const field = fields[key]
      if (!field) throw unknownKey(where(item.key as Node), section, key, fields)
      const raw = (item.value as Node | null)?.toJSON?.() ?? (isScalar(item.value) ? item.value.value : null)
      values[section]![key] = checkValue(raw, field, `${where(item.value as Node)}: ${section}.${key}`)
    }
  }
  for (const o of overrides) applyOverride(values, schema, o)
  // every key was checked against its field above: the values have the schema's types
  return { name: nameOrPath, path, values: values as RecipeValues<S>, overrides }
}

/** An alignment-handbook recipe: its flat keys translated into align's sections, then checked like any recipe. */
function handbookRecipe<S extends Schema>(name: string, path: string, json: Record<string, unknown>, schema: S, values: Record<string, Record<string, unknown>>, overrides: string[]): LoadedRecipe<S> {
  if (!schema.model) throw new AlignError(`${path}: an alignment-handbook recipe configures training (align sft / align train), not ${Object.keys(schema).join(', ')}`)
  let translated: ReturnType<typeof translateHandbook>
  try {
    translated = translateHandbook(json, nearest)
  } catch (e) {
    if (e instanceof AlignError) throw new AlignError(`${path}: ${e.message}`)
    throw e
  }
  for (const [section, kv] of Object.entries(translated.sections)) {
    if (!schema[section]) continue
    for (const [key, raw] of Object.entries(kv)) values[section]![key] = checkValue(raw, schema[section]![key]!, `${path}: ${section}.${key}`)
  }
  for (const o of overrides) applyOverride(values, schema, o)
  return { name, path, values: values as RecipeValues<S>, overrides, notes: translated.notes }
}

/** Apply one `section.key=value` (or unique `key=value`) override in place. */
export function applyOverride(values: Record<string, Record<string, unknown>>, schema: Schema, override: string): void {
  const eq = override.indexOf('=')
  if (eq <= 0) throw new AlignError(`override ${JSON.stringify(override)} is not key=value (e.g. binarize.min_margin=0.5)`)
  const dotted = override.slice(0, eq).trim()
  const text = override.slice(eq + 1)
  let section: string
  let key: string
  if (dotted.includes('.')) {
    ;[section, key] = [dotted.slice(0, dotted.indexOf('.')), dotted.slice(dotted.indexOf('.') + 1)]
    if (!schema[section]) throw new AlignError(`override ${dotted}: unknown section ${JSON.stringify(section)}; sections: ${Object.keys(schema).join(', ')}`)
  } else {
    const owners = Object.keys(schema).filter((s) => dotted in schema[s]!)
    if (owners.length !== 1) {
      const all = Object.fromEntries(Object.entries(schema).flatMap(([s, f]) => Object.entries(f).map(([k, v]) => [`${s}.${k}`, v])))
      if (owners.length === 0) throw unknownKey('override', '', dotted, all, 'key')
      throw new AlignError(`override ${dotted}: ambiguous, write one of ${owners.map((s) => `${s}.${dotted}`).join(', ')}`)
    }
    ;[section, key] = [owners[0]!, dotted]
  }
  const field = schema[section]![key]
  if (!field) throw unknownKey('override', section, key, schema[section]!)
  let parsed: unknown
  try {
    parsed = YAML.parse(text)
  } catch {
    parsed = text
  }
  if (field.type.kind === 'string' && parsed !== null && typeof parsed !== 'string') parsed = text
  values[section]![key] = checkValue(parsed ?? null, field, `override ${section}.${key}`)
}

/** The closest of `names` to `word` by edit distance, if it is close enough to be a typo. */
export function nearest(word: string, names: string[]): string | undefined {
  const near = names.map((n) => [n, editDistance(n, word)] as const).sort((a, b) => a[1] - b[1])[0]
  return near && near[1] <= Math.max(2, word.length / 3) ? near[0] : undefined
}

function unknownKey(where: string, section: string, key: string, fields: Record<string, unknown>, what = section ? 'key' : 'section'): AlignError {
  const names = Object.keys(fields)
  const near = nearest(key, names)
  const hint = near ? `did you mean ${near}? ` : ''
  const full = section ? `${section}.${key}` : key
  return new AlignError(`${where}: unknown ${what} ${full}; ${hint}valid: ${names.join(', ')}`)
}

/** Check one value against its field; returns the (normalised) value or throws naming `where`. */
export function checkValue(v: unknown, field: Field, where: string): unknown {
  const t = field.type
  const fail = (want: string) => new AlignError(`${where}: expected ${want}, got ${describe(v)}`)
  if (v === null || v === undefined) {
    if (field.nullable) return null
    throw fail(typeName(t))
  }
  switch (t.kind) {
    case 'number':
    case 'integer': {
      if (typeof v !== 'number' || !Number.isFinite(v)) throw fail(typeName(t))
      if (t.kind === 'integer' && !Number.isInteger(v)) throw fail('an integer')
      if (t.min !== undefined && v < t.min) throw fail(`a number >= ${t.min}`)
      if (t.max !== undefined && v > t.max) throw fail(`a number <= ${t.max}`)
      if (t.kind === 'number' && t.above !== undefined && !(v > t.above)) throw fail(`a number > ${t.above}`)
      if (t.kind === 'number' && t.below !== undefined && !(v < t.below)) throw fail(`a number < ${t.below}`)
      return v
    }
    case 'boolean':
      if (typeof v !== 'boolean') throw fail('true or false')
      return v
    case 'string':
      if (typeof v !== 'string') throw fail('a string')
      return v
    case 'enum':
      if (typeof v !== 'string' || !t.choices.includes(v)) throw fail(`one of ${t.choices.join(' | ')}`)
      return v
    case 'strings':
      if (typeof v === 'string') return v === '' ? [] : v.split(',').map((s) => s.trim())
      if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) throw fail('a list of strings')
      return v
    case 'datasets': {
      if (!Array.isArray(v)) throw fail('a list of {id, split, weight} entries')
      v.forEach((d, i) => {
        const at = `${where}[${i}]`
        if (d === null || typeof d !== 'object' || typeof d.id !== 'string' || typeof d.split !== 'string') throw new AlignError(`${at}: expected {id: <dataset id or path>, split: <split name>, weight?: <fraction>}, got ${describe(d)}`)
        const extra = Object.keys(d).filter((k) => !['id', 'split', 'config', 'columns', 'weight'].includes(k))
        if (extra.length) throw new AlignError(`${at}: unknown key ${extra[0]}; valid: id, split, config, columns, weight`)
        if (d.weight !== undefined && d.weight !== null && (typeof d.weight !== 'number' || !(d.weight >= 0))) throw new AlignError(`${at}.weight: expected a number >= 0, got ${describe(d.weight)}`)
      })
      return v
    }
    case 'weights': {
      if (typeof v !== 'object' || Array.isArray(v)) throw fail('a mapping of name: number')
      for (const [k, w] of Object.entries(v as object)) {
        if (typeof w !== 'number' || !Number.isFinite(w) || w < 0) throw new AlignError(`${where}.${k}: expected a number >= 0, got ${describe(w)}`)
      }
      return v
    }
  }
}

function typeName(t: FieldType): string {
  switch (t.kind) {
    case 'number': return 'a number'
    case 'integer': return 'an integer'
    case 'boolean': return 'true or false'
    case 'string': return 'a string'
    case 'enum': return `one of ${t.choices.join(' | ')}`
    case 'strings': return 'a list of strings'
    case 'weights': return 'a mapping of name: number'
    case 'datasets': return 'a list of {id, split, weight} entries'
  }
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)])
  for (let j = 1; j <= b.length; j++) d[0]![j] = j
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
  }
  return d[a.length]![b.length]!
}
