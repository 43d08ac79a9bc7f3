r"""Entry point: train or evaluate LT-DPT from one ml_collections config file.

  python -m ltdpt_jax.main --config=configs/places.py --workdir=runs/places_lt
  python -m ltdpt_jax.main --config=configs/demo.py --workdir=runs/demo --config.train.epochs=4
  python -m ltdpt_jax.main --config=configs/demo.py --workdir=runs/demo --mode=eval

Restarting the same command in the same workdir resumes from the latest checkpoint. Unknown config
keys (`--config.model.no_such_key=1`) and invalid values fail before any work is done, naming the
key. Multi-host: set LTDPT_DISTRIBUTED=1 (Cloud TPU VM slices, SLURM) or LTDPT_COORDINATOR,
LTDPT_NUM_PROCESSES, LTDPT_PROCESS_ID (any cluster) and run the same command on every host; see
launch/.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (configs/*.py), optionally `file.py:arg`.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train (resumes when the workdir has a checkpoint) or eval.')
_CHECKPOINT_STEP = flags.DEFINE_integer(
    'checkpoint_step', None, 'With --mode=eval: the checkpoint step to evaluate (default latest).')
flags.mark_flags_as_required(['config', 'workdir'])


def maybe_initialize_distributed():
  """Calls jax.distributed.initialize() on multi-host runs (never on a plain single host)."""
  import jax  # pylint: disable=g-import-not-at-top
  coordinator = os.environ.get('LTDPT_COORDINATOR')
  if coordinator:
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ['LTDPT_NUM_PROCESSES']),
        process_id=int(os.environ['LTDPT_PROCESS_ID']),
        local_device_ids=(
            [int(i) for i in os.environ['LTDPT_LOCAL_DEVICE_IDS'].split(',')]
            if os.environ.get('LTDPT_LOCAL_DEVICE_IDS') else None))
  elif os.environ.get('LTDPT_DISTRIBUTED', '') not in ('', '0'):
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  maybe_initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import config_lib  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import train  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  try:
    config_lib.validate(config, num_devices=jax.device_count(),
                        num_processes=jax.process_count())
  except ValueError as e:
    logging.error('%s', e)
    print(f'Invalid config: {e}', file=sys.stderr)
    sys.exit(2)
  if _MODE.value == 'train':
    train.train_and_evaluate(config, _WORKDIR.value)
  else:
    train.evaluate_checkpoint(config, _WORKDIR.value, step=_CHECKPOINT_STEP.value)


def run():
  app.run(main)


if __name__ == '__main__':
  run()
