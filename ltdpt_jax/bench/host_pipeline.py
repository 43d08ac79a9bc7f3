r"""What one input worker (one host core) delivers, and how many feed an accelerator.

  python -m ltdpt_jax.bench.host_pipeline --seconds=10 [--target=7000] [--out=host.json]

Times, in this one process, the per-example host work of the training pipeline
(`data.pipeline.TrainExample`) on each path of PATHS, plus the batch's `np.stack`, and the crop
on this machine's first JAX device; prints images/s per worker and the workers (host cores)
needed for `--target` images/s.
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

# What a worker does per example on each path (one grain worker does exactly this, in its own
# process): RandomResizedCrop (0.08, 1) + flip to --size px with Pillow
# (`transforms.train_transform`), or with config.data.crop_on_device only the crop numbers
# (`transforms.train_crop`), the crop then running in the train step.
PATHS = {
    'cifar': 'CIFAR-100-LT: 32 px array -> RandomResizedCrop {size} + flip',
    'cifar_device_crop': 'CIFAR-100-LT, crop_on_device: 32 px array + crop numbers',
    'jpeg': 'JPEG 500 x 375 ({jpeg_kb:.0f} KB) decode -> RandomResizedCrop {size} + flip',
}


def _rate(make_example, seconds: float, batch: int = 64, make_batch=None) -> float:
  """Examples per second of make_example(i), batched by `batch` with np.stack (or of
  make_batch(i, batch)), over ~seconds."""
  if make_batch is None:
    make_batch = lambda i, b: np.stack([make_example(i + j) for j in range(b)])
  make_batch(0, 8)  # warm-up (Pillow's codecs, caches)
  n, t0, i = 0, time.perf_counter(), 0
  while time.perf_counter() - t0 < seconds:
    make_batch(i, batch)
    i += batch
    n += batch
  return n / (time.perf_counter() - t0)


def _device_crop(cifar: np.ndarray, size: int, batch: int, seconds: float) -> dict:
  """The train step's part of the crop-on-device path, alone on the first JAX device
  (`device_transforms.resized_crop`, jitted), and its FLOPs (`device_transforms.crop_flops`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from ltdpt_jax.data import device_transforms  # pylint: disable=g-import-not-at-top
  images = np.resize(cifar, (batch,) + cifar.shape[1:])
  height, width = cifar.shape[1:3]
  crops = np.stack([transforms.train_crop(height, width, np.random.default_rng(i))
                    for i in range(batch)])
  fn = jax.jit(lambda x, c: device_transforms.resized_crop(x, c, size))
  x, c = jax.device_put(images), jax.device_put(crops)
  compiled = fn.lower(x, c).compile()
  compiled(x, c).block_until_ready()
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    compiled(x, c).block_until_ready()
    n += batch
  dev = jax.devices()[0]
  return {'device': f'{dev.platform}:{dev.device_kind}', 'batch': batch,
          'images_per_s': n / (time.perf_counter() - t0),
          'flops_per_image': device_transforms.crop_flops(height, width, size)}


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--seconds', type=float, default=10.0, help='Timed seconds per path.')
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--target', type=float, default=7000.0,
                 help='images/s to feed (default: half the peak of one H200 for the ViT-B/16 '
                      'step, README "Benchmark").')
  p.add_argument('--num_jpegs', type=int, default=64)
  p.add_argument('--device_batch', type=int, default=256,
                 help='Batch of the crop-on-device timing on the JAX device.')
  p.add_argument('--out', default=None)
  return p.parse_args(argv)


def _cifar_rates(cifar: np.ndarray, args) -> dict[str, float]:
  """CIFAR-100-LT records (32 x 32 uint8 arrays held in memory, what the tfds/ArrayRecord
  source hands over) cropped and upsampled on the host, or shipped as stored with their crop
  numbers (3 KB, not 150 KB, per image)."""
  def ship_batch(i, batch):  # pipeline.TrainExample with crop_on_device: stored image + crop
    images = [transforms.as_rgb(cifar[(i + j) % len(cifar)]) for j in range(batch)]
    crops = [transforms.train_crop(32, 32, np.random.default_rng(i + j)) for j in range(batch)]
    return np.stack(images), np.stack(crops)

  crop_on_host = _rate(
      lambda i: transforms.train_transform(cifar[i % len(cifar)], args.size,
                                           np.random.default_rng(i)), args.seconds)
  return {'cifar': crop_on_host,
          'cifar_device_crop': _rate(None, args.seconds, make_batch=ship_batch)}


def _jpeg_rate(rng, args) -> tuple[float, float]:
  """(images/s, mean KB) of ImageNet-sized JPEG files (500 x 375, quality 90, written here to a
  temporary folder) decoded with Pillow (`files.decode_image`, the image-folder path) and
  cropped to --size."""
  with tempfile.TemporaryDirectory() as tmp:
    paths = [_write_jpeg(tmp, k, rng) for k in range(args.num_jpegs)]
    jpeg_kb = float(np.mean([os.path.getsize(q) for q in paths]) / 1024)
    return _rate(
        lambda i: transforms.train_transform(files.decode_image(paths[i % len(paths)]),
                                             args.size, np.random.default_rng(i)),
        args.seconds), jpeg_kb


def _write_jpeg(directory: str, k: int, rng) -> str:
  """A smooth image plus noise: JPEG sizes like a photograph's (~100 KB at 500 x 375)."""
  yy, xx = np.mgrid[0:375, 0:500]
  base = np.stack([(xx * (k + 1)) % 256, (yy * 3) % 256, (xx + yy) % 256], -1)
  img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
  path = os.path.join(directory, f'{k}.jpg')
  Image.fromarray(img).save(path, quality=90)
  return path


def _paths_table(rates: dict[str, float], args, jpeg_kb: float) -> dict[str, dict]:
  """Prints the table; each path's images/s per worker, workers for --target and bytes shipped
  to the device per image. The workers are processes, assumed to scale linearly; the host's
  memory bandwidth and the device transfer are not measured (7,000 x 224 x 224 x 3 bytes =
  1.05 GB/s of uint8 batches)."""
  shipped = {'cifar': args.size**2 * 3, 'cifar_device_crop': 32 * 32 * 3 + 5 * 4,
             'jpeg': args.size**2 * 3}
  print(f'| path | images/s per worker | workers (cores) for {args.target:,.0f} images/s | '
        'KB to the device per image |')
  print('|---|---|---|---|')
  out = {}
  for name, ips in rates.items():
    need = math.ceil(args.target / ips)
    out[name] = {'images_per_s_per_worker': ips, 'workers_for_target': need,
                 'bytes_to_device_per_image': shipped[name]}
    label = PATHS[name].format(size=args.size, jpeg_kb=jpeg_kb)
    print(f'| {label} | {ips:,.0f} | {need} | {shipped[name] / 1000:.1f} |')
  return out


def main(argv=None) -> int:
  args = _parse(argv)
  rng = np.random.default_rng(0)
  cifar = rng.integers(0, 256, (512, 32, 32, 3), dtype=np.uint8)
  rates = _cifar_rates(cifar, args)
  device = _device_crop(cifar, args.size, args.device_batch, args.seconds)
  rates['jpeg'], jpeg_kb = _jpeg_rate(rng, args)
  record = {'size': args.size, 'target_images_per_s': args.target, 'jpeg_kb': round(jpeg_kb, 1),
            'load1': os.getloadavg()[0], 'paths': _paths_table(rates, args, jpeg_kb),
            'device_crop': device}
  print(f"The crop on the device ({device['device']}, batch {device['batch']}): "
        f"{device['images_per_s']:,.0f} images/s, {device['flops_per_image'] / 1e6:.1f} MFLOP "
        'per image (its two matmuls).')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(record, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
