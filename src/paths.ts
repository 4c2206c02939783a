/**
 * Where the package's own files are, whatever the working directory: recipes/ and the shipped tokenizer.
 */
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const PACKAGE_DIR = join(dirname(fileURLToPath(import.meta.url)), '..')
export const RECIPES_DIR = join(PACKAGE_DIR, 'recipes')
/** The shipped Mistral-7B tokenizer (data/PROVENANCE.md), for preset policies that have none. */
export const SHIPPED_TOKENIZER = join(PACKAGE_DIR, 'data', 'tokenizer')
/** The shipped 1,000-row UltraFeedback sample the demo binarizes. */
export const SHIPPED_SAMPLE = join(PACKAGE_DIR, 'data', 'ultrafeedback')
