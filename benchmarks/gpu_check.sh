#!/usr/bin/env bash
# The device check: node_flow on one GPU against the host CPU, in one run (the image there has
# JAX with CUDA, diffrax, equinox). Run from the repository root; writes small files to $OUT:
#   gpu_sweep.json   the matrix-completion grid and the sweep of 4,096 configurations, each on
#                    the GPU and on the CPU (benchmarks/gpu_sweep.py; seconds, GPU–CPU
#                    difference, failures, the device named)
#   depth_limit_gpu_summary.json, error_vs_depth_gpu.png   with GPU_CHECK_DEPTH_LIMIT=1
# Budget: ≤ 2 min of tests, ≤ 400 s of sweeps; the compilation cache is off (a fresh machine).
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 NODE_FLOW_CACHE_DIR=off
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import jax, diffrax, equinox; print('jax', jax.__version__, 'diffrax', diffrax.__version__, 'equinox', equinox.__version__, jax.devices())"
echo "== tests on the GPU (float64; runtime type checks off: no beartype there)"
timeout 100 python3 -m pytest -q -o addopts="" -p no:cacheprovider -x \
    tests/test_kernels.py tests/test_sweep.py 2>&1 | tail -4
echo "== matrix-completion grid and ${GPU_CHECK_CONFIGS:-4096} configurations: GPU against CPU"
start=$(date +%s)
timeout 400 python3 benchmarks/gpu_sweep.py --out "$OUT" --configs "${GPU_CHECK_CONFIGS:-4096}" \
    --seeds "${GPU_CHECK_SEEDS:-4}" 2>&1 \
    | grep -v "node_flow.sweep" | tail -20
echo "wall $(( $(date +%s) - start )) s"
if [ "${GPU_CHECK_DEPTH_LIMIT:-0}" = 1 ]; then
    echo "== depth-limit study on the GPU"
    start=$(date +%s)
    timeout 300 python3 experiments/depth_limit.py --out /tmp/dl 2>&1 | tr '\r' '\n' | grep -v '^depth-limit |' | tail -14
    echo "wall $(( $(date +%s) - start )) s"
    cp /tmp/dl/summary.json "$OUT/depth_limit_gpu_summary.json" 2>/dev/null
    cp /tmp/dl/error_vs_depth.png "$OUT/error_vs_depth_gpu.png" 2>/dev/null
fi
