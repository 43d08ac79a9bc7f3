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

import logging as pylogging
import os
import re
import sys
import threading

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
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Resume (or evaluate) although the config or the backbone file '
    'differs from the one stored with the checkpoint; the change is recorded in the workdir.')
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
  """Drops INFO/DEBUG log records of Orbax and grain (dozens per checkpoint), keeping warnings,
  and the error records (with tracebacks) that background writers log about an OS failure:
  `main` reports that failure in one line."""

  def filter(self, record) -> bool:
    noisy = '/orbax/' in record.pathname or '/grain/' in record.pathname
    if noisy and 'did not provide metrics' in str(record.msg):
      return False  # checkpoints between evaluations have no accuracy, by design
    if noisy and ('read_only=True' in str(record.msg) or 'is read only' in str(record.msg)):
      return False  # --mode=eval opens the checkpoints read-only, by design
    if record.name == 'asyncio' and 'exception was never retrieved' in str(record.msg):
      return False  # a task Orbax left behind after a failure that reaches its caller anyway
    if record.levelno >= pylogging.ERROR and (noisy or record.name == 'asyncio'):
      text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else '')
      if _OS_FAILURE.search(text):
        return False
    return not (noisy and record.levelno < pylogging.WARNING)


# What TensorStore and the OS say in a message about a failed write.
_OS_FAILURE = re.compile(r"os_error_code=|No space left|Read-only file system|Permission denied|"
                         r'Disk quota exceeded|RESOURCE_EXHAUSTED|Event loop is closed')


def _quiet_background_errors():
  """Background threads and garbage-collected coroutines of the writers (Orbax, TensorBoard) log
  one line instead of a traceback; a failure that matters reaches `main` and is reported there."""

  def thread_hook(args):
    if args.exc_type is SystemExit:
      return
    logging.warning('Background thread %s stopped: %s: %s',
                    getattr(args.thread, 'name', '?'), args.exc_type.__name__, args.exc_value)

  def unraisable_hook(args):
    logging.debug('Ignored in %r: %s: %s', args.object, args.exc_type.__name__, args.exc_value)

  threading.excepthook = thread_hook
  sys.unraisablehook = unraisable_hook


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


# Exit codes (also in the README).
EXIT_FINISHED = 0      # trained to the end / evaluated
EXIT_BAD_INPUT = 2     # bad input, or an OS failure writing the run's files: one line says what
EXIT_DIVERGED = 3      # NaN/inf: stopped, the last checkpoint intact
EXIT_STOPPED = 75      # stopped by SIGTERM/SIGINT after a checkpoint: rerun to resume (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # a second Ctrl-C: stopped at once, without a checkpoint of that step


def _fail(message: str, code: int, *, quiet_exit: bool = False):
  """Prints one line and exits with `code`. With `quiet_exit` the interpreter's teardown is
  skipped: background writers (Orbax's asynchronous save, TensorBoard's flush at exit) would
  print tracebacks of the same failure there."""
  logging.debug('Traceback of the error below:', exc_info=True)
  print(f'Error: {message}', file=sys.stderr, flush=True)
  if quiet_exit:
    logging.flush()
    sys.stdout.flush()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  _quiet_background_errors()
  maybe_initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import config_lib  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import train  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  try:
    config = _CONFIG.value
    config.model  # pylint: disable=pointless-statement  (a failed load raises on first access)
  except OSError as e:
    _fail(f'cannot load --config: {e}', EXIT_BAD_INPUT)
  try:
    config_lib.validate(config, num_devices=jax.device_count(),
                        num_processes=jax.process_count())
  except ValueError as e:
    _fail(f'invalid config: {e}', EXIT_BAD_INPUT)
  try:
    if _MODE.value == 'train':
      result = train.train_and_evaluate(config, _WORKDIR.value,
                                        allow_config_change=_ALLOW_CONFIG_CHANGE.value)
      if 'stopped_at' in result:
        sys.exit(EXIT_STOPPED)
    else:
      train.evaluate_checkpoint(config, _WORKDIR.value, step=_CHECKPOINT_STEP.value,
                                allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except train.SetupError as e:
    _fail(str(e), EXIT_BAD_INPUT)
  except FloatingPointError as e:
    _fail(str(e), EXIT_DIVERGED)
  except KeyboardInterrupt:
    _fail('Interrupted by a second Ctrl-C: stopped at once, without a checkpoint of the current '
          'step; the last complete checkpoint is intact. Rerun the same command to resume.',
          EXIT_INTERRUPTED, quiet_exit=True)
  except Exception as e:  # pylint: disable=broad-except
    failure = workdir_lib.os_failure(e, workdir=_WORKDIR.value)
    if failure is None:
      raise
    _fail(failure, EXIT_BAD_INPUT, quiet_exit=True)


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
