"""The image store (tools/store.py): a smaller re-encoded copy of a benchmark's images that the
files source reads as it reads the original tree, with the crops drawn as on the originals; its
pixel error against the originals on photographs, its resume, and its command."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

import cli_worker
import fake_tfds
import train_utils
from ltdpt_jax import config_lib
from ltdpt_jax.data import files
from ltdpt_jax.data import pipeline
from ltdpt_jax.data import sources
from ltdpt_jax.tools import store

# Photographs at ImageNet's and iNat2018's usual sizes, JPEG quality 90 (skimage's samples).
PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket')
SIZES = ((500, 375), (375, 500), (800, 600), (200, 150))  # the last is below the shorter side
SYNSETS = ('n01440764', 'n01443537')


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  """An ImageNet-layout tree (train/<wnid>/, val/<wnid>/) of photographs and its OLTR lists."""
  root = tmp_path_factory.mktemp('imagenet')
  split_dir = root / 'splits'
  entries = {'train': [], 'test': []}
  for k, (name, size) in enumerate((p, s) for p in PHOTOS for s in SIZES):
    label = k % 2
    split = 'test' if k % 4 == 2 else 'train'  # the 800 x 600 photographs
    folder = 'val' if split == 'test' else 'train'
    rel = f'{folder}/{SYNSETS[label]}/{SYNSETS[label]}_{k}.JPEG'
    photo = Image.fromarray(getattr(skimage.data, name)()).convert('RGB')
    (root / 'images' / rel).parent.mkdir(parents=True, exist_ok=True)
    photo.resize(size, Image.BICUBIC).save(root / 'images' / rel, quality=90)
    entries[split].append((rel, label))
  for split, es in entries.items():
    fake_tfds.write_split_file(split_dir / f'ImageNet_LT_{split}.txt', es)
  return root


def _data(image_root, split_dir):
  c = config_lib.base_config()
  c.data.dataset = 'imagenet_lt'
  c.data.source = 'files'
  c.data.image_root = str(image_root)
  c.data.split_dir = str(split_dir)
  c.data.image_size = 224
  c.data.batch_size = 4
  c.data.eval_batch_size = 4
  c.data.num_workers = 0
  return c.data


def test_the_store_keeps_the_crops_and_bounds_the_pixel_error(tree, tmp_path):
  """Images with a shorter side over 256 are re-encoded at 256 with their original size in the
  comment, the others copied; the store reads as the same dataset, the training crops are drawn
  as on the originals (same boxes, so the pictures match), and the pixel error of the training
  and evaluation views against the originals' stays small (mean absolute error under 3 of 255,
  the largest per image under 6; measured: 1.8 and 3.7 for training crops, 1.9 and 2.3 for
  evaluation views)."""
  data = _data(tree / 'images', tree / 'splits')
  result = store.build_store(data, str(tmp_path / 'store'), workers=2)
  assert result.images == result.written == 16 and result.reencoded == 12
  assert result.bytes_out < result.bytes_in / 2
  stored = _data(tmp_path / 'store', tree / 'splits')
  a, b = sources.get_sources(data), sources.get_sources(stored)
  assert a.class_names == b.class_names and a.eval_split == b.eval_split
  for x, y in ((a.train, b.train), (a.eval, b.eval)):
    np.testing.assert_array_equal(x.labels, y.labels)
    for i in range(len(x)):
      original, small = Image.open(x.paths[i]), Image.open(y.paths[i])
      if min(original.size) > 256:
        assert min(small.size) == 256 and small.format == 'JPEG'
        assert files.stored_size(small) == original.size
        assert abs(small.width / small.height - original.width / original.height) < 0.01
      else:
        assert pathlib.Path(y.paths[i]).read_bytes() == pathlib.Path(x.paths[i]).read_bytes()
  errors = {'train': [], 'eval': []}
  for position in range(3):
    full = pipeline.TrainExample(a.train, image_size=224, seed=0, global_batch=4,
                                 process_index=0, process_count=1)
    store_view = pipeline.TrainExample(b.train, image_size=224, seed=0, global_batch=4,
                                       process_index=0, process_count=1)
    for index in range(position * 4, position * 4 + 4):
      want, got = full(index), store_view(index)
      assert (want['id'], want['label']) == (got['id'], got['label'])
      errors['train'].append(np.abs(want['image'].astype(int) - got['image']).mean())
  for g in range(len(a.eval)):
    want = pipeline.EvalExample(a.eval, image_size=224, global_batch=4, process_index=0,
                                process_count=1)(g)
    got = pipeline.EvalExample(b.eval, image_size=224, global_batch=4, process_index=0,
                               process_count=1)(g)
    errors['eval'].append(np.abs(want['image'].astype(int) - got['image']).mean())
  for what, e in errors.items():
    assert np.mean(e) < 3 and max(e) < 6, (what, e)
  # A crop drawn on the store's own size instead would land elsewhere: the error shows it.
  image, _ = b.train.open(0)
  moved = pipeline.transforms.train_transform_image(image, 224, np.random.default_rng(5))
  drawn = pipeline.transforms.train_transform_image(
      image, 224, np.random.default_rng(5), drawn_on=files.stored_size(Image.open(b.train.paths[0])))
  full_view = pipeline.transforms.train_transform_image(a.train.open(0)[0], 224,
                                                        np.random.default_rng(5))
  assert (np.abs(moved.astype(int) - full_view).mean()
          > 2 * np.abs(drawn.astype(int) - full_view).mean())


def test_a_store_resumes_and_refuses_other_settings(tree, tmp_path):
  data = _data(tree / 'images', tree / 'splits')
  out = tmp_path / 'store'
  store.build_store(data, str(out), workers=1)
  stored = sorted(p for p in out.rglob('*.JPEG'))
  stamps = {p: p.stat().st_mtime_ns for p in stored}
  for p in stored[:3]:
    p.unlink()
  (stored[4].parent / f'{stored[4].name}.tmp123').write_bytes(b'half')  # a killed write
  result = store.build_store(data, str(out), workers=1)
  assert result.written == 3 and result.images == 16
  assert all(p.stat().st_mtime_ns == stamps[p] for p in stored[3:])
  manifest = json.loads((out / store.MANIFEST).read_text())
  assert manifest['complete'] and manifest['shorter_side'] == 256 and manifest['images'] == 16
  with pytest.raises(files.DataError, match='made with other settings .*shorter_side 256, not '
                     '320') as e:
    store.build_store(data, str(out), shorter_side=320, workers=1)
  assert '\n' not in str(e.value)
  c = config_lib.base_config()
  with pytest.raises(files.DataError, match="'cifar100_lt' .* is not read from image files"):
    store.build_store(c.data, str(tmp_path / 'other'))


def test_the_store_command_reports_and_fails_in_one_line(tree, tmp_path):
  spec = (f'--config={train_utils.REPO}/configs/imagenet_lt.py:source=files,'
          f'image_root={tree / "images"}')
  command = [sys.executable, '-m', 'ltdpt_jax.tools.store', spec,
             f'--config.data.split_dir={tree / "splits"}', '--workers=1']
  out = cli_worker.run_cli([*command, f'--out={tmp_path / "store"}'], timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert '16 images (16 written now, 12 of them re-encoded at shorter side 256' in out.stdout
  assert 'Stored 16/16 images' in out.stderr and 'images/s, ETA' in out.stderr
  assert os.path.isfile(tmp_path / 'store' / store.MANIFEST)
  out = cli_worker.run_cli([*command[:-2], '--config.data.split_dir=/nowhere', '--workers=1',
                            f'--out={tmp_path / "again"}'], timeout=300)
  cli_worker.one_error_line(out, 2, 'ImageNet_LT_train.txt', '/nowhere')
