#!/usr/bin/env node
// Entry point for `npx align` / the package bin: runs src/cli.ts through tsx (Node 20 has no type stripping).
import { register } from 'tsx/esm/api'
register()
await import('../src/cli.ts')
