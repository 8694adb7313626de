#!/usr/bin/env bash
# The device check: node_flow on a GPU (the image there has JAX with CUDA, diffrax, equinox).
# Run from the repository root; writes a few small files to $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import jax, diffrax, equinox; print('jax', jax.__version__, 'diffrax', diffrax.__version__, 'equinox', equinox.__version__, jax.devices())"
echo "== tests on the GPU (float64; runtime type checks off: no beartype there)"
timeout 240 python3 -m pytest -q -o addopts="" -p no:cacheprovider -x \
    tests/test_kernels.py tests/test_linear.py tests/test_sweep.py 2>&1 | tail -4
echo "== depth-limit study on the GPU"
start=$(date +%s)
timeout 300 python3 experiments/depth_limit.py --out /tmp/dl 2>&1 | tr '\r' '\n' | grep -v '^depth-limit |' | tail -14
echo "wall $(( $(date +%s) - start )) s"
cp /tmp/dl/summary.json "$OUT/depth_limit_gpu_summary.json" 2>/dev/null
cp /tmp/dl/error_vs_depth.png "$OUT/error_vs_depth_gpu.png" 2>/dev/null
