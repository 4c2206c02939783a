#!/usr/bin/env bash
# bench/dpo.sh: align's DPO step against the same step in PyTorch + OpenBLAS, side by side, on the standard set —
# the tiny-bench Mistral (vocab 32000, hidden 256, 4 layers, 8 heads / 2 KV heads, intermediate 688), pairs of
# ~128 prompt + ~128 completion tokens, 4 pairs per step. Installs Debian's python3-torch and libopenblas0-pthread
# (the strong peer: reference BLAS is ~10x slower) when missing; needs root for apt-get.
# Usage: bash bench/dpo.sh [steps]     Targets: align (default workers) pairs/s >= 1.3x PyTorch; 1 -> 2 workers >= 1.7x.
# Also printed: 1 -> 2 workers at GA 4 (8 pairs a step in 4 micro-batches), where the workers take micro-batches as they come.
# Also printed: two separate one-worker processes side by side (half the pairs each): what two cores give this step
# with nothing shared, the ceiling for the workers on this machine.
steps=5
source "$(dirname "$0")/lib.sh"
# the ceiling for the workers: two separate one-worker processes side by side, half the pairs each, nothing shared;
# their timed steps start together (--start-after: each warms up, says it is ready, and waits for the go file)
side_by_side() {
  local go=bench/out/side-go first second
  rm -f "$go" "$go".ready.*
  batch_pairs=2 bench --layout packed --workers 1 --start-after "$go" > bench/out/side-a.json & first=$!
  batch_pairs=2 bench --layout packed --workers 1 --start-after "$go" > bench/out/side-b.json & second=$!
  until [ "$(ls "$go".ready.* 2>/dev/null | wc -l)" -ge 2 ]; do
    kill -0 "$first" 2>/dev/null && kill -0 "$second" 2>/dev/null || { echo "a side-by-side bench process ended before its timed steps" >&2; exit 1; }
    sleep 0.05
  done
  touch "$go"
  wait "$first"
  wait "$second"
  rm -f "$go" "$go".ready.*
  node -e 'const [a, b] = process.argv.slice(1).map((f) => JSON.parse(require("fs").readFileSync(f, "utf8"))); console.log(JSON.stringify({ bench: "dpo", side_by_side: 2, pairs_per_second: +(a.pairs_per_second + b.pairs_per_second).toFixed(3) }))' bench/out/side-a.json bench/out/side-b.json
}
# default workers, each step followed by the same micro-batches on one worker (--paired: a second policy on the main
# thread, what --workers 1 runs for the same recipe; its weights must stay bit-identical), then by the step's pairs as
# one micro-batch on one worker (a third: the best one worker does), each policy two steps in a row with the second
# timed (the first warms the threads back up), in two runs: this VM's speed drifts by 10-40 % over minutes, and steps
# next to each other in time give the 1 -> N scaling without the drift
# — what align train runs: default workers (auto: every core); the first run profiled (matMul efficiency in the step);
# the ceiling is measured between the two runs, so that it and their mean come from the same minutes
align=()
align+=("$(bench --layout packed --paired --profile)")
echo "${align[-1]}"
side=$(side_by_side)
echo "$side"
# the second run also times the same workers with the LM head's hand-off off (--compare-handoff: no replica computes
# head blocks for another, src/train/handoff.ts), a fourth policy in the same rounds
align+=("$(bench --layout packed --paired --compare-handoff)")
echo "${align[-1]}"
concat=$(bench --layout concatenated)                 # TRL's layout, 2n rows: the packing's saving
echo "$concat"
# the scaling at a recipe's gradient accumulation: 8 pairs a step in 4 micro-batches of 2 (the standard set's
# micro-batch), 2 a worker, taken as they come — the target's step above has the fewest micro-batches to spread
ga=$(batch_pairs=8 bench --layout packed --paired --micro-batches 4)
echo "$ga"
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
node -e '
const [a1, a2, side, c, g, t] = process.argv.slice(1).map((s) => JSON.parse(s))
const mean = (k) => (a1[k] + a2[k]) / 2
const [a, o, w] = [mean("pairs_per_second"), mean("one_worker_pairs_per_second"), mean("one_micro_batch_pairs_per_second")]
if (!a1.one_worker_same_weights || !a2.one_worker_same_weights || !g.one_worker_same_weights || !a2.no_handoff_same_weights) throw new Error("the workers and one worker (or the workers without the hand-off) trained different weights")
const r = (x) => (x / t.pairs_per_second).toFixed(2)
console.log(`align/pytorch pairs/s: ${r(a)}x packed with ${a1.workers} workers, ${r(o)}x with 1, ${r(c.pairs_per_second)}x concatenated (${a1.backend} ${a.toFixed(3)} / ${o.toFixed(3)} / ${c.pairs_per_second} vs ${t.pairs_per_second}); workers 1 -> ${a1.workers}: ${(a / o).toFixed(2)}x, same micro-batches, same weights (runs ${a1.workers_scaling}x, ${a2.workers_scaling}x), ${(a / w).toFixed(2)}x against one worker with the step as one micro-batch (${w.toFixed(3)} pairs/s; runs ${a1.workers_scaling_vs_one_micro_batch}x, ${a2.workers_scaling_vs_one_micro_batch}x); two 1-worker processes side by side ${side.pairs_per_second} pairs/s = ${(side.pairs_per_second / o).toFixed(2)}x one worker (what two cores give with nothing shared), ${a1.workers} workers ${(a / side.pairs_per_second).toFixed(2)} of that; at GA ${g.micro_batches} (${g.batch_pairs} pairs a step) workers 1 -> ${g.workers}: ${g.workers_scaling}x (${g.pairs_per_second} / ${g.one_worker_pairs_per_second} pairs/s); LM head hand-off (second run): ${a2.handoff_speedup}x the same workers without it (${a2.pairs_per_second} / ${a2.no_handoff_pairs_per_second} pairs/s, head blocks taken per step ${a2.head_blocks_taken.join(" ")}; 1 -> ${a2.workers} without it ${a2.workers_scaling_no_handoff}x); matMul in step ${a1.matmul_gflops_in_step} GFLOP/s = ${a1.matmul_efficiency} of plain; on ${new Date().toISOString().slice(0, 10)}`)
' "${align[0]}" "${align[1]}" "$side" "$concat" "$ga" "$torch"
