"""Metrics a person can plot: JSON lines, TensorBoard event files (no TensorFlow), progress lines,
and the JSON records of a run (`write_json`, `read_json`).

Only process 0 writes files: `MetricWriter` appends one JSON object per record to
`workdir/metrics.jsonl` (`{"step": ..., "split": "train"|"eval", ...}`) and the same scalars to
TensorBoard event files in `workdir/tb/` (tensorboardX). `Progress` turns step counts and wall
time into steps/s, images/s and an ETA for the console.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import tempfile
import time
import uuid
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from etils import epath

from ltdpt_jax.fetch import is_remote


def _to_python(value):
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  return value


def write_json(path: str, obj: Any):
  """Writes JSON atomically (temp file + rename), on process 0 only; local or gs:// paths."""
  if jax.process_index() != 0:
    return
  path = epath.Path(path)
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(obj, indent=1))
  tmp.replace(path)


def read_json(path: str) -> Any | None:
  """The JSON in `path`, or None when there is no such file."""
  path = epath.Path(path)
  return json.loads(path.read_text()) if path.exists() else None


def drop_records_after(path: str, step: int) -> int:
  """Rewrites a JSON-lines file without the records of steps after `step` (and without lines
  that do not parse, such as a line cut short by a full disk); returns how many were dropped."""
  with open(path) as f:
    lines = f.read().splitlines()
  keep = []
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and int(record.get('step', 0)) <= step:
      keep.append(line)
  dropped = len(lines) - len(keep)
  if dropped:
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
      f.write(''.join(line + '\n' for line in keep))
    os.replace(tmp, path)
  return dropped


class MetricWriter:
  """Writes scalars to `metrics.jsonl` and TensorBoard; a no-op on processes other than 0.

  A local workdir gets its files directly (JSON lines appended, one per record, so a resumed run
  continues the same file). A remote workdir (gs://, where Cloud TPU runs put theirs) cannot be
  appended to: both files are written to a local staging directory and copied to the workdir
  (`etils.epath`) at most every `sync_every_s` seconds and on `flush`/`close`.

  `resume_step`: the run resumes from the checkpoint of that step, so the records of later steps
  (written before the run was stopped or killed) are dropped from `metrics.jsonl`, and TensorBoard
  is told to drop them from the earlier event files (a `SessionLog.START` event at that step,
  which TensorBoard answers by purging the events of later steps): each step appears once.
  """

  def __init__(self, workdir: str, *, enabled: bool | None = None, sync_every_s: float = 60.0,
               resume_step: int | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    self._workdir = str(workdir)
    self._staging = None
    self._sync_every_s = sync_every_s
    self._last_sync = time.monotonic()
    if not self.enabled:
      return
    if is_remote(self._workdir):
      self._staging = tempfile.mkdtemp(prefix='ltdpt_metrics_')
      remote_jsonl = epath.Path(self._workdir) / 'metrics.jsonl'
      if remote_jsonl.exists():  # a resumed run appends to the records of the earlier ones
        pathlib.Path(self._staging, 'metrics.jsonl').write_bytes(remote_jsonl.read_bytes())
      local = self._staging
    else:
      os.makedirs(self._workdir, exist_ok=True)
      local = self._workdir
    jsonl = os.path.join(local, 'metrics.jsonl')
    if resume_step is not None and os.path.exists(jsonl):
      dropped = drop_records_after(jsonl, resume_step)
      if dropped:
        logging.info('Dropped %d metric records after step %d (written after that checkpoint).',
                     dropped, resume_step)
    self._jsonl = open(jsonl, 'a', buffering=1)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      # The default name (time in seconds + host) can repeat; a repeat would replace a file.
      self._tb = SummaryWriter(os.path.join(local, 'tb'), flush_secs=30,
                               filename_suffix=f'.{os.getpid()}.{uuid.uuid4().hex[:8]}')
    except ImportError:  # TensorBoard files are optional; JSON lines always exist.
      logging.warning('tensorboardX not installed: no TensorBoard event files.')
    if self._tb is not None and resume_step is not None:
      from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
      self._tb.file_writer.add_event(event_pb2.Event(
          step=int(resume_step), session_log=event_pb2.SessionLog(
              status=event_pb2.SessionLog.START)))

  def write(self, step: int, split: str, scalars: Mapping[str, Any]):
    """One record: JSON gets every value (None as null); TensorBoard the finite numbers."""
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, 'time': time.time()}
    record.update({k: _to_python(v) for k, v in scalars.items()})
    try:
      self._jsonl.write(json.dumps(record) + '\n')
    except OSError as e:  # say which file: a full disk shows up here first
      raise OSError(e.errno, e.strerror, self._jsonl.name) from e
    if self._tb is not None:
      for k, v in scalars.items():
        if (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            and math.isfinite(float(v))):
          self._tb.add_scalar(f'{split}/{k}', float(v), int(step))
    if self._staging and time.monotonic() - self._last_sync > self._sync_every_s:
      self.flush()

  def flush(self):
    if self._tb is not None:
      self._tb.flush()
    if self._jsonl is not None:
      self._jsonl.flush()
    self._sync()

  def _sync(self):
    """Copies the staged files to a remote workdir (whole files; nothing to do when local)."""
    if not self._staging:
      return
    dest = epath.Path(self._workdir)
    dest.mkdir(parents=True, exist_ok=True)
    for root, _, files in os.walk(self._staging):
      rel = os.path.relpath(root, self._staging)
      target = dest if rel == '.' else dest / rel
      target.mkdir(parents=True, exist_ok=True)
      for name in files:
        (target / name).write_bytes(pathlib.Path(root, name).read_bytes())
    self._last_sync = time.monotonic()

  def close(self):
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._staging:
      self._sync()
      shutil.rmtree(self._staging, ignore_errors=True)
      self._staging = None


class Progress:
  """Steps/s, images/s and ETA over the interval since the last report (big_vision's Chrono)."""

  def __init__(self, total_steps: int, global_batch: int, first_step: int = 0):
    self.total_steps = total_steps
    self.global_batch = global_batch
    self._last_step = first_step
    self._last_time = time.perf_counter()
    self._start_time = self._last_time
    self._first_step = first_step
    self.paused = 0.0  # seconds spent in evaluation/checkpointing since the last report

  def report(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    dt = max(now - self._last_time - self.paused, 1e-9)
    steps = step - self._last_step
    steps_per_s = steps / dt
    remaining = self.total_steps - step
    out = {
        'steps_per_s': steps_per_s,
        'images_per_s': steps_per_s * self.global_batch,
        'eta_s': remaining / steps_per_s if steps_per_s > 0 else float('inf'),
        'elapsed_s': now - self._start_time,
    }
    self._last_step, self._last_time, self.paused = step, now, 0.0
    return out


def format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'
