#!/usr/bin/env bash
# bench/backends.sh: the same DPO step (bench/dpo.sh's set: tiny-bench Mistral, ~128 + ~128 token pairs, 4 pairs a
# step, two warm-up steps) on each backend this machine can run, in one run: wasm with one worker and with the default workers, and
# webgpu on whatever adapter Dawn finds (a GPU, or Mesa's llvmpipe: `align info --backend webgpu` says which).
# Usage: bash bench/backends.sh [steps]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-3}
mkdir -p bench/out
[ -f bench/out/pairs-128.jsonl ] || npx tsx bench/make-pairs.ts bench/out/pairs-128.jsonl 64
bench() { node --import tsx src/cli.ts bench dpo --model preset:tiny-bench --pairs bench/out/pairs-128.jsonl --batch-pairs 4 --steps "$steps" --warmup 2 --json "$@"; }
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1) · AVX-512 $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no) · $(nproc) cores · $(date -u +%F)"
node --import tsx src/cli.ts info --backend webgpu 2>/dev/null | grep -E 'adapter|limits' || echo "webgpu: no adapter (align info --backend webgpu says why)"
bench --backend wasm --workers 1
bench --backend wasm
bench --backend webgpu 2>/dev/null || echo '{"backend":"webgpu","error":"no adapter"}'
