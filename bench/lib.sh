# bench/lib.sh, sourced by bench/dpo.sh and bench/backends.sh: the standard pair set (~128 prompt + ~128 completion
# tokens), `bench` = align bench dpo on it (tiny-bench Mistral, 4 pairs a step unless $batch_pairs says, two untimed warm-up steps: each
# worker thread warms up its own wasm heap and JIT in them), and `machine` = what makes figures comparable.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
steps=${1:-$steps}
mkdir -p bench/out
[ -f bench/out/pairs-128.jsonl ] || npx tsx bench/make-pairs.ts bench/out/pairs-128.jsonl 64
bench() { node --import tsx src/cli.ts bench dpo --model preset:tiny-bench --pairs bench/out/pairs-128.jsonl --batch-pairs "${batch_pairs:-4}" --steps "$steps" --warmup 2 --json "$@"; }
machine() { echo "$(lscpu | sed -n 's/^Model name: *//p' | head -1) · AVX-512 $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no) · $(nproc) cores"; }
