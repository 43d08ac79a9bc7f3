"""Metrics a person can plot: JSON lines, TensorBoard event files (no TensorFlow), progress lines.

Only process 0 writes files. Every record is one JSON object per line in `workdir/metrics.jsonl`
(`{"step": ..., "split": "train"|"eval", ...}`) and the same scalars go to TensorBoard event files
in `workdir/tb/` through tensorboardX. `Progress` turns step counts and wall time into steps/s,
images/s and an ETA for the console.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging


def _to_python(value):
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  return value


class MetricWriter:
  """Writes scalars to `metrics.jsonl` and TensorBoard; a no-op on processes other than 0."""

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', buffering=1)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tb'), flush_secs=30)
    except ImportError:  # TensorBoard files are optional; JSON lines always exist.
      logging.warning('tensorboardX not installed: no TensorBoard event files.')

  def write(self, step: int, split: str, scalars: Mapping[str, Any]):
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, 'time': time.time()}
    record.update({k: _to_python(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    if self._tb is not None:
      for k, v in scalars.items():
        if isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(float(v)):
          self._tb.add_scalar(f'{split}/{k}', float(v), int(step))

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


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
