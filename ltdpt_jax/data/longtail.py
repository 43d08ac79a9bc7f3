"""Long-tailed class profiles: `exponential_counts`, the exponential profile of LDAM-DRW.

The head / medium / tail grouping of the evaluation is `ltdpt_jax.evaluators.longtail.shot_groups`.
"""

from __future__ import annotations

import numpy as np


def exponential_counts(max_count: float, ratio: float, num_classes: int) -> np.ndarray:
  """Per-class counts n_i = int(max_count * (1/ratio)^(i/(K-1))), i = 0..K-1 (int64).

  The exponential profile of Cao et al. 2019 (LDAM-DRW's `get_img_num_per_cls`), computed in
  Python float64 and truncated towards zero; class 0 is the head.

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
