r"""What one input worker (one host core) delivers, and how many feed an accelerator.

  python -m ltdpt_jax.bench.host_pipeline --seconds=10 [--target=7000] [--out=host.json]

Times, in this one process, the per-example host work of the input pipeline
(`data.pipeline.TrainExample`, `EvalExample`) on each path of PATHS and, on JPEGs it makes at
the sizes of JPEG_SIZES, each way of JPEG_WAYS (alternating, medians of --rounds), plus the
batch's `np.stack`, and the crop on this machine's first JAX device; prints images/s per worker
and the workers (host cores) needed for `--target` images/s.
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
}
# JPEGs like a benchmark's: ImageNet's and Places365's large images are about 500 x 375 (and
# about 110 KB), iNat2018's about 800 x 600 (`_write_jpeg`).
JPEG_SIZES = {'imagenet': (500, 375), 'inat': (800, 600)}
# How a worker turns a JPEG file into the model's view: decoded to an array, then transformed
# (the image-files path until 2026-12-07); decoded and transformed in Pillow (the same pixels,
# `ImageFiles.open`); the same from a stored copy (tools/store.py at shorter side 256, quality
# 90: the crops as on the original, a small pixel error).
JPEG_WAYS = {
    'array': 'decode -> NumPy array -> transform',
    'pillow': 'decode -> transform in Pillow (same pixels)',
    'store': 'stored copy (shorter side 256, quality 90) -> transform in Pillow',
}
STORE_SHORTER_SIDE, STORE_QUALITY = 256, 90


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
                      'step, docs/performance.md).')
  p.add_argument('--num_jpegs', type=int, default=64)
  p.add_argument('--rounds', type=int, default=5,
                 help='Alternating rounds of the JPEG ways (each gets --seconds in all).')
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


def _jpeg_ways(paths: list[str], stored: list[str], size: int, train: bool) -> dict:
  """{way: make_example(i)} of JPEG_WAYS for the training (RandomResizedCrop + flip) or the
  evaluation transform (resize, centre crop)."""
  def array(i):
    image = files.decode_image(paths[i % len(paths)])
    return (transforms.train_transform(image, size, np.random.default_rng(i)) if train else
            transforms.eval_transform(image, size))

  def pillow(files_of):
    def make(i):
      image, drawn_on = files.open_image(files_of[i % len(files_of)])
      return (transforms.train_transform_image(image, size, np.random.default_rng(i),
                                               drawn_on=drawn_on) if train else
              transforms.eval_transform_image(image, size))
    return make
  return {'array': array, 'pillow': pillow(paths), 'store': pillow(stored)}


def _jpeg_rates(rng, args) -> dict[str, dict]:
  """Per JPEG size: file sizes, and images/s of each way (train and eval): --rounds rounds,
  each timing every way for --seconds / --rounds in turn (so a busier moment of the machine
  falls on all of them), the median of each."""
  from ltdpt_jax.tools import store  # pylint: disable=g-import-not-at-top
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, (width, height) in JPEG_SIZES.items():
      paths = [_write_jpeg(tmp, f'{name}_{k}', rng, width, height) for k in range(args.num_jpegs)]
      stored = [q.replace('.jpg', '_stored.jpg') for q in paths]
      for q, r in zip(paths, stored):
        store.store_image(q, r, STORE_SHORTER_SIDE, STORE_QUALITY)
      record = {'size': [width, height],
                'kb': float(np.mean([os.path.getsize(q) for q in paths]) / 1024),
                'stored_kb': float(np.mean([os.path.getsize(q) for q in stored]) / 1024)}
      for transform in ('train', 'eval'):
        ways = _jpeg_ways(paths, stored, args.size, transform == 'train')
        rounds = {way: [] for way in ways}
        for _ in range(args.rounds):
          for way, make in ways.items():
            rounds[way].append(_rate(make, args.seconds / args.rounds))
        record[transform] = {way: float(np.median(r)) for way, r in rounds.items()}
      out[name] = record
  return out


def _jpeg_table(jpeg: dict, args) -> None:
  print(f'| JPEG | transform | way | images/s per worker | vs. decode to array | workers for '
        f'{args.target:,.0f} images/s |')
  print('|---|---|---|---|---|---|')
  for name, r in jpeg.items():
    label = (f'{name} {r["size"][0]} x {r["size"][1]} ({r["kb"]:.0f} KB; stored '
             f'{r["stored_kb"]:.0f} KB)')
    for transform in ('train', 'eval'):
      base = r[transform]['array']
      for way, ips in r[transform].items():
        print(f'| {label} | {transform} | {JPEG_WAYS[way]} | {ips:,.0f} | {ips / base:.2f}x | '
              f'{math.ceil(args.target / ips)} |')


def _write_jpeg(directory: str, name: str, rng, width: int = 500, height: int = 375) -> str:
  """Noise with a photograph's spectrum (amplitude ~ 1 / frequency) saved at JPEG quality 90:
  about 120 KB at 500 x 375, and it keeps its detail, as a photograph does, when downscaled."""
  fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
  f = np.hypot(fx, fy)
  f[0, 0] = 1.0
  planes = [np.fft.irfft2((rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f,
                          s=(height, width)) for _ in range(3)]
  img = np.stack(planes, -1)
  img = np.clip((img - img.mean()) / img.std() * 50 + 128, 0, 255).astype(np.uint8)
  path = os.path.join(directory, f'{name}.jpg')
  Image.fromarray(img).save(path, quality=90)
  return path


def _paths_table(rates: dict[str, float], args) -> dict[str, dict]:
  """Prints the table; each path's images/s per worker, workers for --target and bytes shipped
  to the device per image. The workers are processes, assumed to scale linearly; the host's
  memory bandwidth and the device transfer are not measured (7,000 x 224 x 224 x 3 bytes =
  1.05 GB/s of uint8 batches)."""
  shipped = {'cifar': args.size**2 * 3, 'cifar_device_crop': 32 * 32 * 3 + 5 * 4}
  print(f'| path | images/s per worker | workers (cores) for {args.target:,.0f} images/s | '
        'KB to the device per image |')
  print('|---|---|---|---|')
  out = {}
  for name, ips in rates.items():
    need = math.ceil(args.target / ips)
    out[name] = {'images_per_s_per_worker': ips, 'workers_for_target': need,
                 'bytes_to_device_per_image': shipped[name]}
    label = PATHS[name].format(size=args.size)
    print(f'| {label} | {ips:,.0f} | {need} | {shipped[name] / 1000:.1f} |')
  return out


def main(argv=None) -> int:
  args = _parse(argv)
  rng = np.random.default_rng(0)
  cifar = rng.integers(0, 256, (512, 32, 32, 3), dtype=np.uint8)
  rates = _cifar_rates(cifar, args)
  device = _device_crop(cifar, args.size, args.device_batch, args.seconds)
  jpeg = _jpeg_rates(rng, args)
  record = {'size': args.size, 'target_images_per_s': args.target, 'load1': os.getloadavg()[0],
            'paths': _paths_table(rates, args), 'jpeg': jpeg, 'device_crop': device}
  _jpeg_table(jpeg, args)
  print(f"The crop on the device ({device['device']}, batch {device['batch']}): "
        f"{device['images_per_s']:,.0f} images/s, {device['flops_per_image'] / 1e6:.1f} MFLOP "
        'per image (its two matmuls).')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(record, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
