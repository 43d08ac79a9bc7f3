#!/usr/bin/env bash
# Train LT-DPT on NVIDIA GPUs: one machine (all its GPUs), or several machines.
#
# One machine:
#   bash launch/gpu.sh --config=configs/places.py --workdir=runs/places_lt
# Several machines (run the same line on each, with its own PROCESS_ID = 0..NUM_PROCESSES-1):
#   COORDINATOR=10.0.0.1:12355 NUM_PROCESSES=2 PROCESS_ID=0 bash launch/gpu.sh --config=... --workdir=/shared/fs/run
#
# Creates .venv on first use with jax[cuda12] and requirements.txt. With COORDINATOR set, every
# process calls jax.distributed.initialize(COORDINATOR, NUM_PROCESSES, PROCESS_ID) and reads its
# own shard of the data; the workdir must be on a file system all machines see (or gs://).
# SLURM users: leave COORDINATOR unset and set LTDPT_DISTRIBUTED=1; JAX reads SLURM's variables.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -d .venv ]]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -U "jax[cuda12]"
  .venv/bin/pip install -q -r requirements.txt
fi
# Let XLA use most of the GPU memory without pre-allocating all of it up front.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
if [[ -n "${COORDINATOR:-}" ]]; then
  export LTDPT_COORDINATOR="$COORDINATOR" LTDPT_NUM_PROCESSES="${NUM_PROCESSES:?}" \
         LTDPT_PROCESS_ID="${PROCESS_ID:?}"
fi
exec .venv/bin/python -m ltdpt_jax.main "$@"
