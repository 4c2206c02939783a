#!/usr/bin/env bash
# bench/gpu-check.sh: the one script to run on a machine with a GPU (after `npm ci`): which adapter Dawn finds,
# the webgpu tests on it (ALIGN_REQUIRE_WEBGPU=1: no adapter is a failure, not a skip), and the backends bench.
# Its output is what README's "a hardware GPU" row needs. Usage: bash bench/gpu-check.sh [steps]
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
ls /usr/share/vulkan/icd.d/ /etc/vulkan/icd.d/ 2>/dev/null | tr '\n' ' '; echo
node --import tsx src/cli.ts info --backend webgpu --json 2>&1 | grep -v '^Warning: '
ALIGN_REQUIRE_WEBGPU=1 node --import tsx node_modules/uvu/bin.js test 'webgpu\.test\.ts$' --color false 2>&1 | grep -Ev '^Warning: ' | tail -15
bash bench/backends.sh "${1:-3}"
