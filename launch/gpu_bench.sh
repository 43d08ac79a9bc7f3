#!/usr/bin/env bash
# Benchmark LT-DPT on one NVIDIA GPU (H200 / H100): configs/cifar100_lt.py = ViT-B/16 at 224 px,
# n_f = n_b = 10 prompts, 6 BR blocks; random frozen backbone (no download) and synthetic data of
# 224 px and 100 classes (no dataset). Cases: batch 128 and 256 x float32 / bfloat16 x attention 'xla'
# / 'cudnn' (cuDNN fused attention needs bf16, so float32 runs 'xla' only: 8 cases, 2 skipped); each
# times the train step alone, the synthetic input pipeline alone and the two end to end
# (`python -m ltdpt_jax.bench --parts=train,pipeline,end_to_end`). The synthetic stand-in
# generates CIFAR's 32 px images, and by default the training crop runs on the GPU
# (config.data.crop_on_device: the workers ship 32 px images and crop numbers; CROP=host
# crops and upsamples to 224 px in the workers instead, with Pillow, as on a CPU). Each case writes
# $OUT_DIR/cifar100_lt_b16_b<batch>_<dtype>_<attention>.json (+ .log), runs on its own under
# `timeout $CASE_TIMEOUT` (a failed or hung case does not stop the next), and the script ends with
# one table: train images/s, ms/step, model MFU against the dense bf16 peak, end-to-end images/s and
# MFU, the allocator's peak GiB and the compiled step's GiB; it exits non-zero when any case failed.
# $OUT_DIR/gpu.txt records the GPU. Budget: a compile (~30-60 s) plus ~10 s of timing per case, so
# the six cases that run take about 4-7 minutes on an H200 -- an estimate: the script has not run on
# a GPU yet.
#
#   bash launch/gpu_bench.sh                    # first run creates .venv-gpu: requirements + jax[cuda13]
#   JAX_EXTRA=cuda12 bash launch/gpu_bench.sh   # NVIDIA driver < 580 (cuda13 needs >= 580, cuda12 >= 525)
#   PYTHON=python3 bash launch/gpu_bench.sh     # use an interpreter that already has CUDA jax + requirements
#   WHEELS=/path/to/wheels bash launch/gpu_bench.sh   # offline: install from local wheels only
#   STEPS=50 WARMUP=5 REPEATS=3 WORKERS=14 DTYPES="bfloat16" OUT_DIR=/tmp/res bash launch/gpu_bench.sh
#   BATCHES="256" ATTENTIONS="cudnn" CASE_TIMEOUT=300 bash launch/gpu_bench.sh   # a subset of the cases
#   CROP=host bash launch/gpu_bench.sh          # the training crop in the input workers
#   DRY_RUN=1 bash launch/gpu_bench.sh          # (or --dry_run) print the commands, run none
#   JAX_COMPILATION_CACHE_DIR=/tmp/jc bash launch/gpu_bench.sh   # where compiled steps are kept
#                                              # (default .jax-cache: a rerun skips the compiles)
#
# The venv ($VENV; `ensure_venv` of launch/venv.sh, as launch/gpu.sh) is reinstalled whenever
# $VENV/.ltdpt_stamp does not hold the sha256 of requirements.txt + pyproject.toml + the jax
# requirement, in one resolver call:
# pip install -r requirements.txt "jax[$JAX_EXTRA]>=0.10,<0.13". VENV_PYTHON (default python3,
# >= 3.11) creates it. GPU memory is left to JAX's default (preallocate 75%, may grow); export
# XLA_CLIENT_MEM_FRACTION or XLA_PYTHON_CLIENT_PREALLOCATE=false to change it. The peak memory in
# the JSON is the allocator's peak in use (memory.peak_bytes_in_use), not the preallocated pool.
#
# Reading the numbers: the analytic FLOP model (ltdpt_jax/models/flops.py) puts a ViT-B/16 with 20
# prompt tokens in every block at ~79 GFLOP/image for fwd + activation-only bwd (each case's own
# count: flops.analytic_train_per_image in its JSON); H200 dense bf16 peak 989.4 TFLOP/s => 12.5k
# img/s at 100% MFU, ~2k img/s at 16% MFU. The 'input pipeline' row
# generates synthetic 32 px images on the CPU (about 0.4 ms per image per core, more than reading
# CIFAR from memory), so it measures the host, not a dataset read.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=${DRY_RUN:-0}
if [[ "${1:-}" == --dry_run || "${1:-}" == --dry-run ]]; then
  DRY_RUN=1
  shift
fi
OUT_DIR=${OUT_DIR:-runs/gpu_bench}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
REPEATS=${REPEATS:-3}
DTYPES=${DTYPES:-"float32 bfloat16"}
BATCHES=${BATCHES:-"128 256"}
ATTENTIONS=${ATTENTIONS:-"xla cudnn"}
CASE_TIMEOUT=${CASE_TIMEOUT:-150}
CROP=${CROP:-device}
JAX_EXTRA=${JAX_EXTRA:-cuda13}
JAX_REQ="jax[$JAX_EXTRA]>=0.10,<0.13"

ME=gpu_bench.sh
# shellcheck source=launch/venv.sh
source launch/venv.sh  # die, show, run, ensure_venv
[[ "$JAX_EXTRA" =~ ^[a-z0-9_-]+$ ]] || die "JAX_EXTRA=$JAX_EXTRA: expected cuda13 or cuda12"
for x in $BATCHES $CASE_TIMEOUT; do
  [[ "$x" =~ ^[1-9][0-9]*$ ]] || die "BATCHES / CASE_TIMEOUT: '$x' is not a positive integer"
done
[[ "$CROP" == device || "$CROP" == host ]] || die "CROP=$CROP: expected device or host"
for x in $DTYPES; do
  [[ "$x" == float32 || "$x" == bfloat16 ]] || die "DTYPES: '$x' is not float32 or bfloat16"
done
for x in $ATTENTIONS; do
  [[ "$x" == xla || "$x" == cudnn || "$x" == auto ]] || die "ATTENTIONS: '$x' is not xla, cudnn or auto"
done

if [[ -z "${PYTHON:-}" ]]; then
  VENV=${VENV:-.venv-gpu}
  ensure_venv "$VENV" "${VENV_PYTHON:-python3}" "$JAX_REQ" "${WHEELS:-}" VENV_PYTHON
  PYTHON="$VENV/bin/python"
fi

# Fail early, with a clear message, when JAX sees no GPU or a package is missing. A dotted name is
# checked part by part (find_spec('orbax.checkpoint') needs its parent 'orbax' to exist).
PROBE='import importlib.util as u, sys; absent = [m for m in ("jax", "flax", "optax", "grain", "ml_collections", "orbax.checkpoint", "absl") if any(u.find_spec(".".join(m.split(".")[:i + 1])) is None for i in range(m.count(".") + 1))]; absent and sys.exit(f"Missing Python packages: {absent}; pip install -r requirements.txt"); import jax; d = jax.devices(); print("JAX", jax.__version__, "devices:", d, flush=True); d[0].platform == "gpu" or sys.exit("JAX sees no GPU: install jax[cuda13] (NVIDIA driver >= 580) or jax[cuda12] (>= 525).")'
run "$PYTHON" -c "$PROBE"

run mkdir -p "$OUT_DIR"
if [[ "$DRY_RUN" == 1 ]]; then
  echo "+ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv > $OUT_DIR/gpu.txt"
else
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv \
      >"$OUT_DIR/gpu.txt" 2>&1 || true
  else
    echo "nvidia-smi not found" >"$OUT_DIR/gpu.txt"
  fi
  cat "$OUT_DIR/gpu.txt"
fi
export PYTHONUNBUFFERED=1
# JAX's persistent compilation cache: a rerun of a case (same config, same GPU and JAX) loads its
# compiled steps instead of compiling them again (~30-60 s per case).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-.jax-cache}
echo "JAX compilation cache: $JAX_COMPILATION_CACHE_DIR (JAX_COMPILATION_CACHE_DIR; reruns skip the compiles)"

args=(--config=configs/cifar100_lt.py --synthetic --config.model.checkpoint=
      --config.data.image_size=224 '--parts=train,pipeline,end_to_end'
      --steps="$STEPS" --warmup="$WARMUP" --repeats="$REPEATS")
if [[ "$CROP" == device ]]; then
  args+=(--config.data.crop_on_device=True)
fi
if [[ -n "${WORKERS:-}" ]]; then
  args+=(--workers="$WORKERS")
fi
if [[ -n "${PEAK_TFLOPS:-}" ]]; then
  args+=(--peak_tflops="$PEAK_TFLOPS")
fi

# One table row's numbers from a case's JSON ('-' where absent): train step images/s, ms/step and
# model MFU, end-to-end images/s and model MFU, the allocator's peak GiB and the compiled train
# step's GiB (arguments + outputs - aliased + temporaries).
numbers() {
  "$PYTHON" - "$1" <<'PY' 2>/dev/null || echo "- - - - - - -"
import json, sys
try:
  r = json.load(open(sys.argv[1]))
except (OSError, ValueError):
  print(' '.join('-' * 7)); sys.exit()
def get(part, key):
  v = r.get(part, {}).get(key) if isinstance(r.get(part), dict) else None
  return v if isinstance(v, (int, float)) else None
fmt = lambda v, f: '-' if v is None else format(v, f)
mem = r.get('memory', {}) if isinstance(r.get('memory'), dict) else {}
tc = mem.get('train_step_compiled')
compiled = None
if isinstance(tc, dict) and 'temp_size_in_bytes' in tc:
  compiled = (tc['argument_size_in_bytes'] + tc['output_size_in_bytes'] - tc['alias_size_in_bytes']
              + tc['temp_size_in_bytes'])
peak = mem.get('peak_bytes_in_use')
print(fmt(get('train_step', 'images_per_s'), ',.1f'), fmt(get('train_step', 'step_time_ms'), '.1f'),
      fmt(None if get('train_step', 'mfu_model') is None else 100 * get('train_step', 'mfu_model'), '.1f'),
      fmt(get('end_to_end', 'images_per_s'), ',.1f'),
      fmt(None if get('end_to_end', 'mfu_model') is None else 100 * get('end_to_end', 'mfu_model'), '.1f'),
      fmt(peak / 2**30 if isinstance(peak, (int, float)) else None, '.1f'),
      fmt(None if compiled is None else compiled / 2**30, '.1f'))
PY
}

failed=0
rows=()
start=$SECONDS
for batch in $BATCHES; do
  for dtype in $DTYPES; do
    for attention in $ATTENTIONS; do
      case_name="b${batch}_${dtype}_${attention}"
      json=$OUT_DIR/cifar100_lt_b16_${case_name}.json
      log=$OUT_DIR/cifar100_lt_b16_${case_name}.log
      if [[ "$attention" == cudnn && "$dtype" != bfloat16 ]]; then
        rows+=("$case_name|skipped (cuDNN: bf16)|- - - - - - -|-")
        continue
      fi
      echo "=== ViT-B/16, 224 px, batch $batch, $dtype, attention $attention ==="
      cmd=(timeout "$CASE_TIMEOUT" "$PYTHON" -m ltdpt_jax.bench "${args[@]}"
           --config.data.batch_size="$batch" --config.model.dtype="$dtype"
           --config.model.attention="$attention" --out="$json")
      if [[ "$DRY_RUN" == 1 ]]; then
        show rm -f "$json"
        echo "+ $(show "${cmd[@]}" | cut -c3-) 2>&1 | tee $log"
        rows+=("$case_name|dry run|- - - - - - -|$log")
        continue
      fi
      rm -f "$json"  # a failed case must not report an older run's numbers
      case_start=$SECONDS
      status=0
      "${cmd[@]}" 2>&1 | tee "$log" || status=$?
      echo "(${case_name}: $((SECONDS - case_start)) s)"
      if ((status == 0)); then
        rows+=("$case_name|ok|$(numbers "$json")|$log")
      elif ((status == 124)); then
        failed=$((failed + 1))
        rows+=("$case_name|timed out (${CASE_TIMEOUT} s)|$(numbers "$json")|$log")
      else
        failed=$((failed + 1))
        rows+=("$case_name|failed (exit $status)|$(numbers "$json")|$log")
      fi
    done
  done
done

echo
echo "LT-DPT train step, ViT-B/16 224 px, synthetic CIFAR-100-LT (100 classes, 32 px, crop on the $CROP), one GPU; MFU = model"
echo "FLOPs (analytic, no recomputation) x images/s / the dense bf16 peak (989.4 TFLOP/s H100/H200)."
printf '%-26s %-22s %11s %9s %7s %11s %7s %9s %9s  %s\n' case status 'train img/s' 'ms/step' \
  'MFU %' 'e2e img/s' 'e2e MFU' 'peak GiB' 'step GiB' log
for row in ${rows[@]+"${rows[@]}"}; do
  IFS='|' read -r case_name status values log <<<"$row"
  read -r ips ms mfu e2e e2e_mfu peak step_gib <<<"$values"
  printf '%-26s %-22s %11s %9s %7s %11s %7s %9s %9s  %s\n' "$case_name" "$status" "$ips" "$ms" \
    "$mfu" "$e2e" "$e2e_mfu" "$peak" "$step_gib" "$log"
done
echo "Results: $OUT_DIR/cifar100_lt_b16_*.json ($((SECONDS - start)) s)"
((failed == 0)) || die "$failed of the cases failed: see their logs above"
