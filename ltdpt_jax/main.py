r"""Entry point: train or evaluate LT-DPT from one ml_collections config file.

  python -m ltdpt_jax.main --config=configs/places.py --workdir=runs/places_lt
  python -m ltdpt_jax.main --config=configs/demo.py --workdir=runs/demo --config.train.epochs=4
  python -m ltdpt_jax.main --config=configs/demo.py --workdir=runs/demo --mode=eval

Restarting the same command in the same workdir resumes from the latest checkpoint. Unknown config
keys (`--config.model.no_such_key=1`) and invalid values fail before any work is done, naming the
key (exit code 2). Bad inputs found while setting up (a tfds dataset that is not prepared, a
backbone checkpoint of another architecture, no checkpoint to evaluate) print one line naming
what is wrong and how to fix it (exit code 2; `--verbosity=1` adds the traceback); a diverging
run (NaN/inf) stops with one line and exit code 3, its last checkpoint intact. An OS failure
writing the run's files (a full disk, a read-only or unwritable workdir) is one line naming the
path and the fix (exit code 2). SIGTERM and Ctrl-C save a checkpoint and stop with exit code 75
(rerun to resume); a second Ctrl-C stops at once (exit code 130). One run per workdir: a second
one is refused (exit code 2). Multi-host: set LTDPT_DISTRIBUTED=1 (Cloud TPU VM slices, SLURM)
or LTDPT_COORDINATOR, LTDPT_NUM_PROCESSES, LTDPT_PROCESS_ID (any cluster) and run the same
command on every host; see launch/.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from ltdpt_jax import cli
# The exit codes and the multi-host start-up, under the names they always had here.
from ltdpt_jax.cli import EXIT_BAD_INPUT
from ltdpt_jax.cli import EXIT_DIVERGED
from ltdpt_jax.cli import EXIT_FINISHED
from ltdpt_jax.cli import EXIT_INTERRUPTED
from ltdpt_jax.cli import EXIT_STOPPED

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
  import jax  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import config_lib  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import train  # pylint: disable=g-import-not-at-top

  config = cli.load_config(_CONFIG)
  try:
    config_lib.validate(config, num_devices=jax.device_count(),
                        num_processes=jax.process_count())
  except ValueError as e:
    cli.fail(f'invalid config: {e}', EXIT_BAD_INPUT)

  def body():
    if _MODE.value == 'train':
      result = train.train_and_evaluate(config, _WORKDIR.value,
                                        allow_config_change=_ALLOW_CONFIG_CHANGE.value)
      if 'stopped_at' in result:
        sys.exit(EXIT_STOPPED)
    else:
      train.evaluate_checkpoint(config, _WORKDIR.value, step=_CHECKPOINT_STEP.value,
                                allow_config_change=_ALLOW_CONFIG_CHANGE.value)

  cli.run_guarded(body, _WORKDIR.value)


def run():
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
