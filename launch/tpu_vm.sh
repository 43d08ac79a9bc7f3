#!/usr/bin/env bash
# Train LT-DPT on a Cloud TPU VM slice (one or many hosts): create the VM, copy this repository to
# every worker, install, run the same command on all workers, copy the results back.
#
#   NAME=ltdpt ZONE=us-central2-b TYPE=v4-32 bash launch/tpu_vm.sh \
#       --config=configs/places.py --workdir=gs://BUCKET/runs/places_lt \
#       --config.data.data_dir=gs://BUCKET/tensorflow_datasets
#
# Environment: NAME (TPU name), ZONE, TYPE (accelerator type, e.g. v5litepod-8, v4-32),
# VERSION (TPU software version, default tpu-ubuntu2204-base), CREATE=0 to reuse an existing VM,
# DELETE=1 to delete it afterwards, FETCH=local/dir to copy a non-gs:// workdir back.
# Every worker runs `python -m ltdpt_jax.main` with LTDPT_DISTRIBUTED=1, which calls
# jax.distributed.initialize() (the TPU metadata gives coordinator and process ids); each
# process reads its own shard of the data. Use gs:// paths for --workdir and the tfds data_dir
# so that every host sees the same files.
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}" "${TYPE:?set TYPE}"
VERSION=${VERSION:-tpu-ubuntu2204-base}
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
if [[ "${CREATE:-1}" == 1 ]]; then
  gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$TYPE" \
      --version="$VERSION"
fi
tar -C "$REPO_DIR" --exclude=.git --exclude=.venv --exclude=runs -czf /tmp/ltdpt_jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/ltdpt_jax.tgz "$NAME":~/ --zone="$ZONE" --worker=all
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command "
  set -e
  mkdir -p ~/ltdpt_jax && tar -xzf ~/ltdpt_jax.tgz -C ~/ltdpt_jax && cd ~/ltdpt_jax
  [ -d .venv ] || python3 -m venv .venv
  . .venv/bin/activate
  pip install -q -U pip && pip install -q -U 'jax[tpu]' && pip install -q -r requirements.txt
  LTDPT_DISTRIBUTED=1 python -m ltdpt_jax.main $ARGS
"
if [[ -n "${FETCH:-}" ]]; then
  gcloud compute tpus tpu-vm scp --recurse "$NAME":~/ltdpt_jax/runs "$FETCH" --zone="$ZONE" --worker=0
fi
if [[ "${DELETE:-0}" == 1 ]]; then
  gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet
fi
