/**
 * A whole JSONL or parquet file as row objects: pairs files for training and eval, prompt lists for binarize.
 * (The UltraFeedback input itself is streamed row group by row group by binarize/read.ts.) No tfjs here.
 */
import { readFileSync } from 'node:fs'
import { asyncBufferFromFile, parquetReadObjects } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'
import { AlignError } from './errors.ts'

export async function readRows(path: string): Promise<Record<string, any>[]> {
  if (path.endsWith('.parquet')) {
    try {
      return (await parquetReadObjects({ file: await asyncBufferFromFile(path), compressors })) as Record<string, any>[]
    } catch (e) {
      throw new AlignError(`${path}: not a readable parquet file (${(e as Error).message.split('\n')[0]}); it may be truncated: re-download it or run align binarize again`)
    }
  }
  return readFileSync(path, 'utf8').split('\n').flatMap((line, i) => {
    if (!line.trim()) return []
    try {
      return [JSON.parse(line)]
    } catch (e) {
      throw new AlignError(`${path} line ${i + 1}: invalid JSON (${(e as Error).message})`)
    }
  })
}
