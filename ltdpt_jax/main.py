r"""Entry point: train or evaluate LT-DPT from one ml_collections config file.

  python -m ltdpt_jax.main --config=configs/places.py --workdir=runs/places_lt
  python -m ltdpt_jax.main --config=configs/demo.py --workdir=runs/demo --mode=eval

Rerunning the same command resumes from the latest checkpoint. Bad input is one line and an
exit code (`cli.EXIT_*`). Multi-host: LTDPT_DISTRIBUTED=1, or LTDPT_COORDINATOR,
LTDPT_NUM_PROCESSES and LTDPT_PROCESS_ID, on every host (`cli.maybe_initialize_distributed`).
"""

from __future__ import annotations

import sys

import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from ltdpt_jax import cli
from ltdpt_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (configs/*.py), optionally `file.py:arg`.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train (resumes when the workdir has a checkpoint) or eval.')
_CHECKPOINT_STEP = flags.DEFINE_integer(
    'checkpoint_step', None, 'With --mode=eval: the checkpoint step to evaluate (default latest).')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Resume (or evaluate) although the config or the backbone file '
    'differs from the one stored with the checkpoint; the change is recorded in the workdir.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  cli.start(argv)
  config = cli.load_config(_CONFIG)
  try:
    cli.validate_config(config, num_devices=jax.device_count(),
                        num_processes=jax.process_count())
  except ValueError as e:
    cli.fail(f'invalid config: {e}', cli.EXIT_BAD_INPUT)

  def body():
    if _MODE.value == 'train':
      result = train.train_and_evaluate(config, _WORKDIR.value,
                                        allow_config_change=_ALLOW_CONFIG_CHANGE.value)
      if 'stopped_at' in result:
        sys.exit(cli.EXIT_STOPPED)
    else:
      train.evaluate_checkpoint(config, _WORKDIR.value, step=_CHECKPOINT_STEP.value,
                                allow_config_change=_ALLOW_CONFIG_CHANGE.value)

  cli.run_guarded(body, _WORKDIR.value)


def run():
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
