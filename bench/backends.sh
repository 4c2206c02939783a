#!/usr/bin/env bash
# bench/backends.sh: the same DPO step (bench/dpo.sh's set: tiny-bench Mistral, ~128 + ~128 token pairs, 4 pairs a
# step, two warm-up steps) on each backend this machine can run, in one run: wasm with one worker and with the default workers, and
# webgpu on whatever adapter Dawn finds (a GPU, or Mesa's llvmpipe: `align info --backend webgpu` says which).
# Usage: bash bench/backends.sh [steps]
steps=3
source "$(dirname "$0")/lib.sh"
echo "machine: $(machine) · $(date -u +%F)"
node --import tsx src/cli.ts info --backend webgpu 2>/dev/null | grep -E 'adapter|limits' || echo "webgpu: no adapter (align info --backend webgpu says why)"
bench --backend wasm --workers 1
bench --backend wasm
bench --backend webgpu 2>/dev/null || echo '{"backend":"webgpu","error":"no adapter"}'
