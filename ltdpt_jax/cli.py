"""What every command shares: start-up, one-line errors, exit codes and config validation.

`start` (logging, multi-host initialisation), `parse_flags` (a misspelt config key is one line),
`load_config` and `validate_config` (every value checked before any work), `run_guarded` (the
project's exceptions become one line and an exit code: the `EXIT_*` constants). No flags are
defined here: each command defines its own.
"""

from __future__ import annotations

import atexit
import inspect
import logging as pylogging
import os
import re
import socket
import sys
import threading
import time
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging


# The exit codes of every command.
EXIT_FINISHED = 0      # trained to the end / evaluated
EXIT_BAD_INPUT = 2     # bad input, or an OS failure writing the run's files: one line says what
EXIT_DIVERGED = 3      # NaN/inf: stopped, the last checkpoint intact
EXIT_STOPPED = 75      # stopped after a checkpoint by SIGTERM/SIGINT, or a process of the run
                       # was lost: rerun to resume (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # a second Ctrl-C: stopped at once, without a checkpoint of that step


# Multi-host runs: how long a process waits for the others to connect, and how long another
# process may stay silent before it counts as lost (seconds; the environment variables
# LTDPT_CONNECT_TIMEOUT_S and LTDPT_HEARTBEAT_TIMEOUT_S override them).
CONNECT_TIMEOUT_S = 120
HEARTBEAT_TIMEOUT_S = 30


def maybe_initialize_distributed():
  """Calls jax.distributed.initialize() on multi-host runs (never on a plain single host).

  The processes: LTDPT_COORDINATOR (host:port of process 0, which runs JAX's coordination
  service), LTDPT_NUM_PROCESSES, LTDPT_PROCESS_ID and optionally LTDPT_LOCAL_DEVICE_IDS on every
  host; or LTDPT_DISTRIBUTED=1, JAX detecting them (Cloud TPU, Slurm, Open MPI). JAX's own
  limits end a process with SIGABRT and a C++ stack dump; these two come first, with one line:
    LTDPT_CONNECT_TIMEOUT_S (default 120): a process that is not connected to all the others this
      many seconds after it started exits 2 (EXIT_BAD_INPUT), naming the coordinator and, where
      it can tell, the processes missing (`_connect_watchdog`).
    LTDPT_HEARTBEAT_TIMEOUT_S (default 30): a process not heard from for this long (killed,
      crashed, its host gone) is lost; every other one exits 75 (EXIT_STOPPED) at most 1.35
      times this later (40 s), naming it: rerunning the command resumes from the last complete
      checkpoint (`Heartbeats`).
  Not covered: when process 0 itself dies, JAX's client aborts the others at once (SIGABRT, exit
  134) from C++, where no Python code can step in (its missed_heartbeat_callback cannot take a
  Python function: jaxlib has no conversion of its absl::Status argument).
  """
  import jax  # pylint: disable=g-import-not-at-top
  if os.environ.get('LTDPT_COORDINATOR'):
    ids = os.environ.get('LTDPT_LOCAL_DEVICE_IDS')
    args = dict(coordinator_address=os.environ['LTDPT_COORDINATOR'],
                num_processes=_env_int('LTDPT_NUM_PROCESSES'),
                process_id=_env_int('LTDPT_PROCESS_ID'),
                local_device_ids=[int(i) for i in ids.split(',')] if ids else None)
  elif os.environ.get('LTDPT_DISTRIBUTED', '') not in ('', '0'):
    args = {}
  else:
    return
  connect_s = _env_seconds('LTDPT_CONNECT_TIMEOUT_S', CONNECT_TIMEOUT_S)
  heartbeat_s = _env_seconds('LTDPT_HEARTBEAT_TIMEOUT_S', HEARTBEAT_TIMEOUT_S)
  # JAX's limits, well beyond ours (where this version of JAX has them).
  limits = {'initialization_timeout': int(2 * connect_s + 30),
            'heartbeat_timeout_seconds': int(max(100, 3 * heartbeat_s))}
  accepted = inspect.signature(jax.distributed.initialize).parameters
  args.update({k: v for k, v in limits.items() if k in accepted})
  connected = threading.Event()
  threading.Thread(target=_connect_watchdog, args=(connected, connect_s), daemon=True,
                   name='ltdpt_connect_watchdog').start()
  try:
    jax.distributed.initialize(**args)
  except Exception as e:  # pylint: disable=broad-except  (a port in use, an invalid process id)
    fail(f'jax.distributed.initialize failed (coordinator {_coordinator()}): '
         f'{str(e).strip().splitlines()[0]}', EXIT_BAD_INPUT, quiet_exit=True)
  connected.set()
  Heartbeats.start(heartbeat_s)


def _env_int(name: str) -> int:
  try:
    return int(os.environ.get(name, ''))
  except ValueError:
    fail(f'{name}={os.environ.get(name)!r}: LTDPT_COORDINATOR is set, so {name} must be set to an '
         'integer too (see ltdpt_jax/cli.py maybe_initialize_distributed).', EXIT_BAD_INPUT)


def _env_seconds(name: str, default: float) -> float:
  text = os.environ.get(name, '')
  try:
    value = float(text) if text else default
  except ValueError:
    value = 0
  if not value > 0:
    fail(f'{name}={text!r} must be a number of seconds > 0 (default {default}).', EXIT_BAD_INPUT)
  return value


def _distributed_state():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state  # JAX's own client and ids, as Orbax reads them too


def _coordinator() -> str:
  return (_distributed_state().coordinator_address or os.environ.get('LTDPT_COORDINATOR')
          or 'not detected')


def _answers(address: str) -> bool:
  """Whether something accepts TCP connections at host:port."""
  host, _, port = address.rpartition(':')
  try:
    with socket.create_connection((host.strip('[]'), int(port)), timeout=5):
      return True
  except (OSError, ValueError):
    return False


def _connect_watchdog(connected: threading.Event, seconds: float) -> None:
  """Ends the process with one line (exit 2) unless `connected` is set within `seconds`; JAX
  itself would wait `initialization_timeout`, then abort."""
  if connected.wait(seconds):
    return
  state, address = _distributed_state(), _coordinator()
  me, n, s = state.process_id, state.num_processes, f'{seconds:g} s'  # (JAX sets the ids first)
  start_all = (f'start the same command on every host, with LTDPT_PROCESS_ID 0 to {n - 1} and the '
               'same LTDPT_COORDINATOR and LTDPT_NUM_PROCESSES')
  if n < 2:
    what = (f'JAX did not find the processes of the run (LTDPT_DISTRIBUTED=1) within {s}: start '
            'the same command on every host of the slice')
  elif me == 0:
    missing = 'process 1' if n == 2 else f'some of processes 1 to {n - 1}'
    what = (f'{missing} of {n} did not connect to this process (0, the coordinator at {address}) '
            f'within {s}: {start_all}')
  elif not _answers(address):
    what = (f'process 0 of {n} (the coordinator, {address}) did not answer process {me} within '
            f'{s}: start it (LTDPT_PROCESS_ID=0) on the host of LTDPT_COORDINATOR, check that '
            'address and its port')
  else:
    what = (f'not all {n} processes connected to the coordinator {address} within {s} (this is '
            f'process {me}; process 0 answers): {start_all}')
  fail(f'{what}, or raise LTDPT_CONNECT_TIMEOUT_S.', EXIT_BAD_INPUT, quiet_exit=True)


class Heartbeats:
  """Finds a lost process of a multi-host run before JAX does (JAX aborts with a stack dump).

  A daemon thread on every process writes a counter to JAX's key-value store (`KEY` + its id)
  every timeout/6 seconds and reads the others': a process whose counter stayed the same for
  `timeout` seconds is lost, and this one prints one line and exits 75 (EXIT_STOPPED): its peers
  are stuck in a collective (or fail in it), and a rerun resumes from the last complete
  checkpoint. A process that ends writes 'done' (an `atexit` hook, run before JAX's shutdown),
  and an exception that ends the main thread (a collective failing on a lost peer) waits until
  every other process beat again before its traceback (`settle`).
  """

  KEY = 'ltdpt_heartbeat/'

  def __init__(self, client, me: int, num_processes: int, timeout: float):
    self.client, self.me, self.timeout = client, me, timeout
    self.others = [p for p in range(num_processes) if p != me]
    self.interval = timeout / 6
    self.seen = {}  # process -> (its last value, time.monotonic() when that value was first read)
    self.changes = dict.fromkeys(self.others, 0)
    self.stop = threading.Event()
    self.thread = threading.Thread(target=self._run, daemon=True, name='ltdpt_heartbeats')

  @classmethod
  def start(cls, timeout: float) -> Heartbeats | None:
    state = _distributed_state()
    if state.client is None or state.num_processes < 2:
      return None
    beats = cls(state.client, state.process_id, state.num_processes, timeout)
    beats.thread.start()
    atexit.register(beats.close)
    previous = sys.excepthook
    sys.excepthook = lambda *exc: (beats.settle(), previous(*exc))
    return beats

  def _run(self):
    beat, reached = 0, time.monotonic()
    while not self.stop.is_set():
      beat += 1
      try:
        self.client.key_value_set(f'{self.KEY}{self.me}', str(beat), allow_overwrite=True)
        values = dict(self.client.key_value_dir_get(self.KEY))
        reached = time.monotonic()
      except Exception:  # pylint: disable=broad-except  (the coordinator, unreachable for now)
        values = None
      if values is None and self.me and time.monotonic() - reached > self.timeout:
        self._lost(0)  # (JAX's client ends the process first when process 0 is known dead)
      for p in self.others if values is not None else ():
        self._check(p, values.get(f'{self.KEY}{p}'))
      self.stop.wait(self.interval)

  def _check(self, p: int, value: str | None):
    now = time.monotonic()
    last, since = self.seen.get(p, (None, now))
    if p not in self.seen or value != last:
      self.seen[p] = (value, now)
      self.changes[p] += 1
    elif value != 'done' and now - since > self.timeout:
      self._lost(p)

  def _lost(self, p: int):
    if self.stop.is_set():
      return
    fail(f'lost process {p} of {len(self.others) + 1}: no heartbeat from it for {self.timeout:g} '
         f's (killed, crashed, or its host or the network went down), so process {self.me} stops '
         'too. Rerun the same command on every host: it resumes from the last complete '
         'checkpoint.', EXIT_STOPPED, quiet_exit=True)

  def settle(self):
    """Returns when every other process beat since the call, or ended; the thread ends this
    process first when one of them is lost."""
    before = dict(self.changes)
    deadline = time.monotonic() + self.timeout + 2 * self.interval
    while (self.thread.is_alive() and time.monotonic() < deadline
           and any(self.changes[p] == before[p] for p in self.others)):
      time.sleep(0.1)

  def close(self):
    """At exit: the thread stops and the others learn that this process ended on purpose."""
    self.stop.set()
    self.thread.join(timeout=10)
    try:
      self.client.key_value_set(f'{self.KEY}{self.me}', 'done', allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      pass


class QuietLibraries:
  """Drops INFO/DEBUG log records of Orbax and grain (dozens per checkpoint), keeping warnings,
  and the error records (with tracebacks) their background writers log: a failed save raises in
  the command too, which reports it in one line. `--verbosity=1` keeps those error records."""

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
      return not OS_FAILURE.search(text) and logging.get_verbosity() >= logging.DEBUG
    return not (noisy and record.levelno < pylogging.WARNING)


# What TensorStore and the OS say in a message about a failed write.
OS_FAILURE = re.compile(r"os_error_code=|No space left|Read-only file system|Permission denied|"
                        r'Disk quota exceeded|RESOURCE_EXHAUSTED|Event loop is closed|'
                        r'No such file or directory')


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


def _config_file(argv) -> str | None:
  """The value of `--config=` in `argv` (file[:argument]), if any."""
  return next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)


def _config_load_error(argv, detail: str) -> None:
  """One line (exit code 2) for a --config file that does not load: a missing file, a Python
  error in it, or its get_config refusing its argument; `detail` is the error's text."""
  spec = _config_file(argv) or '?'
  path = spec.split(':', 1)[0]
  if not os.path.isfile(path):
    fail(f'--config={spec}: no such file {path!r} (a path from the directory you run in, e.g. '
         'configs/demo.py).', EXIT_BAD_INPUT)
  lines = [line.strip() for line in detail.splitlines() if line.strip()]
  fail(f'--config={spec} does not load: {lines[-1] if lines else detail}', EXIT_BAD_INPUT)


def parse_flags(argv):
  """absl's flag parsing, with one clear line for a config key that does not exist and for a
  config file that does not load."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    if 'parsing config file' in str(e) or 'loading config file' in str(e):
      _config_load_error(argv, str(e))
    print(f'Error: {e}\nPass --helpfull to see the flags.', file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  except (SyntaxError, ImportError, NameError) as e:  # raised while the config file is imported
    if _config_file(argv) is None:
      raise
    where = f' ({os.path.basename(e.filename)}, line {e.lineno})' if isinstance(
        e, SyntaxError) and e.filename else ''
    _config_load_error(argv, f'{type(e).__name__}: {e.msg if isinstance(e, SyntaxError) else e}'
                       f'{where}')
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
  except OSError as e:  # ml_collections' 'Configuration is not available' (a failed load)
    _config_load_error(sys.argv, str(e))
  return config


def run_guarded(fn: Callable[[], Any], workdir: str | None) -> Any:
  """Runs `fn()`; the project's exceptions become one line and an exit code: SetupError and a
  bad input image (`files.DataError`) 2, FloatingPointError 3, a second Ctrl-C 130, an OS failure
  writing the run 2."""
  # The package's parts are imported where they are used: the plotting command and every --help
  # start without loading JAX.
  from ltdpt_jax import run_dir  # pylint: disable=g-import-not-at-top
  from ltdpt_jax.data import files  # pylint: disable=g-import-not-at-top
  try:
    return fn()
  except (run_dir.SetupError, files.DataError) as e:
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
      'data.source': data_lib.BENCHMARK_SOURCES,
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
    if section.get('split', 'eval') not in ('eval', 'val'):
      raise ValueError(f"config.evals.{name}.split={section.split!r} must be 'eval' or 'val'.")
    if section.get('split') == 'val' and not config.data.get('val_fraction', 0.0) > 0:
      raise ValueError(f"config.evals.{name}.split='val' needs config.data.val_fraction > 0.")
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
  if not 0.0 <= config.data.get('val_fraction', 0.0) < 1.0:
    raise ValueError(f'config.data.val_fraction={config.data.val_fraction} must be in [0, 1) '
                     '(the share of each class\'s training images held out for validation).')
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
