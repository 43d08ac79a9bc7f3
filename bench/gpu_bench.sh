#!/usr/bin/env bash
# Benchmark LT-DPT on one NVIDIA GPU (H200 / H100): configs/cifar100_lt.py = ViT-B/16 at 224 px,
# batch 128, n_f = n_b = 10 prompts, 6 BR blocks; random frozen backbone (no download) and synthetic
# data of 224 px and 100 classes (no dataset), in float32 and bfloat16. For each dtype it writes
# $OUT_DIR/cifar100_lt_b16_<dtype>.json (+ .log with the table), plus $OUT_DIR/gpu.txt.
#
#   bash bench/gpu_bench.sh                    # first run creates .venv-gpu: jax[cuda12] + requirements
#   PYTHON=python3 bash bench/gpu_bench.sh     # use an interpreter that already has CUDA jax + requirements
#   WHEELS=/path/to/wheels bash bench/gpu_bench.sh   # offline: install from local wheels only
#   STEPS=50 WARMUP=5 REPEATS=3 WORKERS=14 DTYPES="bfloat16" OUT_DIR=/tmp/res bash bench/gpu_bench.sh
#
# Reading the numbers: perf-anchors.md puts ViT-B/16 fwd + activation-only bwd at ~79 GFLOP/image
# (P = 20); H200 dense bf16 peak 989.4 TFLOP/s => 12.5k img/s at 100% MFU, ~2k img/s for naive JAX
# (16% MFU). The 'input pipeline' row generates synthetic 224-px images on the CPU (about 2.5 ms per
# image per core) plus RandomResizedCrop/flip, so it measures the host, not a dataset read.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-bench/results}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-5}
REPEATS=${REPEATS:-3}
DTYPES=${DTYPES:-"float32 bfloat16"}

if [[ -z "${PYTHON:-}" ]]; then
  VENV=${VENV:-.venv-gpu}
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
    if [[ -n "${WHEELS:-}" ]]; then
      pip_src=(--no-index --find-links "$WHEELS")
    else
      pip_src=()
      "$VENV/bin/pip" install -q -U pip
    fi
    "$VENV/bin/pip" install -q ${pip_src[@]+"${pip_src[@]}"} -U "jax[cuda12]"
    "$VENV/bin/pip" install -q ${pip_src[@]+"${pip_src[@]}"} -r requirements.txt
  fi
  PYTHON="$VENV/bin/python"
fi

# Fail early, with a clear message, when JAX sees no GPU or a package is missing.
"$PYTHON" - <<'PY'
import importlib.util, sys
missing = [m for m in ('jax', 'flax', 'optax', 'grain', 'ml_collections', 'orbax.checkpoint', 'absl')
           if importlib.util.find_spec(m.split('.')[0]) is None]
if missing:
  sys.exit(f'Missing Python packages: {missing}; pip install -r requirements.txt')
import jax
devices = jax.devices()
print('JAX', jax.__version__, 'devices:', devices, flush=True)
if devices[0].platform != 'gpu':
  sys.exit('JAX sees no GPU: install jax[cuda12] (or jax[cuda13]) matching the driver.')
PY

mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv \
  > "$OUT_DIR/gpu.txt" 2>&1 || true
cat "$OUT_DIR/gpu.txt"
# Let XLA take most of the GPU memory without pre-allocating all of it (peak memory is then the
# allocator's real peak, reported as memory.peak_bytes_in_use).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export PYTHONUNBUFFERED=1

args=(--config=configs/cifar100_lt.py --synthetic --config.model.checkpoint=
      --config.data.image_size=224 --config.data.batch_size=128
      --steps="$STEPS" --warmup="$WARMUP" --repeats="$REPEATS")
if [[ -n "${WORKERS:-}" ]]; then
  args+=(--workers="$WORKERS")
fi
if [[ -n "${PEAK_TFLOPS:-}" ]]; then
  args+=(--peak_tflops="$PEAK_TFLOPS")
fi

for dtype in $DTYPES; do
  echo "=== ViT-B/16, 224 px, batch 128, $dtype ==="
  "$PYTHON" -m ltdpt_jax.bench "${args[@]}" --config.model.dtype="$dtype" \
    --out="$OUT_DIR/cifar100_lt_b16_${dtype}.json" 2>&1 | tee "$OUT_DIR/cifar100_lt_b16_${dtype}.log"
done
echo "Results: $OUT_DIR/cifar100_lt_b16_*.json"
