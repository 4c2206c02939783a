// Build a full-scale UltraFeedback-shaped input (64k rows, like openbmb/UltraFeedback's 63,967) by replicating
// the shipped 1,000-row sample with distinct prompts: row k of copy j gets " [variant j]" appended to its
// instruction. Written with the sample's own parquet schema, snappy, 1,000-row row groups.
// Usage: tsx bench/make-ultrafeedback-64k.ts <out.parquet> [rows]
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects, parquetSchema } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'
import { fileWriter, parquetWriteRows } from 'hyparquet-writer'
import { renameSync } from 'node:fs'

const [out = 'bench/out/ultrafeedback-64k.parquet', rowsArg = '64000'] = process.argv.slice(2)
const total = Number(rowsArg)
const file = await asyncBufferFromFile('data/ultrafeedback/ultrafeedback-sample.parquet')
const metadata = await parquetMetadataAsync(file)
const sample = (await parquetReadObjects({ file, metadata, compressors })) as Record<string, unknown>[]
const columns = parquetSchema(metadata).children.map((c) => ({ name: c.element.name }))

function* rows() {
  for (let k = 0; k < total; k++) {
    const r = sample[k % sample.length]!
    const j = Math.floor(k / sample.length)
    yield j === 0 ? r : { ...r, instruction: `${r.instruction as string} [variant ${j}]` }
  }
}
const tmp = `${out}.tmp-${process.pid}`
parquetWriteRows({ writer: fileWriter(tmp), rows: rows(), columns, schema: metadata.schema, rowGroupSize: 1000 })
renameSync(tmp, out)
console.error(`wrote ${total} rows to ${out}`)
