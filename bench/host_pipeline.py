r"""What one input worker (one host core) delivers, and how many feed an accelerator.

  python bench/host_pipeline.py --seconds=10 [--target=7000] [--out=host.json]

Times, in this one process (one grain worker does exactly this per example, in its own process),
the per-example host work of the training pipeline (`data.pipeline.TrainExample`: the source
read, `transforms.train_transform`: RandomResizedCrop (0.08, 1) + flip to 224 px with Pillow),
plus the batch's `np.stack`:

* cifar: CIFAR-100-LT records, 32 x 32 uint8 arrays held in memory (what the tfds/ArrayRecord
  source hands over), cropped and upsampled to 224.
* jpeg: ImageNet-sized JPEG files (500 x 375, quality 90, written by this script to a temporary
  folder: the benchmark makes its own) decoded with Pillow (`files.decode_image`, the
  image-folder path) and cropped to 224.

Prints images/s per worker and the workers (host cores) needed for `--target` images/s
(default 7,000: half the peak of one H200 for the ViT-B/16 step, README "Benchmark"), assuming
the workers scale linearly (they are processes; the host's memory bandwidth and the device
transfer are not in this measurement: 7,000 x 224 x 224 x 3 bytes = 1.05 GB/s of uint8 batches).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from ltdpt_jax.data import files
from ltdpt_jax.data import transforms


def _rate(make_example, seconds: float, batch: int = 64) -> float:
  """Examples per second of make_example(i), batched by `batch` with np.stack, over ~seconds."""
  for i in range(8):  # warm-up (Pillow's codecs, caches)
    make_example(i)
  n, t0, i = 0, time.perf_counter(), 0
  while time.perf_counter() - t0 < seconds:
    np.stack([make_example(i + j) for j in range(batch)])
    i += batch
    n += batch
  return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--seconds', type=float, default=10.0, help='Timed seconds per path.')
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--target', type=float, default=7000.0, help='images/s to feed.')
  p.add_argument('--num_jpegs', type=int, default=64)
  p.add_argument('--out', default=None)
  args = p.parse_args(argv)
  rng = np.random.default_rng(0)
  results = {}

  cifar = rng.integers(0, 256, (512, 32, 32, 3), dtype=np.uint8)
  results['cifar'] = _rate(
      lambda i: transforms.train_transform(cifar[i % len(cifar)], args.size,
                                           np.random.default_rng(i)), args.seconds)

  with tempfile.TemporaryDirectory() as tmp:
    paths = []
    for k in range(args.num_jpegs):
      # A smooth image plus noise: JPEG sizes like a photograph's (~100 KB at 500 x 375).
      yy, xx = np.mgrid[0:375, 0:500]
      base = np.stack([(xx * (k + 1)) % 256, (yy * 3) % 256, (xx + yy) % 256], -1)
      img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
      path = os.path.join(tmp, f'{k}.jpg')
      Image.fromarray(img).save(path, quality=90)
      paths.append(path)
    jpeg_kb = np.mean([os.path.getsize(q) for q in paths]) / 1024
    results['jpeg'] = _rate(
        lambda i: transforms.train_transform(files.decode_image(paths[i % len(paths)]),
                                             args.size, np.random.default_rng(i)), args.seconds)

  record = {'size': args.size, 'target_images_per_s': args.target, 'jpeg_kb': round(jpeg_kb, 1),
            'load1': os.getloadavg()[0], 'paths': {}}
  print(f'| path | images/s per worker | workers (cores) for {args.target:,.0f} images/s |')
  print('|---|---|---|')
  for name, ips in results.items():
    need = math.ceil(args.target / ips)
    record['paths'][name] = {'images_per_s_per_worker': ips, 'workers_for_target': need}
    label = {'cifar': 'CIFAR-100-LT: 32 px array -> RandomResizedCrop 224 + flip',
             'jpeg': f'JPEG 500 x 375 ({jpeg_kb:.0f} KB) decode -> RandomResizedCrop 224 + flip'}
    print(f'| {label[name]} | {ips:,.0f} | {need} |')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(record, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
