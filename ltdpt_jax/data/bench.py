r"""Throughput of the training input pipeline (images/s) on the synthetic source.

  python -m ltdpt_jax.data.bench --image_size=224 --batch_size=128 --steps=30 --workers=0,2

For each worker count it builds `make_train_iterator` on the synthetic dataset (images generated
on the fly at `image_size`, then RandomResizedCrop + flip to `image_size`), discards `warmup`
batches (worker start-up), and times `steps` batches. It also reports how long generating one
synthetic image takes, to tell source cost from transform cost. Real datasets add JPEG/PNG decoding
(about 1-3 ms per 256-px image per core) instead of the generation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from absl import app
from absl import flags

from ltdpt_jax import config_lib
from ltdpt_jax.data import pipeline
from ltdpt_jax.data import synthetic

_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Output (and synthetic) image size.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Batch size (one process).')
_STEPS = flags.DEFINE_integer('steps', 30, 'Timed batches per setting.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed batches first (worker start-up).')
_WORKERS = flags.DEFINE_list('workers', ['0', '-1'], 'Worker counts to try (-1 = automatic).')


def bench_config(image_size: int = 224, batch_size: int = 128, workers: int = 0):
  """A synthetic-data config for the benchmark (20 classes, ratio 10, 600 images per head)."""
  c = config_lib.base_config()
  c.data.dataset = 'synthetic'
  c.data.image_size = image_size
  c.data.batch_size = batch_size
  c.data.num_workers = workers
  c.data.num_classes = 20
  c.data.imbalance_ratio = 10.0
  c.data.num_train_max = 600
  return c


def source_ms_per_image(image_size: int = 224, n: int = 100) -> float:
  """Milliseconds to generate one synthetic image (single thread)."""
  src = synthetic.SyntheticLT('train', image_size=image_size, num_train_max=600,
                              imbalance_ratio=10.0)
  src[0]
  t0 = time.perf_counter()
  for i in range(n):
    src[(i * 7) % len(src)]
  return (time.perf_counter() - t0) / n * 1e3


def train_images_per_second(image_size: int = 224, batch_size: int = 128, workers: int = 0,
                            steps: int = 30, warmup: int = 3) -> float:
  """Images/s of `make_train_iterator` (one process) after `warmup` batches."""
  it = pipeline.make_train_iterator(bench_config(image_size, batch_size, workers),
                                    process_index=0, process_count=1)
  try:
    for _ in range(warmup):
      next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
      batch = next(it)
      assert batch['image'].shape == (batch_size, image_size, image_size, 3)
    return steps * batch_size / (time.perf_counter() - t0)
  finally:
    it.close()


def main(argv: Sequence[str]) -> None:
  del argv
  size, bs = _IMAGE_SIZE.value, _BATCH.value
  print(f'synthetic source: {source_ms_per_image(size):.2f} ms per {size}px image (1 thread)')
  for w in _WORKERS.value:
    workers = pipeline.num_workers(int(w))
    ips = train_images_per_second(size, bs, workers, _STEPS.value, _WARMUP.value)
    print(f'train pipeline, {size}px, batch {bs}, workers={workers}: {ips:,.0f} images/s')


if __name__ == '__main__':
  app.run(main)
