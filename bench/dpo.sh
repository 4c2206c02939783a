#!/usr/bin/env bash
# bench/dpo.sh: align's DPO step against the same step in PyTorch + OpenBLAS, side by side, on the standard set —
# the tiny-bench Mistral (vocab 32000, hidden 256, 4 layers, 8 heads / 2 KV heads, intermediate 688), pairs of
# ~128 prompt + ~128 completion tokens, 4 pairs per step. Installs Debian's python3-torch and libopenblas0-pthread
# (the strong peer: reference BLAS is ~10x slower) when missing; needs root for apt-get.
# Usage: bash bench/dpo.sh [steps]     Targets: align (default workers) pairs/s >= 1.3x PyTorch; 1 -> 2 workers >= 1.7x.
steps=5
source "$(dirname "$0")/lib.sh"
align=$(bench --layout packed)                        # what align train runs: default workers (auto: every core)
echo "$align"
one=$(bench --layout packed --workers 1 --profile)    # one worker: the scaling, and matMul efficiency in the step
echo "$one"
concat=$(bench --layout concatenated)                 # TRL's layout, 2n rows: the packing's saving
echo "$concat"
if ! /usr/bin/python3 -c 'import torch' 2>/dev/null || ! dpkg -s libopenblas0-pthread >/dev/null 2>&1; then
  echo "installing python3-torch + libopenblas0-pthread (apt-get)" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch libopenblas0-pthread >&2
fi
# what makes figures from different machines comparable: the CPU, its SIMD, the cores, the BLAS kernels PyTorch runs
blas=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 -c "import ctypes; l = ctypes.CDLL('libopenblas.so.0'); l.openblas_get_corename.restype = ctypes.c_char_p; print(l.openblas_get_corename().decode())" 2>/dev/null || echo unknown)
echo "machine: $(machine) · OpenBLAS core ${blas} · align wasm, one thread per worker"
# this machine sets OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE for old numpy builds; they slow a current OpenBLAS
torch=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 bench/dpo_torch.py bench/out/pairs-128.jsonl 4 "$steps")
echo "$torch"
node -e 'const [a, o, c, t] = process.argv.slice(1).map((s) => JSON.parse(s)); const r = (x) => (x.pairs_per_second / t.pairs_per_second).toFixed(2); console.log(`align/pytorch pairs/s: ${r(a)}x packed with ${a.workers} workers, ${r(o)}x with 1, ${r(c)}x concatenated (${a.backend} ${a.pairs_per_second} / ${o.pairs_per_second} / ${c.pairs_per_second} vs ${t.pairs_per_second}); workers 1 -> ${a.workers}: ${(a.pairs_per_second / o.pairs_per_second).toFixed(2)}x; matMul in step ${o.matmul_gflops_in_step} GFLOP/s = ${o.matmul_efficiency} of plain; on ${new Date().toISOString().slice(0, 10)}`)' "$align" "$one" "$concat" "$torch"
