"""The run directory: made sure to be writable, and held by one run at a time.

* `prepare(workdir)`: creates the directory (and its parents) and writes and removes a probe
  file, before anything is built, so an unwritable `--workdir` (a read-only file system, a path
  under a regular file, no permission) fails at once in one line (`WorkdirError`), not after
  the model was built.
* `os_failure(exception)`: the one line for an OS failure (a full disk, a read-only or
  unwritable file system, a vanished directory) raised by any writer of the run (Orbax and
  TensorStore, the metric writers, the JSON records): what failed, the path and the fix.
* `config_changes(stored, current)`: how a config differs from the one stored with a checkpoint,
  split into the changes that cannot change what a run computes (`RESUME_ALLOWED`: logging,
  checkpoint and evaluation periods, eval batch size, worker count, data paths, where the
  training crop runs (bit-identical either way), the path of the
  backbone file, whose SHA-256 is checked separately) and the others, which a resume refuses
  unless `--allow_config_change`; `record_config_change` writes an accepted change into the
  workdir (`config.json` becomes the config that runs on, `config_changes.jsonl` keeps every
  change with both values), so the workdir always says what ran.
* `check_shared(workdir)`: a multi-host run needs one workdir that every host sees (a gs://
  bucket, or a shared file system mounted at the same path): with a local disk on each host,
  each would hold only its part of every checkpoint. Process 0 writes a probe file, every
  process looks for it, and all of them refuse the run in one line when any cannot see it.
* `WorkdirLock(workdir)`: an exclusive `fcntl.flock` on `<workdir>/.lock`, taken before any
  work and held until the run ends. The kernel releases it when the process dies, however it
  dies (kill -9 included), so a stale lock never blocks a restart. A second run on the same
  workdir is refused in one line naming the holder's PID and host (`WorkdirBusy`). The lock file
  keeps the holder's PID, host and start time (it is never deleted: deleting it would let two
  runs lock two different files). Multi-host runs: process 0 takes it, the others learn the
  outcome from it. Remote workdirs (gs://) have no flock: a warning says so.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import fnmatch
import json
import os
import re
import socket
import time
import uuid

from absl import logging

from ltdpt_jax import fetch

LOCK_NAME = '.lock'


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
  """Creates `workdir` and checks that files can be written in it (see the module docstring).

  Returns the directories it created (outermost first), for `remove_if_unused`.
  """
  if fetch.is_remote(workdir):
    from etils import epath  # pylint: disable=g-import-not-at-top
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
  writes in `workdir` (see the module docstring); nothing to check on one process."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
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
  """The exclusive lock of a workdir (see the module docstring); a context manager."""

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

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


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
    errno.ENOENT: 'a directory of the run vanished while it ran: restore it, or use another '
                  '--workdir',
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


def _last_complete_step(path: str, workdir: str | None) -> int | None:
  parts = path.split(os.sep)
  if 'checkpoints' in parts:
    root = os.sep.join(parts[:parts.index('checkpoints') + 1])
  elif workdir:
    root = os.path.join(workdir, 'checkpoints')
  else:
    return None
  try:
    steps = [int(n) for n in os.listdir(root) if n.isdigit()]
  except OSError:
    return None
  return max(steps) if steps else None


def os_failure(exc: BaseException, workdir: str | None = None) -> str | None:
  """One line for an OS failure anywhere in `exc`'s chain (None if it is not one); `workdir`
  names the place when the failure does not say which file it was."""
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
      step = _last_complete_step(path, workdir) if path else None
      kept = (f'the last complete checkpoint (step {step}) is intact' if step is not None
              else 'complete checkpoints are intact (Orbax writes them atomically)')
      return f'{os.strerror(code)} while writing the run{where}: {_FIXES[code]}; {kept}.'
  return None


# Config keys (fnmatch patterns over dotted names) that may differ when a run resumes: they
# change how often things are logged, saved or evaluated, where files are read from, or how fast
# the input is read, never what the run computes. The backbone file's path may change
# (model.checkpoint): its SHA-256, recorded at the start, is checked instead. The attention
# implementation, its padding and remat change the float rounding only (a run may move between
# a GPU with cuDNN and a TPU); model.dtype changes more and is refused.
RESUME_ALLOWED = (
    'train.log_every_steps', 'train.checkpoint_every_steps', 'train.keep_checkpoints',
    'train.eval_every_epochs', 'train.plots', 'train.attention_stats', 'evals.*',
    'data.eval_batch_size', 'data.num_workers', 'data.data_dir', 'data.split_dir',
    'data.crop_on_device', 'model.checkpoint', 'model.checkpoint_sha256',
    'model.attention', 'model.pad_attention_to', 'model.remat', 'model.remat_policy',
)
# Config keys added after runs were already being written, with the value that gives what runs
# without the key did: a stored config without the key compares as if it held this value.
ADDED_KEYS = {'data.crop_on_device': None, 'data.synthetic_image_size': 0}
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
  """Appends the change to `config_changes.jsonl` and makes `config.json` the new config."""
  from etils import epath  # pylint: disable=g-import-not-at-top
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
