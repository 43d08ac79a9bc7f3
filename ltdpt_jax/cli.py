"""What every command shares: start-up, one-line errors, exit codes and config validation.

`start` (logging, multi-host initialisation), `parse_flags` (a misspelt config key is one line),
`load_config` and `validate_config` (every value checked before any work), `run_guarded` (the
project's exceptions become one line and an exit code: the `EXIT_*` constants). No flags are
defined here: each command defines its own.
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


# The exit codes of every command.
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
  # The package's parts are imported where they are used: the plotting command and every --help
  # start without loading JAX.
  from ltdpt_jax import run_dir  # pylint: disable=g-import-not-at-top
  try:
    return fn()
  except run_dir.SetupError as e:
    fail(str(e), EXIT_BAD_INPUT)
  except FloatingPointError as e:
    fail(str(e), EXIT_DIVERGED)
  except KeyboardInterrupt:
    fail('Interrupted by a second Ctrl-C: stopped at once, without a checkpoint of the current '
         'step; the last complete checkpoint is intact. Rerun the same command to resume.',
         EXIT_INTERRUPTED, quiet_exit=True)
  except Exception as e:  # pylint: disable=broad-except
    failure = run_dir.os_failure(e, workdir=workdir)
    if failure is None:
      raise
    fail(failure, EXIT_BAD_INPUT, quiet_exit=True)


# ---------------------------------------------------------------------------------------------
# Config validation.
# ---------------------------------------------------------------------------------------------


def _choices() -> dict[str, tuple]:
  """The enumerated fields and the values they accept, as the parts that read them declare."""
  from ltdpt_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from ltdpt_jax.models import common, ltdpt, vit  # pylint: disable=g-import-not-at-top
  return {
      'model.backbone': vit.BACKBONES,
      'model.method': ltdpt.METHODS,
      'model.feature': ltdpt.FEATURES,
      'model.prompt_mode': ltdpt.PROMPT_MODES,
      'model.dtype': tuple(common.DTYPES),
      'model.attention': vit.ATTENTIONS,
      'model.remat_policy': tuple(vit.REMAT_POLICIES),
      'data.dataset': data_lib.DATASETS,
      'data.eval_split': data_lib.EVAL_SPLITS,
      'data.on_bad_image': data_lib.ON_BAD_IMAGE,
      'data.class_set': data_lib.CLASS_SETS,
  }


# Bounds of the other numeric fields outside config.model (whose values `models.build_model`
# checks, with the architecture).
_POSITIVE = ('data.image_size', 'data.batch_size', 'data.eval_batch_size', 'loss.s', 'optim.lr',
             'optim.lr_base_batch', 'train.epochs', 'train.checkpoint_every_steps',
             'train.log_every_steps', 'train.eval_every_epochs', 'train.keep_checkpoints')
_NON_NEGATIVE = ('data.synthetic_image_size', 'loss.m', 'loss.noise_mul', 'loss.orth_lambda',
                 'optim.momentum', 'optim.weight_decay', 'optim.gnm_rho', 'optim.gnm_dis_mul',
                 'train.drw_epochs')


def _get(config, dotted):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def _validate_model(config):
  """config.model: choices, the architecture and image size, and LTDPT's own checks."""
  from ltdpt_jax import models  # pylint: disable=g-import-not-at-top
  from ltdpt_jax.models import vit  # pylint: disable=g-import-not-at-top
  try:
    arch = vit.arch_from_config(config.model)
  except ValueError as e:
    raise ValueError(f'config.model.vit: {e}') from None
  try:
    arch.grid(config.data.image_size)
  except ValueError as e:
    raise ValueError(f'config.data.image_size={config.data.image_size}: {e}') from None
  try:
    models.build_model(config.model, num_classes=2)
  except ValueError as e:
    raise ValueError(f'config.model: {e}') from None


def validate_evals(config):
  """config.evals and config.train.best_metric (LT-DPT's and pretraining's configs alike)."""
  from ltdpt_jax import evaluators  # pylint: disable=g-import-not-at-top
  if not config.evals:
    raise ValueError('config.evals is empty; the base config has '
                     "config.evals.eval = {type: 'longtail'}.")
  for name, section in config.evals.items():
    if section.get('type') not in evaluators.REGISTRY:
      raise ValueError(f'config.evals.{name}.type={section.get("type")!r} is not valid; choose '
                       f'one of {tuple(evaluators.REGISTRY)}.')
    if not section.get('every_epochs', 0) >= 0:
      raise ValueError(f'config.evals.{name}.every_epochs={section.every_epochs} must be >= 0 '
                       '(0: config.train.eval_every_epochs).')
  name, sep, key = config.train.best_metric.partition('/')
  if not sep or not key or name not in config.evals:
    raise ValueError(f'config.train.best_metric={config.train.best_metric!r} must be '
                     f"'<evaluator>/<metric>' with an evaluator of config.evals "
                     f'({", ".join(config.evals)}), e.g. \'eval/accuracy\'.')


def validate_config(config, *, num_devices: int | None = None,
                    num_processes: int | None = None) -> None:
  """Raises ValueError naming the first invalid value of an LT-DPT config and what it accepts
  (the enumerated values as the parts that read them declare, the model by building it, the
  bounds above, the batch sizes against the device and process counts)."""
  from ltdpt_jax import models  # pylint: disable=g-import-not-at-top
  if config.model.get('method') == models.PRETRAIN:
    raise ValueError("config.model.method='pretrain' is a pretraining config: run it with "
                     'python -m ltdpt_jax.tools.pretrain.')
  for key, choices in _choices().items():
    value = _get(config, key)
    if value not in choices:
      raise ValueError(f'config.{key}={value!r} is not valid; choose one of {choices}.')
  for key in _POSITIVE:
    if not _get(config, key) > 0:
      raise ValueError(f'config.{key}={_get(config, key)!r} must be > 0.')
  for key in _NON_NEGATIVE:
    if not _get(config, key) >= 0:
      raise ValueError(f'config.{key}={_get(config, key)!r} must be >= 0.')
  if not 0.0 < config.data.crop_min_scale <= 1.0:
    raise ValueError(f'config.data.crop_min_scale={config.data.crop_min_scale} must be in (0, 1].')
  if not 0.0 <= config.loss.drw_beta < 1.0:
    raise ValueError(f'config.loss.drw_beta={config.loss.drw_beta} must be in [0, 1).')
  if config.train.drw_epochs > config.train.epochs:
    raise ValueError(f'config.train.drw_epochs={config.train.drw_epochs} exceeds '
                     f'config.train.epochs={config.train.epochs}.')
  thresholds = tuple(config.data.shot_thresholds)
  if len(thresholds) != 2 or not 0 <= thresholds[0] <= thresholds[1]:
    raise ValueError(f'config.data.shot_thresholds={thresholds} must be (tail_max, head_min) '
                     'with 0 <= tail_max <= head_min, e.g. (20, 100).')
  for key, needed in (('folder', ('train_dir', 'eval_dir')), ('list', ('train_list', 'eval_list'))):
    for field in needed if config.data.dataset == key else ():
      if not config.data[field]:
        raise ValueError(f"config.data.dataset={key!r} needs config.data.{field} (see "
                         'configs/folder.py).')
  if config.data.dataset == 'cifar100_lt' and config.data.imbalance_ratio < 1:
    raise ValueError(f'config.data.imbalance_ratio={config.data.imbalance_ratio} must be >= 1.')
  _validate_model(config)
  validate_evals(config)
  for count, what in ((num_devices, 'devices'), (num_processes, 'processes')):
    for key in ('data.batch_size', 'data.eval_batch_size') if count else ():
      if _get(config, key) % count:
        raise ValueError(f'config.{key}={_get(config, key)} must be a multiple of the number of '
                         f'{what} ({count}).')
