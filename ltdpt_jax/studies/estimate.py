"""How long a run of a paper benchmark takes on an accelerator, from its FLOP count: an estimate.

`run_flops(config)` is the run's training and evaluation FLOPs (the model's analytic FLOPs per
image, `models.flops.analytic_flops`, times the images the schedule visits); `hours` divides
them by a sustained FLOP rate, by default half the bf16 dense peak of an H100 / H200 (989
TFLOP/s), the rate our GPU figures assume until the GPU benchmark has measured one.
"""

from __future__ import annotations

from typing import Any

from ltdpt_jax.data import cifar_lt

GPU_PEAK_FLOPS = 989e12  # H100 SXM / H200, bf16 dense
SUSTAINED_FRACTION = 0.5

# (training images, evaluation images) of the benchmarks: the OLTR lists' train and test files,
# iNat2018's official train / validation, CIFAR-100's test set (its train set: `cifar_lt_counts`).
SIZES = {'imagenet_lt': (115_846, 50_000), 'places_lt': (62_500, 36_500),
         'inat2018': (437_513, 24_426)}


def dataset_sizes(data) -> tuple[int, int] | None:
  """(train, eval) images of a paper benchmark's data section; None for any other dataset."""
  if data.dataset == 'cifar100_lt':
    return int(cifar_lt.cifar_lt_counts(float(data.imbalance_ratio)).sum()), 10_000
  return SIZES.get(data.dataset)


def run_flops(config) -> dict[str, Any] | None:
  """{'train', 'eval', 'total'} FLOPs of a run of `config` (the model's analytic train-step and
  forward FLOPs per image; every epoch's training images, every evaluation's eval images), or
  None for a dataset without known sizes."""
  from ltdpt_jax import models  # pylint: disable=g-import-not-at-top
  from ltdpt_jax.data import sources  # pylint: disable=g-import-not-at-top
  from ltdpt_jax.models import flops  # pylint: disable=g-import-not-at-top
  sizes = dataset_sizes(config.data)
  if sizes is None:
    return None
  num_train, num_eval = sizes
  size = int(config.data.image_size)
  model = models.build_model(config.model, sources.NUM_CLASSES[config.data.dataset], size)
  per_image = flops.analytic_flops(model, size)
  epochs = int(config.train.epochs)
  evals = epochs // int(config.train.eval_every_epochs) + (
      epochs % int(config.train.eval_every_epochs) != 0)
  train = epochs * (num_train // int(config.data.batch_size)) * int(
      config.data.batch_size) * per_image['train']
  evaluate = evals * num_eval * per_image['forward']
  return {'train': float(train), 'eval': float(evaluate), 'total': float(train + evaluate),
          'per_image_train': float(per_image['train'])}


def hours(total_flops: float, flops_per_s: float = GPU_PEAK_FLOPS * SUSTAINED_FRACTION) -> float:
  return total_flops / flops_per_s / 3600.0
