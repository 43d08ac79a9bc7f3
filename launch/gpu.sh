#!/usr/bin/env bash
# Train LT-DPT on NVIDIA GPUs: one machine (all its GPUs), several machines, or a Slurm job.
#
# One machine:
#   bash launch/gpu.sh --config=configs/places.py --workdir=runs/places_lt
# Several machines: the same line on each, PROCESS_ID = 0 .. NUM_PROCESSES-1, COORDINATOR = host:port
# of process 0; the workdir on a file system every machine sees (NFS, Lustre) or gs://:
#   COORDINATOR=10.0.0.1:12355 NUM_PROCESSES=2 PROCESS_ID=0 bash launch/gpu.sh --config=... --workdir=/shared/run
# Slurm (one task per node; JAX reads SLURM_* inside srun tasks, so no COORDINATOR):
#   LTDPT_DISTRIBUTED=1 srun --nodes=2 --ntasks-per-node=1 bash launch/gpu.sh --config=... --workdir=/shared/run
# Print what it would do (venv, pip, the final command) and do none of it:
#   DRY_RUN=1 bash launch/gpu.sh ...      (or --dry_run as the first argument)
#
# The venv ($VENV, default .venv; `ensure_venv` of launch/venv.sh) is (re)installed whenever its
# stamp ($VENV/.ltdpt_stamp) does not hold the sha256 of requirements.txt + pyproject.toml + the
# jax requirement, in one resolver call:
#   pip install -r requirements.txt "jax[$JAX_EXTRA]>=0.10,<0.13"
# JAX_EXTRA: cuda13 (default, what the JAX installation guide lists first; CUDA 13 wheels need an
# NVIDIA driver >= 580) or cuda12 (driver >= 525). CUDA itself comes in the wheels. PYTHON picks the
# interpreter of the venv (>= 3.11, e.g. PYTHON=python3.12). Creating the venv holds a flock on
# $VENV.lock: nodes sharing a file system that start at once install it once.
#
# With COORDINATOR set, every process calls jax.distributed.initialize(COORDINATOR, NUM_PROCESSES,
# PROCESS_ID[, LOCAL_DEVICE_IDS]) and reads its own shard of the data; LOCAL_DEVICE_IDS=0,1 gives a
# process only some GPUs (several processes per machine). LTDPT_DISTRIBUTED=1 without COORDINATOR
# lets JAX detect the cluster (Slurm, Open MPI, Cloud TPU).
#
# GPU memory: nothing is set here, so JAX preallocates 75% of each GPU's memory and may grow beyond
# it. To change that export XLA_CLIENT_MEM_FRACTION=.90 (older JAX: XLA_PYTHON_CLIENT_MEM_FRACTION)
# or XLA_PYTHON_CLIENT_PREALLOCATE=false (allocate on demand; more fragmentation) before the call.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=${DRY_RUN:-0}
if [[ "${1:-}" == --dry_run || "${1:-}" == --dry-run ]]; then
  DRY_RUN=1
  shift
fi
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
JAX_EXTRA=${JAX_EXTRA:-cuda13}
JAX_REQ="jax[$JAX_EXTRA]>=0.10,<0.13"

ME=gpu.sh
# shellcheck source=launch/venv.sh
source launch/venv.sh  # die, show, run, ensure_venv

[[ "$JAX_EXTRA" =~ ^[a-z0-9_-]+$ ]] || die "JAX_EXTRA=$JAX_EXTRA: expected cuda13 or cuda12"
ensure_venv "$VENV" "$PYTHON" "$JAX_REQ"

envs=()
if [[ -n "${COORDINATOR:-}" ]]; then
  [[ -n "${NUM_PROCESSES:-}" && -n "${PROCESS_ID:-}" ]] ||
    die "COORDINATOR=$COORDINATOR needs NUM_PROCESSES and PROCESS_ID (0 .. NUM_PROCESSES-1) too"
  envs+=(LTDPT_COORDINATOR="$COORDINATOR" LTDPT_NUM_PROCESSES="$NUM_PROCESSES" LTDPT_PROCESS_ID="$PROCESS_ID")
  [[ -z "${LOCAL_DEVICE_IDS:-}" ]] || envs+=(LTDPT_LOCAL_DEVICE_IDS="$LOCAL_DEVICE_IDS")
fi
if [[ "$DRY_RUN" == 1 ]]; then
  show env ${envs[@]+"${envs[@]}"} "$VENV/bin/python" -m ltdpt_jax.main "$@"
  exit 0
fi
exec env ${envs[@]+"${envs[@]}"} "$VENV/bin/python" -m ltdpt_jax.main "$@"
