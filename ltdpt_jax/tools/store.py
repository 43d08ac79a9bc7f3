r"""A smaller copy of a benchmark's images, made once, that the input pipeline decodes faster.

  python -m ltdpt_jax.tools.store --config=configs/imagenet_lt.py:source=files,image_root=DIR \
      --out=STORE [--shorter_side=256] [--quality=90]

then train with `image_root=STORE`. `build_store` re-encodes every image the config reads whose
shorter side exceeds --shorter_side at that side (with its original size in the JPEG comment, so
the training crop is drawn as on the original: `files.stored_size`) and copies the others;
paths stay relative to image_root. Each file is written whole, so a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import time

from absl import app
from absl import flags
from ml_collections import config_flags
from PIL import Image

from ltdpt_jax import cli
from ltdpt_jax import fetch
from ltdpt_jax.data import benchmark_files
from ltdpt_jax.data import files
from ltdpt_jax.data import sources

MANIFEST = 'ltdpt_store.json'
# What a store's files depend on: a store made with other values is not resumed.
_PARAMETERS = ('shorter_side', 'quality', 'image_root', 'version')
_VERSION = 1
_PROGRESS_EVERY_S = 10.0


@dataclasses.dataclass(frozen=True)
class StoreResult:
  """What `build_store` did: images in the store, written now (re-encoded or copied), bytes."""
  images: int
  written: int
  reencoded: int
  bytes_in: int
  bytes_out: int
  seconds: float


def store_root_and_paths(data) -> tuple[str, list[str]]:
  """(image_root, sorted paths relative to it) of every image a config's data section reads:
  a benchmark with source 'files', or a 'list' dataset with image_root."""
  benchmark = data.dataset in ('imagenet_lt', 'places_lt', 'inat2018')
  if not (benchmark and data.source == 'files') and not (data.dataset == 'list'
                                                          and data.image_root):
    raise files.DataError(
        f'config.data.dataset={data.dataset!r} (source {data.get("source", "tfds")!r}) is not '
        'read from image files under config.data.image_root: a store is made from ImageNet-LT, '
        "Places-LT or iNat2018 with source=files, or a 'list' dataset with image_root.")
  src = sources.get_sources(data)
  root = os.path.abspath(os.path.expanduser(data.image_root))
  rels = set()
  for path in src.train.paths + src.eval.paths:
    rel = os.path.relpath(path, root)
    if rel.startswith('..'):
      raise files.DataError(f'{path} is not under config.data.image_root={root!r}; a store '
                            'holds only files under it.')
    rels.add(rel)
  return root, sorted(rels)


def store_image(src: str, dst: str, shorter_side: int, quality: int) -> tuple[int, bool]:
  """Writes `src`'s stored copy to `dst` (whole: a temporary file renamed into place); returns
  (bytes written, whether it was re-encoded)."""
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  tmp = f'{dst}.tmp{os.getpid()}'
  with Image.open(src) as header:  # the header only: an EXIF rotation keeps the shorter side
    small_enough = min(header.size) <= shorter_side
  try:
    if small_enough:
      shutil.copyfile(src, tmp)
      reencoded = False
    else:
      image, _ = files.open_image(src)
      width, height = image.size
      scale = shorter_side / min(width, height)
      small = image.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                           Image.BILINEAR)
      small.save(tmp, format='JPEG', quality=quality,
                 comment=files.STORED_SIZE_TAG + f'{width}x{height}'.encode())
      reencoded = True
    os.replace(tmp, dst)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return os.path.getsize(dst), reencoded


def _store_task(task):
  src, dst, shorter_side, quality = task
  return os.path.getsize(src), *store_image(src, dst, shorter_side, quality)


def _check_manifest(out: str, want: dict) -> None:
  path = os.path.join(out, MANIFEST)
  if not os.path.exists(path):
    return
  with open(path) as f:
    have = json.load(f)
  differ = {k: (have.get(k), want[k]) for k in _PARAMETERS if have.get(k) != want[k]}
  if differ:
    raise files.DataError(
        f'{out} holds a store made with other settings ('
        + ', '.join(f'{k} {a!r}, not {b!r}' for k, (a, b) in differ.items())
        + '): use another --out, or the same settings to resume it.')


def _write_manifest(out: str, record: dict) -> None:
  tmp = os.path.join(out, f'{MANIFEST}.tmp')
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, os.path.join(out, MANIFEST))


def build_store(data, out: str, *, shorter_side: int = 256, quality: int = 90,
                workers: int = 0) -> StoreResult:
  """Makes (or resumes) the store of a config's images in `out`, with `workers` processes (0:
  one per core), logging progress (images/s, ETA); returns what it did. The annotation files
  iNat2018 reads from image_root (`benchmark_files.INAT_JSON`, `INAT_LISTS`) are copied too."""
  if shorter_side < 1 or not 1 <= quality <= 100:
    raise files.DataError(f'--shorter_side={shorter_side} must be >= 1 and --quality={quality} '
                          'in 1..100.')
  root, rels = store_root_and_paths(data)
  out = os.path.abspath(os.path.expanduser(out))
  if out == root:
    raise files.DataError(f'--out={out} is image_root itself; the store must go elsewhere.')
  params = {'shorter_side': shorter_side, 'quality': quality, 'image_root': root,
            'version': _VERSION}
  _check_manifest(out, params)
  os.makedirs(out, exist_ok=True)
  _write_manifest(out, {**params, 'complete': False})
  for name in (*benchmark_files.INAT_JSON.values(), *benchmark_files.INAT_LISTS.values()):
    if os.path.isfile(os.path.join(root, name)):
      shutil.copyfile(os.path.join(root, name), os.path.join(out, name))
  todo = [(os.path.join(root, r), os.path.join(out, r), shorter_side, quality) for r in rels
          if not os.path.isfile(os.path.join(out, r))]
  logging.info('Store of %d images in %s: %d to write (%d there from an earlier run).',
               len(rels), out, len(todo), len(rels) - len(todo))
  t0 = last = time.perf_counter()
  done = reencoded = bytes_in = bytes_out = 0
  processes = workers or os.cpu_count() or 1
  with multiprocessing.get_context('spawn').Pool(processes) as pool:
    for size_in, size_out, was_reencoded in pool.imap_unordered(_store_task, todo, chunksize=16):
      done, bytes_in, bytes_out = done + 1, bytes_in + size_in, bytes_out + size_out
      reencoded += was_reencoded
      now = time.perf_counter()
      if now - last >= _PROGRESS_EVERY_S or done == len(todo):
        rate = done / max(now - t0, 1e-9)
        logging.info('Stored %d/%d images, %.0f images/s, ETA %.0f s.', done, len(todo), rate,
                     (len(todo) - done) / max(rate, 1e-9))
        last = now
  result = StoreResult(len(rels), done, reencoded, bytes_in, bytes_out,
                       time.perf_counter() - t0)
  _write_manifest(out, {**params, 'complete': True, 'images': len(rels),
                        **{k: v for k, v in dataclasses.asdict(result).items() if k != 'images'}})
  return result


def define_flags():
  config_flags.DEFINE_config_file(
      'config', None, 'The config whose images to store (a benchmark with source=files).')
  flags.DEFINE_string('out', None, 'The folder of the store (then train with image_root=OUT).')
  flags.DEFINE_integer('shorter_side', 256, 'Images with a longer shorter side are resized to '
                       'it and re-encoded; the others are copied.')
  flags.DEFINE_integer('quality', 90, 'JPEG quality of the re-encoded images.')
  flags.DEFINE_integer('workers', 0, 'Processes (0: one per core).')
  flags.mark_flags_as_required(['config', 'out'])


def main(argv) -> None:
  cli.start(argv)
  f = flags.FLAGS
  config = cli.load_config(f['config'])

  def body():
    try:
      r = build_store(config.data, f.out, shorter_side=f.shorter_side, quality=f.quality,
                      workers=f.workers)
    except (ValueError, FileNotFoundError, fetch.FetchError) as e:  # lists, roots, values
      raise files.DataError(str(e)) from e
    print(f'{f.out}: {r.images} images ({r.written} written now, {r.reencoded} of them '
          f're-encoded at shorter side {f.shorter_side}, {r.bytes_in / 1e6:.1f} MB -> '
          f'{r.bytes_out / 1e6:.1f} MB) in {r.seconds:.0f} s. Train on it with '
          f'config.data.image_root={f.out}.')
  cli.run_guarded(body, None)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
