"""CIFAR-100-LT: the exponential per-class profile and the seeded choice of training images.

Follows `kaidic/LDAM-DRW: imbalance_cifar.py` (Cao et al. 2019) exactly:
  1. n_max = len(train) / 100 (500 on the real data), n_i = int(n_max * (1/ratio)^(i/99));
  2. a legacy NumPy RNG seeded once with `seed` (LDAM's `rand_number`, default 0);
  3. classes visited in ascending label order; for each, the positions of that class in the
     original CIFAR-100 training order, ascending, are shuffled in place with that RNG and the
     first n_i kept (every class is shuffled, also those kept whole, so the RNG stream matches);
  4. the kept images are concatenated class by class.
The test split stays whole (10,000 images, 100 per class).

The original order is recovered from tfds `cifar100`'s `id` feature (`train_%05d`, the record's
position in `cifar-100-binary/train.bin`): the prepared tfds files are shuffled on disk, so the
records are sorted by that number first (see `ltdpt_jax.data.sources`).
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
