"""Long-tailed classification evaluator: top-1, head / medium / tail and per-class accuracy.

`Evaluator` counts correct predictions per class over the eval split in one jitted step per
batch (big_vision's classification evaluator style); `summarize_eval` turns the counts into the
record and `shot_groups` defines the head / medium / tail classes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ltdpt_jax import data as data_lib
from ltdpt_jax import metrics as metrics_lib
from ltdpt_jax import sharding

# Head: more than HEAD_MIN training images; tail: fewer than TAIL_MAX; medium: in between,
# both boundaries included (a class with exactly 100 or exactly 20 images is medium).
HEAD_MIN = 100
TAIL_MAX = 20
GROUPS = ('head', 'medium', 'tail')
MAX_CONFUSION_CLASSES = 100  # records of larger runs carry no confusion matrix


def shot_groups(class_counts: Sequence[int] | np.ndarray, *, head_min: int = HEAD_MIN,
                tail_max: int = TAIL_MAX) -> dict[str, np.ndarray]:
  """Class indices of the head (> head_min), medium (tail_max..head_min) and tail (< tail_max).

  Groups are defined by the number of *training* images per class (the convention the paper
  states, as `shot_acc` of Kang et al.'s classifier-balancing code). A group may be empty
  (CIFAR-100-LT at ratio 10 has no tail class); callers report it as not applicable.

  Returns:
    {'head': int64 indices, 'medium': ..., 'tail': ...}, each sorted ascending.
  """
  counts = np.asarray(class_counts)
  if counts.ndim != 1:
    raise ValueError(f'class_counts must be 1-D (one count per class), got shape {counts.shape}.')
  if head_min < tail_max:
    raise ValueError(f'head_min ({head_min}) must be >= tail_max ({tail_max}).')
  return {
      'head': np.flatnonzero(counts > head_min).astype(np.int64),
      'medium': np.flatnonzero((counts >= tail_max) & (counts <= head_min)).astype(np.int64),
      'tail': np.flatnonzero(counts < tail_max).astype(np.int64),
  }


def summarize_eval(correct: np.ndarray, count: np.ndarray, class_counts: np.ndarray, *,
                   class_names: Sequence[str] | None = None,
                   thresholds: tuple[int, int] = (TAIL_MAX, HEAD_MIN),
                   confusion: np.ndarray | None = None) -> dict[str, Any]:
  """Top-1, Head/Medium/Tail (sample-weighted, None = no class in that group) and per class.

  Top-1 is over every evaluation image; a group's accuracy is sample-weighted within the group
  and None (never 0) for a group with no class; 'per_class_accuracy' is None for a class without
  evaluation images, and 'mean_per_class_accuracy' their mean. The counts are exact integers.
  `thresholds` = (tail_max, head_min) (config.data.shot_thresholds). With `class_names`, also
  'per_class': [{name, train_count, eval_count, accuracy (None without eval images), group}].
  With `confusion` (C, C) counts (row: true class, column: predicted), also 'confusion'.
  """
  correct = np.asarray(correct, np.float64)
  count = np.asarray(count, np.float64)
  groups = shot_groups(class_counts, tail_max=int(thresholds[0]), head_min=int(thresholds[1]))
  out = {'accuracy': float(correct.sum() / max(count.sum(), 1.0)),
         'num_examples': int(count.sum())}
  for name in GROUPS:
    idx = np.asarray(groups[name], np.int64)
    n = count[idx].sum() if idx.size else 0.0
    out[f'{name}_accuracy'] = float(correct[idx].sum() / n) if n > 0 else None
    out[f'{name}_classes'] = int(idx.size)
  with np.errstate(invalid='ignore', divide='ignore'):
    per_class = np.where(count > 0, correct / np.maximum(count, 1.0), np.nan)
  out['per_class_accuracy'] = [None if math.isnan(v) else float(v) for v in per_class]
  out['mean_per_class_accuracy'] = float(np.nanmean(per_class)) if np.any(count > 0) else None
  if class_names is not None:
    group_of = {int(i): g for g in GROUPS for i in groups[g]}
    out['per_class'] = [{'name': str(name), 'train_count': int(n), 'eval_count': int(e),
                         'accuracy': acc, 'group': group_of[c]}
                        for c, (name, n, e, acc) in enumerate(zip(
                            class_names, class_counts, count, out['per_class_accuracy']))]
  if confusion is not None:
    out['confusion'] = np.asarray(confusion, np.int64).tolist()
  return out


def _percent(value: float | None) -> str:
  return 'n/a' if value is None else f'{100 * value:.2f}%'


class Evaluator:
  """Long-tailed classification on the config's eval split (or its validation split).

  One jitted step over the data-sharded eval batch counts, per class, the correct predictions
  and the examples; padding rows (`mask` False) count nowhere, so every image is counted exactly
  once whatever the device or process count. The counts are summed on the host. `run` writes the
  record `{step, epoch, **summarize_eval(...)}` to `<workdir>/<name>_<step>.json` (process 0) and
  logs a line; runs of up to MAX_CONFUSION_CLASSES classes also get the confusion matrix
  (`confusion[true][predicted]` counts).

  Args:
    predict_fn: (trainable, frozen, uint8 images) -> {'logits': (B, C), ...}, traceable
      (`train_step.make_predict_fn`).
    name: the evaluator's name in `config.evals`: the metrics prefix and the file name.
    frozen: the frozen parameters (replicated device arrays), passed to every step.
    mesh: the device mesh; batches are sharded over its 'data' axis.
    data: the config's data section (eval split, eval batch size, image size, workers).
    info: the dataset's `DatasetInfo` (class count and training counts for the groups).
    workdir: where `run` writes `<name>_<step>.json` (None: nothing written).
    split: 'eval' (the dataset's eval split) or 'val' (the images `data.val_fraction` holds out
      of training).
  """

  def __init__(self, predict_fn: Callable[..., dict[str, jax.Array]], *, name: str, frozen: Any,
               mesh: jax.sharding.Mesh, data, info: data_lib.DatasetInfo,
               workdir: str | None = None, split: str = 'eval'):
    self.name, self.frozen, self.data, self.info, self.workdir = name, frozen, data, info, workdir
    self.split = split
    self.class_names = (tuple(info.class_names) if info.class_names
                        else tuple(str(c) for c in range(info.num_classes)))
    self._batch_sharding = sharding.batch_sharded(mesh)
    num_classes = int(info.num_classes)
    # A confusion matrix for runs of up to MAX_CONFUSION_CLASSES classes (plotted by plot.py).
    self.with_confusion = num_classes <= MAX_CONFUSION_CLASSES

    def eval_step(trainable, frozen_params, batch):
      """Per-class (correct, count), int32 (C,), and the (C, C) confusion counts (or a (1, 1)
      placeholder); rows with mask False count nowhere."""
      cosine = predict_fn(trainable, frozen_params, batch['image'])['logits']
      mask = batch['mask'].astype(jnp.int32)
      predicted = jnp.argmax(cosine, -1).astype(jnp.int32)
      correct = (predicted == batch['label']).astype(jnp.int32) * mask
      labels = batch['label'].astype(jnp.int32)
      per_class_correct = jnp.zeros((num_classes,), jnp.int32).at[labels].add(correct)
      per_class_count = jnp.zeros((num_classes,), jnp.int32).at[labels].add(mask)
      if self.with_confusion:
        confusion = jnp.zeros((num_classes, num_classes), jnp.int32).at[labels, predicted].add(
            mask)
      else:
        confusion = jnp.zeros((1, 1), jnp.int32)
      return per_class_correct, per_class_count, confusion

    rep = sharding.replicated(mesh)
    self.eval_step = jax.jit(eval_step, in_shardings=(rep, rep, self._batch_sharding),
                             out_shardings=(rep, rep, rep))

  def counts(self, trainable: Any, *, with_confusion: bool = False):
    """Per-class (correct, count) over the whole eval split (and the confusion counts, or None
    beyond MAX_CONFUSION_CLASSES classes, with `with_confusion`)."""
    correct = count = jnp.zeros((self.info.num_classes,), jnp.int32)
    confusion = None
    for batch in data_lib.make_eval_iterator(self.data, split=self.split):
      batch = sharding.to_global({k: batch[k] for k in ('image', 'label', 'mask')},
                                 self._batch_sharding)
      c, n, m = self.eval_step(trainable, self.frozen, batch)
      correct, count = correct + c, count + n
      confusion = m if confusion is None else confusion + m
    out = (np.asarray(jax.device_get(correct)), np.asarray(jax.device_get(count)))
    if with_confusion:
      keep = self.with_confusion and confusion is not None
      return out + (np.asarray(jax.device_get(confusion)) if keep else None,)
    return out

  def record_path(self, step: int) -> str | None:
    return None if self.workdir is None else os.path.join(self.workdir, f'{self.name}_{step}.json')

  def run(self, trainable: Any, *, step: int, epoch: int) -> dict[str, Any]:
    """Evaluates `trainable`; writes and returns `{step, epoch, **summarize_eval(...)}`."""
    correct, count, confusion = self.counts(trainable, with_confusion=True)
    record = {'step': int(step), 'epoch': int(epoch),
              **summarize_eval(correct, count, self.info.class_counts,
                               class_names=self.class_names,
                               thresholds=tuple(self.data.get('shot_thresholds',
                                                              (TAIL_MAX, HEAD_MIN))),
                               confusion=confusion)}
    path = self.record_path(step)
    if path is not None:
      metrics_lib.write_json(path, record)
    logging.info('[%s step %d, epoch %d] top-1 %s | %s', self.name, step, epoch,
                 _percent(record['accuracy']),
                 ' | '.join(f'{g} {_percent(record[f"{g}_accuracy"])}' for g in GROUPS))
    return record
