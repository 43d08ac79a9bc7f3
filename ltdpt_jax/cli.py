"""What the command-line tools share (`main`, `pretrain`, `ablate`): quiet library logs, one-line
errors, exit codes, multi-host start-up and absl flag parsing with clear config-key errors.

No flags are defined here, so every tool defines its own (`--config`, `--workdir`, ...) and they
can be imported together. The exit codes are those of the README:

  0 finished, 2 bad input or an OS failure (one line says what and how to fix it), 3 diverged
  (NaN/inf; the last checkpoint is intact), 75 stopped by SIGTERM/Ctrl-C after a checkpoint
  (rerun to resume), 130 stopped at once by a second Ctrl-C.

`run_guarded(fn, workdir)` runs the body of a tool and turns the project's exceptions into those
exit codes and one line each.
"""

from __future__ import annotations

import logging as pylogging
import os
import re
import sys
import threading
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging

# Exit codes (also in the README).
EXIT_FINISHED = 0      # trained to the end / evaluated
EXIT_BAD_INPUT = 2     # bad input, or an OS failure writing the run's files: one line says what
EXIT_DIVERGED = 3      # NaN/inf: stopped, the last checkpoint intact
EXIT_STOPPED = 75      # stopped by SIGTERM/SIGINT after a checkpoint: rerun to resume (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # a second Ctrl-C: stopped at once, without a checkpoint of that step


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


class QuietLibraries:
  """Drops INFO/DEBUG log records of Orbax and grain (dozens per checkpoint), keeping warnings,
  and the error records (with tracebacks) that background writers log about an OS failure:
  the tool reports that failure in one line."""

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
      if OS_FAILURE.search(text):
        return False
    return not (noisy and record.levelno < pylogging.WARNING)


# What TensorStore and the OS say in a message about a failed write.
OS_FAILURE = re.compile(r"os_error_code=|No space left|Read-only file system|Permission denied|"
                        r'Disk quota exceeded|RESOURCE_EXHAUSTED|Event loop is closed')


def quiet_background_errors():
  """Background threads and garbage-collected coroutines of the writers (Orbax, TensorBoard) log
  one line instead of a traceback; a failure that matters reaches the tool and is reported there."""

  def thread_hook(args):
    if args.exc_type is SystemExit:
      return
    logging.warning('Background thread %s stopped: %s: %s',
                    getattr(args.thread, 'name', '?'), args.exc_type.__name__, args.exc_value)

  def unraisable_hook(args):
    logging.debug('Ignored in %r: %s: %s', args.object, args.exc_type.__name__, args.exc_value)

  threading.excepthook = thread_hook
  sys.unraisablehook = unraisable_hook


def start(argv) -> None:
  """What every command's absl main does first: refuse positional arguments, set up the logging
  (`set_up_logging`) and, on multi-host runs, `maybe_initialize_distributed`."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  set_up_logging()
  maybe_initialize_distributed()


def set_up_logging():
  """The quiet library filter on absl's handler and the one-line background errors."""
  logging.get_absl_handler().addFilter(QuietLibraries())
  quiet_background_errors()


def _config_overrides(argv) -> list[str]:
  return [a[2:].split('=', 1)[0] for a in argv if a.startswith('--config.')]


def parse_flags(argv):
  """absl's flag parsing, with one clear line for a config key that does not exist."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f'Error: {e}\nPass --helpfull to see the flags.', file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
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
    sys.exit(EXIT_BAD_INPUT)


def fail(message: str, code: int, *, quiet_exit: bool = False):
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


def load_config(config_flag):
  """The value of a `config_flags.DEFINE_config_file` flag; a file that does not load is one
  line (exit code 2)."""
  try:
    config = config_flag.value
    config.model  # pylint: disable=pointless-statement  (a failed load raises on first access)
  except OSError as e:
    fail(f'cannot load --config: {e}', EXIT_BAD_INPUT)
  return config


def run_guarded(fn: Callable[[], Any], workdir: str | None) -> Any:
  """Runs `fn()`; the project's exceptions become one line and an exit code: SetupError and
  ValueError 2, FloatingPointError 3, a second Ctrl-C 130, an OS failure writing the run 2."""
  from ltdpt_jax import train  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import run_dir as run_dir_lib  # pylint: disable=g-import-not-at-top
  try:
    return fn()
  except train.SetupError as e:
    fail(str(e), EXIT_BAD_INPUT)
  except FloatingPointError as e:
    fail(str(e), EXIT_DIVERGED)
  except KeyboardInterrupt:
    fail('Interrupted by a second Ctrl-C: stopped at once, without a checkpoint of the current '
         'step; the last complete checkpoint is intact. Rerun the same command to resume.',
         EXIT_INTERRUPTED, quiet_exit=True)
  except Exception as e:  # pylint: disable=broad-except
    failure = run_dir_lib.os_failure(e, workdir=workdir)
    if failure is None:
      raise
    fail(failure, EXIT_BAD_INPUT, quiet_exit=True)
