"""The run directory and a training run's lifecycle in it: `RunDir`, the one object the loop uses.

`with RunDir(workdir, config) as run:` makes sure the workdir is writable, locks it
(`WorkdirLock`) and catches SIGTERM/Ctrl-C (`Preemption`); `run.resume` restores the newest
checkpoint that can be restored, after `accept_config` checked its config for drift
(`RESUME_ALLOWED`); `run.best` tracks the best evaluation, `run.finish` writes results.json.
`os_failure` turns an OS error anywhere in a run into one line.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import fnmatch
import json
import os
import re
import signal
import socket
import threading
import time
import uuid

from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from etils import epath

from ltdpt_jax import checkpoint as ckpt_lib
from ltdpt_jax import evaluators as evaluators_lib
from ltdpt_jax import fetch
from ltdpt_jax import metrics as metrics_lib

LOCK_NAME = '.lock'


class SetupError(ValueError):
  """A problem with the run's inputs found before any training or evaluation step: a dataset that
  is not prepared, a backbone of another architecture, no checkpoint to evaluate, a workdir that
  is busy or was written by an incompatible config. The commands print it as one line."""


class WorkdirError(OSError):
  """The workdir cannot be created or written: one line naming it, the cause and the fix."""


class WorkdirBusy(RuntimeError):
  """Another live run holds the workdir's lock."""


def _os_fix(e: OSError) -> str:
  if e.errno == errno.ENOSPC:
    return 'free space on its file system or choose another --workdir'
  if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
    return 'choose a --workdir on a writable file system you may write to'
  if e.errno in (errno.ENOTDIR, errno.EEXIST):
    return 'a part of the path is a regular file: choose another --workdir'
  return 'choose another --workdir'


def prepare(workdir: str) -> list[str]:
  """Creates `workdir` and writes and removes a probe file in it, before anything is built: an
  unwritable `--workdir` (a read-only file system, a path under a regular file, no permission)
  fails at once in one line (WorkdirError). Returns the directories it created (outermost
  first), for `remove_if_unused`.
  """
  if fetch.is_remote(workdir):
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    return []
  created, path = [], os.path.abspath(workdir)
  while not os.path.lexists(path):
    created.insert(0, path)
    path = os.path.dirname(path)
  probe = os.path.join(workdir, f'.write_probe.{os.getpid()}.{uuid.uuid4().hex[:8]}')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ltdpt_jax write probe\n')
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(e.errno, f'Cannot write to --workdir={workdir}: {e.strerror} '
                       f'({e.filename or workdir}); {_os_fix(e)}.') from e
  return created


def check_shared(workdir: str) -> None:
  """Raises WorkdirError on every process when some process does not see the files process 0
  writes in `workdir`: a multi-host run needs one workdir every host sees (a gs:// bucket, or a
  shared file system mounted at the same path), or each host would hold only its part of every
  checkpoint. Nothing to check on one process."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  token = np.frombuffer(uuid.uuid4().bytes, np.uint8)
  token = bytes(np.asarray(multihost_utils.broadcast_one_to_all(token), np.uint8)).hex()
  probe = epath.Path(workdir) / f'.shared_probe.{token}'
  if jax.process_index() == 0:
    probe.write_text(token)
  multihost_utils.sync_global_devices('ltdpt_jax: shared-workdir probe written')
  try:
    seen = probe.exists() and probe.read_text() == token
  except OSError:
    seen = False
  seen_by = np.asarray(multihost_utils.process_allgather(np.array([seen]))).reshape(-1)
  multihost_utils.sync_global_devices('ltdpt_jax: shared-workdir probe read')
  if jax.process_index() == 0:
    probe.unlink(missing_ok=True)
  blind = [i for i, ok in enumerate(seen_by) if not ok]
  if blind:
    raise WorkdirError(
        errno.EXDEV, f'--workdir={workdir} is not shared by the {len(seen_by)} processes of '
        f'this run: process(es) {blind} do not see the files process 0 writes there (a local '
        'disk on each host would hold only its part of every checkpoint). Use a gs:// '
        'workdir (Cloud TPU) or a shared file system mounted at the same path on every host.')


def remove_if_unused(workdir: str, created: list[str]) -> None:
  """Removes what `prepare` created when nothing but the lock file was written there: a run
  refused for bad input leaves the file system as it found it."""
  lock = os.path.join(workdir, LOCK_NAME)
  if not created or set(os.listdir(workdir)) - {LOCK_NAME}:
    return
  if os.path.exists(lock):
    os.remove(lock)
  for path in reversed(created):
    try:
      os.rmdir(path)
    except OSError:
      return


class WorkdirLock:
  """The exclusive lock of a workdir: `fcntl.flock` on `<workdir>/.lock`, held until the run ends.

  The kernel releases it when the process dies, however it dies (kill -9 included), so a stale
  lock never blocks a restart. The file keeps the holder's PID, host and start time for the
  one-line refusal of a second run (WorkdirBusy); it is never deleted, or two runs could lock
  two different files. Remote workdirs (gs://) have no flock: a warning says so.
  """

  def __init__(self, workdir: str):
    self.workdir = str(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self._fd = None

  def holder(self) -> dict:
    """What the lock file says of its last holder ({} if unreadable)."""
    try:
      with open(self.path) as f:
        return json.loads(f.read() or '{}')
    except (OSError, ValueError):
      return {}

  def acquire(self) -> 'WorkdirLock':
    if fetch.is_remote(self.workdir):
      logging.warning('%s is remote: no lock keeps a second run out of it; run one at a time.',
                      self.workdir)
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      h = self.holder()
      raise WorkdirBusy(
          f'--workdir={self.workdir} is in use by another run (PID {h.get("pid", "?")} on host '
          f'{h.get("host", "?")}, started {h.get("started", "?")}): wait for it to end, stop it '
          '(a stopped run resumes with the same command), or use another --workdir.') from None
    info = {'pid': os.getpid(), 'host': socket.gethostname(),
            'started': datetime.datetime.now().isoformat(timespec='seconds')}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(info) + '\n').encode())
    self._fd = fd
    return self

  def intact(self) -> bool:
    """Whether the lock file is still the one this lock holds: False once the workdir was deleted
    or replaced under the run (True when nothing is held, e.g. a remote workdir)."""
    if self._fd is None:
      return True
    try:
      return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
    except FileNotFoundError:
      return False

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _lock(workdir: str) -> WorkdirLock:
  """The workdir's lock, taken by process 0; every process fails alike when it is held."""
  lock = WorkdirLock(workdir)
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except WorkdirBusy as e:
      error = str(e)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if not int(multihost_utils.broadcast_one_to_all(np.int32(error is None))):
      error = error or (f'--workdir={workdir} is in use by another run (process 0 could not '
                        'lock it).')
  if error:
    raise SetupError(error)
  return lock


# ---------------------------------------------------------------------------------------------
# Signals: stop after a checkpoint.
# ---------------------------------------------------------------------------------------------

class Preemption:
  """Catches SIGTERM (Cloud TPU preemption, `kill`) and SIGINT (Ctrl-C) so the loop can save a
  checkpoint and stop cleanly; a second SIGINT stops at once (KeyboardInterrupt).

  One process: a Python handler sets a flag that the loop reads after every step.
  Several processes: every process must stop after the same step, or the one still training
  waits forever in a collective for the one saving. JAX's preemption sync manager (started by
  `jax.distributed.initialize`) catches SIGTERM on any host, tells all the others through the
  coordination service and agrees on one step (`multihost_utils.reached_preemption_sync_point`,
  called after every step); a Python SIGTERM handler would replace its C++ one, so none is
  installed, and a SIGINT is passed on to it as a SIGTERM to the process itself.
  """

  def __init__(self):
    self.requested = False
    self._previous = {}
    self._multi = jax.process_count() > 1
    self._sync_failed = False
    if threading.current_thread() is not threading.main_thread():
      return
    if not self._multi:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handler)
    self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handler)

  def _handler(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if signum == signal.SIGINT:  # the next Ctrl-C stops at once
      signal.signal(signal.SIGINT, signal.default_int_handler)
      if self._multi:
        os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption sync stops every process
        return
    logging.warning('%s received: saving a checkpoint and stopping%s.', name,
                    ' (Ctrl-C again stops at once, without it)' if signum == signal.SIGINT
                    else '')
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if self._multi and not self._sync_failed:
      try:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        if multihost_utils.reached_preemption_sync_point(step):
          logging.warning('Preemption sync point reached at step %d on all processes.', step)
          return True
      except Exception as e:  # pylint: disable=broad-except
        self._sync_failed = True
        logging.warning('No preemption sync across processes (%s): SIGTERM is not handled.', e)
    return self.requested

  def restore(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


# ---------------------------------------------------------------------------------------------
# Config drift: what a resume may change.
# ---------------------------------------------------------------------------------------------

# Config keys (fnmatch patterns over dotted names) that may differ when a run resumes: they
# change how often things are logged, saved or evaluated, where files are read from (tfds or
# the same dataset's own files, which give the same images and labels), how fast
# the input is read or where the training crop runs (bit-identical either way), never what the
# run computes. The backbone file's path may change
# (model.checkpoint): its SHA-256, recorded at the start, is checked instead. The attention
# implementation, its padding and remat change the float rounding only (a run may move between
# a GPU with cuDNN and a TPU); model.dtype changes more and is refused.
RESUME_ALLOWED = (
    'train.log_every_steps', 'train.checkpoint_every_steps', 'train.keep_checkpoints',
    'train.eval_every_epochs', 'train.plots', 'train.attention_stats', 'evals.*',
    'data.eval_batch_size', 'data.num_workers', 'data.data_dir', 'data.split_dir',
    'data.source', 'data.image_root',
    'data.crop_on_device', 'model.checkpoint', 'model.checkpoint_sha256',
    'model.attention', 'model.pad_attention_to', 'model.remat', 'model.remat_policy',
)
# Config keys added after runs were already being written, with the value that gives what runs
# without the key did: a stored config without the key compares as if it held this value.
ADDED_KEYS = {'data.crop_on_device': None, 'data.synthetic_image_size': 0, 'data.source': 'tfds',
              'data.val_fraction': 0.0}
# What an evaluation of a checkpoint depends on (the rest only changes how the run trained).
EVAL_RELEVANT = (
    'model.*', 'data.dataset', 'data.image_size', 'data.imbalance_ratio', 'data.seed',
    'data.num_classes', 'data.num_train_max', 'data.num_test_per_class', 'data.eval_split',
    'data.class_set',
    'train.seed', 'optim.frozen_patterns',
)
CONFIG_CHANGES = 'config_changes.jsonl'


def flatten_config(d: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}: the dotted fields of a config's `to_dict()`."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten_config(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = v
  return out


def _matches(key: str, patterns) -> bool:
  return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def is_allowed(key: str) -> bool:
  """Whether a change of config key `key` may pass on resume (`RESUME_ALLOWED`)."""
  return _matches(key, RESUME_ALLOWED)


def config_changes(stored: dict, current: dict, *, only=None
                   ) -> tuple[dict[str, list], dict[str, list]]:
  """({key: [stored, current]} of the allowed changes, the same of the others).

  Values are compared as JSON (a tuple equals the list a checkpoint stores); a key only one
  side has counts as changed ('<absent>' on the other), except that a key of `ADDED_KEYS`
  absent from a side counts as its value there. `only`: patterns of the keys compared.
  """
  a = {**ADDED_KEYS, **flatten_config(json.loads(json.dumps(stored)))}
  b = {**ADDED_KEYS, **flatten_config(json.loads(json.dumps(current)))}
  allowed, refused = {}, {}
  for key in sorted(a.keys() | b.keys()):
    if only is not None and not _matches(key, only):
      continue
    old, new = a.get(key, '<absent>'), b.get(key, '<absent>')
    if old != new:
      (allowed if is_allowed(key) else refused)[key] = [old, new]
  return allowed, refused


def describe_changes(changes: dict[str, list]) -> str:
  return ', '.join(f'{k} {v[0]!r} -> {v[1]!r}' for k, v in changes.items())


def record_config_change(workdir: str, config_dict: dict, changes: dict[str, list], *,
                         step: int, how: str) -> None:
  """Appends the change to `config_changes.jsonl` and makes `config.json` the new config, so the
  workdir always says what ran."""
  root = epath.Path(workdir)
  record = {'time': time.time(), 'resumed_at_step': int(step), 'accepted': how,
            'changes': changes}
  history = root / CONFIG_CHANGES
  old = history.read_text() if history.exists() else ''
  tmp = root / (CONFIG_CHANGES + '.tmp')
  tmp.write_text(old + json.dumps(record) + '\n')
  tmp.replace(history)
  tmp = root / 'config.json.tmp'
  tmp.write_text(json.dumps(config_dict, indent=1))
  tmp.replace(root / 'config.json')


def accept_config(meta: dict[str, Any], config_dict: dict, backbone_sha256: str | None, *,
                  directory: str, workdir: str, allow_config_change: bool, only=None
                  ) -> dict[str, list]:
  """Compares the config and the backbone file with those stored with a checkpoint (`meta`, of
  the checkpoint in `directory`); returns the accepted changes ({key: [stored, current]}).

  Changes in `RESUME_ALLOWED` pass with a warning; any other change, or a backbone file with
  another SHA-256, raises SetupError listing both values, unless `allow_config_change`.
  """
  stored_sha = meta.get('backbone_sha256')
  if 'backbone_sha256' in meta and stored_sha != backbone_sha256 and not allow_config_change:
    none = '(none: a random init)'
    raise SetupError(
        f'The backbone is not the one the checkpoint in {directory} was trained on: its file has '
        f'SHA-256 {backbone_sha256 or none}, the run recorded {stored_sha or none}. Point '
        'config.model.checkpoint at the original file, or pass --allow_config_change to use '
        'this one.')
  if 'config' not in meta:
    return {}
  allowed, refused = config_changes(meta['config'], config_dict, only=only)
  if refused and not allow_config_change:
    raise SetupError(
        f'The config differs from the one that wrote the checkpoint in {directory}: '
        f'{describe_changes(refused)}. Rerun with the config in {workdir}/config.json, '
        'pass --allow_config_change to accept the change (it is recorded in the workdir), or use '
        'a new --workdir.')
  changes = {**allowed, **refused}
  if stored_sha != backbone_sha256 and 'backbone_sha256' in meta:
    changes['backbone_sha256'] = [stored_sha, backbone_sha256]
  return changes


def _how(changes: dict[str, list]) -> str:
  return 'allowed' if all(is_allowed(k) for k in changes) else '--allow_config_change'


def warn_changes(changes: dict[str, list], step: int) -> None:
  if changes:
    logging.warning('The config differs from the checkpoint of step %d (%s): %s.', step,
                    _how(changes), describe_changes(changes))


# ---------------------------------------------------------------------------------------------
# The best evaluation, and the results.
# ---------------------------------------------------------------------------------------------

def best_metric(config) -> tuple[str, str]:
  """(evaluator name, record key) of `config.train.best_metric`, e.g. ('eval', 'accuracy')."""
  name, _, key = config.train.best_metric.partition('/')
  return name, key


class Best:
  """The last record of the `config.train.best_metric` evaluator and its best value so far
  (`best` is {'step', 'epoch', <metric>: value}, stored in the checkpoint metadata)."""

  def __init__(self, config, best: dict[str, Any] | None = None):
    self.name, self.key = best_metric(config)
    self.best, self.last = best, None
    self.last_by_evaluator: dict[str, dict[str, Any]] = {}  # every evaluator's last scalars

  def update(self, name: str, record: dict[str, Any], step: int, epoch: int) -> float | None:
    """Takes an evaluator's record; returns the metric when it is the ranked evaluator's."""
    self.last_by_evaluator[name] = {'step': step, 'epoch': epoch,
                                    **evaluators_lib.scalars(record)}
    if name != self.name:
      return None
    value = record[self.key]
    self.last = record
    if self.best is None or value > self.best[self.key]:
      self.best = {'step': step, 'epoch': epoch, self.key: value}
    return value

  def results(self, workdir: str, record_path: Callable[[int], str]) -> dict[str, Any]:
    """results.json: the last record and the full record of the best step, and the scalars of
    every evaluator's last record ('last_by_evaluator', e.g. the validation split's 'val')."""
    results = {'last': self.last, 'best': self.best, 'workdir': workdir,
               'last_by_evaluator': self.last_by_evaluator}
    if self.last is not None and self.best is not None:
      if self.best['step'] == self.last['step']:
        results['best'] = self.last
      else:
        best_eval = metrics_lib.read_json(record_path(self.best['step']))
        if best_eval is not None:
          results['best'] = best_eval
    return results


# ---------------------------------------------------------------------------------------------
# The run's lifecycle.
# ---------------------------------------------------------------------------------------------

class RunDir:
  """A run's directory for the length of a training run: `with RunDir(workdir, config) as run:`.

  Entering makes sure the workdir is writable and seen by every process (multi-host), locks it
  and catches SIGTERM/Ctrl-C (`run.preemption`), before anything is built; leaving restores the
  signal handlers and the lock, and when a SetupError refused the run, removes what entering
  created (nothing but the lock was written). In between: `finished_results`, `resume`, the best
  evaluation (`run.best`) and `finish`.
  """

  def __init__(self, workdir: str, config, *, allow_config_change: bool = False):
    self.workdir, self.config = workdir, config
    self.allow_config_change = allow_config_change
    self.best = Best(config)
    self.preemption: Preemption | None = None
    self._lock: WorkdirLock | None = None
    self._created: list[str] = []

  def __enter__(self) -> 'RunDir':
    try:
      self._created = prepare(self.workdir)
      check_shared(self.workdir)
    except WorkdirError as e:
      raise SetupError(str(e)) from e
    self._lock = _lock(self.workdir)
    self.preemption = Preemption()  # early: a signal during set-up or compilation stops cleanly
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    self.preemption.restore()
    self._lock.release()
    if exc_type is not None and issubclass(exc_type, SetupError) and jax.process_index() == 0:
      remove_if_unused(self.workdir, self._created)

  def path(self, name: str) -> epath.Path:
    return epath.Path(self.workdir) / name

  def check_intact(self) -> None:
    """Raises FileNotFoundError when the workdir was deleted or replaced while the run wrote to it
    (its lock file is gone): Orbax would recreate it, without the run's other files."""
    if not self._lock.intact():
      raise FileNotFoundError(errno.ENOENT, 'the workdir vanished while the run wrote to it',
                              self.workdir)

  def finished_results(self, checkpointer, total_steps: int, record_path: Callable[[int], str],
                       abstract_state: Any) -> dict[str, Any] | None:
    """The stored results when the workdir holds an intact checkpoint of the last step (a
    finished run is not trained again), else None. The checkpoint is restored to be sure: a
    damaged one is `resume`'s to set aside, and the run continues from an older one."""
    latest = checkpointer.latest_step()
    if latest is None or latest < total_steps:
      return None
    try:
      _, meta = checkpointer.restore(latest, abstract_state)
    except (ckpt_lib.CheckpointDamaged, ckpt_lib.CheckpointMismatch):
      return None
    logging.info('The run in %s has finished (checkpoint of step %d of %d); nothing to train. '
                 'Evaluate it with --mode=eval.', self.workdir, latest, total_steps)
    results = metrics_lib.read_json(self.path('results.json'))
    if results is not None:
      return results
    return {'last': metrics_lib.read_json(record_path(latest)), 'best': meta.get('best'),
            'workdir': self.workdir}

  def resume(self, checkpointer, restore: Callable[[int], tuple[Any, dict]], *,
             backbone_sha256: str | None) -> Any | None:
    """The state of the newest checkpoint that restores, or None for a fresh start (then
    config.json is written).

    Each checkpoint's config is checked first (`accept_config`); `restore(step)` returns
    (state, meta). A damaged checkpoint is set aside as `<step>.damaged` with one line in the
    log and the one before it is tried; when every one is damaged, SetupError (never a silent
    start from scratch). An accepted config change is recorded in the workdir.
    """
    damaged = []
    for step in sorted(checkpointer.all_steps(), reverse=True):
      try:
        meta = checkpointer.read_meta(step)
        changes = accept_config(meta, self.config.to_dict(), backbone_sha256,
                                directory=f'{self.workdir}/checkpoints/{step}',
                                workdir=self.workdir,
                                allow_config_change=self.allow_config_change)
        state, meta = restore(step)
      except ckpt_lib.CheckpointDamaged as e:
        moved = checkpointer.set_aside(step)
        logging.warning('%s -- set aside as %s; trying the checkpoint before it.', e, moved)
        damaged.append(step)
        continue
      except ckpt_lib.CheckpointMismatch as e:
        raise SetupError(f'Cannot resume: {e} Resume with the config that wrote it (see '
                         f'{self.workdir}/config.json) or use a new --workdir.') from e
      self.best.best = meta.get('best')
      logging.info('Resumed from the checkpoint of step %d in %s%s.', step, self.workdir,
                   f' (newer ones damaged: {sorted(damaged)})' if damaged else '')
      warn_changes(changes, step)
      if changes and jax.process_index() == 0:
        record_config_change(self.workdir, self.config.to_dict(), changes, step=step,
                             how=_how(changes))
      return state
    if damaged:
      raise SetupError(
          f'No checkpoint in {checkpointer.directory} can be restored: steps {sorted(damaged)} '
          'are damaged (kept as <step>.damaged). Use a new --workdir, or remove that checkpoints '
          'directory to train from scratch here.')
    metrics_lib.write_json(self.path('config.json'), self.config.to_dict())
    return None

  def finish(self, record_path: Callable[[int], str]) -> dict[str, Any]:
    """Writes and returns results.json: the last and the best evaluation."""
    results = self.best.results(self.workdir, record_path)
    metrics_lib.write_json(self.path('results.json'), results)
    w = self.workdir
    logging.info('Done. Metrics: %s/metrics.jsonl (TensorBoard: %s/tb), checkpoints: %s/'
                 'checkpoints, results: %s/results.json', w, w, w, w)
    return results


# ---------------------------------------------------------------------------------------------
# OS failures in one line.
# ---------------------------------------------------------------------------------------------

# errno -> what to do about it.
_FIXES = {
    errno.ENOSPC: 'free space on that file system (or move the workdir to a larger one) and '
                  'rerun the same command to resume',
    errno.EDQUOT: 'free space within your disk quota (or move the workdir) and rerun the same '
                  'command to resume',
    errno.EROFS: 'the file system is read-only: choose a writable --workdir',
    errno.EACCES: 'no permission to write there: choose a --workdir you may write to',
    errno.EPERM: 'no permission to write there: choose a --workdir you may write to',
    errno.EEXIST: 'something else created that path: remove it, or use another --workdir',
    errno.ENOENT: 'a directory of the run vanished while it ran: rerun the same command (it '
                  'resumes from the last complete checkpoint, or starts again where none is left)',
    errno.ENOTDIR: 'a part of the path is a regular file: choose another --workdir',
}
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='?(\d+)")
_TENSORSTORE_PATH = re.compile(r'(?:Error writing local file|Failed writing:|file) "([^"]+)"')


def _chain(exc: BaseException):
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    yield exc
    exc = exc.__cause__ or exc.__context__


def _kept_checkpoints(path: str | None, workdir: str | None) -> str:
  """What is left of the run's checkpoints after a failed write, as found on disk (a vanished
  workdir has none left, whatever Orbax's atomic writes promise)."""
  parts = path.split(os.sep) if path else []
  if 'checkpoints' in parts:
    root = os.sep.join(parts[:parts.index('checkpoints') + 1])
  elif workdir:
    root = os.path.join(workdir, 'checkpoints')
  else:
    return 'complete checkpoints are intact (Orbax writes them atomically)'
  if fetch.is_remote(root):
    return 'complete checkpoints are intact (Orbax writes them atomically)'
  try:
    steps = [int(n) for n in os.listdir(root) if n.isdigit()]
  except OSError:
    return f'no checkpoint is left ({root} is gone)'
  if not steps:
    return f'no complete checkpoint is in {root}'
  return f'the last complete checkpoint (step {max(steps)}) is intact'


def os_failure(exc: BaseException, workdir: str | None = None) -> str | None:
  """One line for an OS failure anywhere in `exc`'s chain, raised by any writer of the run
  (Orbax and TensorStore, the metric writers, the JSON records): what failed, the path and the
  fix (None if it is not one). `workdir` names the place when the failure does not say which
  file it was."""
  for e in _chain(exc):
    code, path = None, None
    if isinstance(e, OSError) and e.errno in _FIXES:
      code, path = e.errno, e.filename
    else:
      m = _TENSORSTORE_ERRNO.search(str(e))
      if m and int(m.group(1)) in _FIXES:
        code = int(m.group(1))
        found = _TENSORSTORE_PATH.findall(str(e))
        path = found[-1] if found else None
    if code is not None:
      path = path or workdir
      where = f' ({path})' if path else ''
      return (f'{os.strerror(code)} while writing the run{where}: {_FIXES[code]}; '
              f'{_kept_checkpoints(path, workdir)}.')
  if workdir and not fetch.is_remote(workdir) and not os.path.isdir(workdir):
    # Whatever a writer raised, the cause is the vanished workdir (Orbax, for one, may fail on
    # the metadata it can no longer find rather than on the directory).
    return (f'The workdir {workdir} vanished while the run wrote to it ({type(exc).__name__}): '
            'rerun the same command to start again; no checkpoint is left.')
  return None
