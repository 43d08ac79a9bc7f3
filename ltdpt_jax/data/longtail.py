"""Long-tailed class profiles and the head / medium / tail grouping (SPEC "Evaluation").

`exponential_counts` is the exponential profile of Cao et al. 2019 (LDAM-DRW,
`kaidic/LDAM-DRW: imbalance_cifar.py`, `get_img_num_per_cls`):
n_i = int(n_max * (1 / ratio) ** (i / (K - 1))), computed in Python float64 and truncated towards
zero, class 0 being the head. `shot_groups` splits classes by their number of *training* images
with the convention of `facebookresearch/classifier-balancing: utils.py` (`shot_acc`), the one the
paper states: head > 100, medium 20..100 (both ends included), tail < 20.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Head: more than HEAD_MIN training images; tail: fewer than TAIL_MAX; medium: in between,
# both boundaries included (a class with exactly 100 or exactly 20 images is medium).
HEAD_MIN = 100
TAIL_MAX = 20


def exponential_counts(max_count: float, ratio: float, num_classes: int) -> np.ndarray:
  """Per-class counts n_i = int(max_count * (1/ratio)^(i/(K-1))), i = 0..K-1 (int64).

  Args:
    max_count: images of the largest (first) class; LDAM's `img_max`, may be a float.
    ratio: imbalance ratio n_max / n_min (>= 1); 1 gives a balanced profile.
    num_classes: K >= 1.
  """
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}.')
  if not ratio >= 1:
    raise ValueError(f'imbalance ratio must be >= 1 (n_max / n_min), got {ratio}.')
  if not max_count >= 1:
    raise ValueError(f'max_count must be >= 1, got {max_count}.')
  imb_factor = 1.0 / float(ratio)
  if num_classes == 1:
    return np.array([int(max_count)], np.int64)
  # Python floats (float64), the same expression and order of operations as LDAM-DRW.
  return np.array([int(max_count * (imb_factor ** (i / (num_classes - 1.0))))
                   for i in range(num_classes)], np.int64)


def shot_groups(class_counts: Sequence[int] | np.ndarray, *, head_min: int = HEAD_MIN,
                tail_max: int = TAIL_MAX) -> dict[str, np.ndarray]:
  """Class indices of the head (> head_min), medium (tail_max..head_min) and tail (< tail_max).

  Groups are always defined by the number of *training* images per class. A group may be empty
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
