r"""Entry point: train or evaluate LT-DPT from one ml_collections config file.

  python -m ltdpt_jax.main --config=configs/places.py --workdir=runs/places_lt
  python -m ltdpt_jax.main --config=configs/demo.py --workdir=runs/demo --config.train.epochs=4
  python -m ltdpt_jax.main --config=configs/demo.py --workdir=runs/demo --mode=eval

Restarting the same command in the same workdir resumes from the latest checkpoint. Unknown config
keys (`--config.model.no_such_key=1`) and invalid values fail before any work is done, naming the
key (exit code 2). Bad inputs found while setting up (a tfds dataset that is not prepared, a
backbone checkpoint of another architecture, no checkpoint to evaluate) print one line naming
what is wrong and how to fix it (exit code 2; `--verbosity=1` adds the traceback); a diverging
run (NaN/inf) stops with one line and exit code 3, its last checkpoint intact. Multi-host: set LTDPT_DISTRIBUTED=1 (Cloud TPU VM slices, SLURM) or LTDPT_COORDINATOR,
LTDPT_NUM_PROCESSES, LTDPT_PROCESS_ID (any cluster) and run the same command on every host; see
launch/.
"""

from __future__ import annotations

import logging as pylogging
import os
import re
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


class _QuietLibraries:
  """Drops INFO/DEBUG log records of Orbax and grain (dozens per checkpoint); keeps warnings."""

  def filter(self, record) -> bool:
    noisy = '/orbax/' in record.pathname or '/grain/' in record.pathname
    if noisy and 'did not provide metrics' in str(record.msg):
      return False  # checkpoints between evaluations have no accuracy, by design
    return not (noisy and record.levelno < pylogging.WARNING)


def _config_overrides(argv) -> list[str]:
  return [a[2:].split('=', 1)[0] for a in argv if a.startswith('--config.')]


def _parse_flags(argv):
  """absl's flag parsing, with one clear line for a config key that does not exist."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f'Error: {e}\nPass --helpfull to see the flags.', file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:
    # ml_collections raises these, with a traceback wall, for `--config.model.no_such=1`.
    detail = str(e.args[0] if e.args else e).replace('\\n', '\n').replace("\\'", "'")
    name = re.search(r"'([A-Za-z0-9_]+)'", detail)
    guess = re.search(r'Did you mean "([^"]+)"', detail)
    overrides = _config_overrides(argv)
    bad = [o for o in overrides if name and name.group(1) in o.split('.')[1:]]
    key = bad[0] if bad else ', '.join(overrides) or '?'
    field = ''
    if name:
      hint = f'; did you mean {guess.group(1)!r}?' if guess else ''
      field = f' (no field {name.group(1)!r}{hint})'
    print(f'Error: unknown config key --{key}{field}. The accepted keys are the fields of '
          'ltdpt_jax/config_lib.py base_config() and of the --config file.', file=sys.stderr)
    sys.exit(2)


def _fail(message: str, code: int):
  logging.debug('Traceback of the error below:', exc_info=True)
  print(f'Error: {message}', file=sys.stderr)
  sys.exit(code)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  maybe_initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import config_lib  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import train  # pylint: disable=g-import-not-at-top

  try:
    config = _CONFIG.value
    config.model  # pylint: disable=pointless-statement  (a failed load raises on first access)
  except OSError as e:
    _fail(f'cannot load --config: {e}', 2)
  try:
    config_lib.validate(config, num_devices=jax.device_count(),
                        num_processes=jax.process_count())
  except ValueError as e:
    _fail(f'invalid config: {e}', 2)
  try:
    if _MODE.value == 'train':
      train.train_and_evaluate(config, _WORKDIR.value)
    else:
      train.evaluate_checkpoint(config, _WORKDIR.value, step=_CHECKPOINT_STEP.value)
  except train.SetupError as e:
    _fail(str(e), 2)
  except FloatingPointError as e:
    _fail(str(e), 3)


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
