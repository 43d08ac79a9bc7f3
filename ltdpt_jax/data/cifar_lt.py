"""CIFAR-100-LT: the exponential per-class profile and the seeded choice of training images.

`cifar_lt_counts` gives the images per class and `cifar_lt_indices` the images kept, as LDAM-DRW
(Cao et al. 2019) builds the benchmark; the test split stays whole (100 images per class).
"""

from __future__ import annotations

import numpy as np

from ltdpt_jax.data import longtail

CIFAR100_NUM_CLASSES = 100
CIFAR100_TRAIN_PER_CLASS = 500


def cifar_lt_counts(ratio: float, *, max_count: float = CIFAR100_TRAIN_PER_CLASS,
                    num_classes: int = CIFAR100_NUM_CLASSES) -> np.ndarray:
  """Training images per class of CIFAR-100-LT: int(max_count * (1/ratio)^(i/99)) (int64).

  Totals for max_count 500: 9,502 / 10,847 / 12,608 / 19,573 at ratios 200 / 100 / 50 / 10.
  """
  return longtail.exponential_counts(max_count, ratio, num_classes)


def cifar_lt_indices(labels: np.ndarray, ratio: float, *, seed: int = 0,
                     max_count: float | None = None,
                     num_classes: int = CIFAR100_NUM_CLASSES) -> np.ndarray:
  """Positions (in the original training order) of the images CIFAR-100-LT keeps, LDAM order.

  As LDAM-DRW's IMBALANCECIFAR100: a legacy NumPy RNG seeded once with `seed`; the classes are
  visited in ascending label order, and for each the positions of that class in the original
  training order (ascending) are shuffled in place with that RNG and the first n_i kept. Every
  class is shuffled, also those kept whole, so the RNG stream matches. The kept images are
  concatenated class by class. `labels` must be in the original CIFAR-100 order (the record's
  position in the original training file; `sources.cifar100_lt_sources` recovers it from tfds'
  `id` feature, since the prepared tfds files are shuffled).

  Args:
    labels: fine labels of the full training split in the original CIFAR order.
    ratio: imbalance ratio (200, 100, 50 or 10 in the paper).
    seed: LDAM's `rand_number` (seeds `np.random.RandomState`, the same stream as
      `np.random.seed(seed); np.random.shuffle`).
    max_count: n_max; default len(labels) / num_classes, as LDAM computes it (500 on CIFAR-100).
    num_classes: number of classes; every class must be present in `labels`.

  Returns:
    int64 positions into `labels`, class 0's first, each class in its shuffled order.
  """
  labels = np.asarray(labels, np.int64)
  present = np.unique(labels)
  if not np.array_equal(present, np.arange(num_classes)):
    missing = sorted(set(range(num_classes)) - set(present.tolist()))
    extra = sorted(set(present.tolist()) - set(range(num_classes)))
    raise ValueError(f'CIFAR-LT needs every class 0..{num_classes - 1} in the training labels '
                     f'(missing: {missing[:10]}{"..." if len(missing) > 10 else ""}; '
                     f'labels outside the range: {extra[:10]}).')
  if max_count is None:
    max_count = len(labels) / num_classes
  counts = cifar_lt_counts(ratio, max_count=max_count, num_classes=num_classes)
  rng = np.random.RandomState(seed)
  kept = []
  for c, n in zip(range(num_classes), counts):
    idx = np.where(labels == c)[0]
    rng.shuffle(idx)
    if n > len(idx):
      raise ValueError(f'CIFAR-LT class {c} needs {n} training images but the split has '
                       f'{len(idx)}; pass a smaller max_count.')
    kept.append(idx[:n])
  return np.concatenate(kept).astype(np.int64)
