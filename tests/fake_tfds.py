"""Writes tiny fake tfds datasets (ArrayRecord) offline, with the real builders, for the data tests.

Route: the *registered* tfds builders (`cifar100` 3.0.2, `places365_small` 2.1.0,
`imagenet2012` 5.1.0, `i_naturalist2018` 1.0.0) run their own `_split_generators` /
`_generate_examples` on fake raw files in the real raw layouts (cifar-100-binary `train.bin`,
Places365 tars + file lists, ILSVRC2012 tar of per-synset tars + the packaged validation labels,
iNat2018 tar.gz + JSON annotations), as tfds' own builder tests do with dummy data; the download
manager is patched to return the local files. So names, versions, features, split names, example
keys, file names / ids and the on-disk shuffling are the real ones, and tfds itself writes
dataset_info.json, features.json and the ArrayRecord shards that `tfds.data_source` reads.

TensorFlow is not installed, so two TF calls of those builders (and of tfds' archive iterator)
are replaced while they run: `tf.io.gfile.GFile/exists` by the local-file equivalents, and the
PNG encoding of NumPy images (CIFAR) by Pillow's lossless PNG encoder. Every image is
PNG-encoded (also under .jpg/.JPEG names; the decoders sniff the format) and has ONE uniform
colour that encodes its identity, so a test can tell which file an augmented (cropped, resized,
flipped) image came from.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pathlib
import tarfile
import types
from unittest import mock

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import extractor
from tensorflow_datasets.core.features import image_feature

tfds.disable_progress_bar()


def colour_of(k: int) -> tuple[int, int, int]:
  """The uniform colour of fake image number k (0 <= k < 2**24): its three bytes."""
  return (k % 256, (k // 256) % 256, k // 65536)


def index_of_colour(rgb) -> int:
  r, g, b = (int(x) for x in rgb)
  return r + 256 * g + 65536 * b


def png(k: int, height: int, width: int) -> bytes:
  arr = np.empty((height, width, 3), np.uint8)
  arr[...] = colour_of(k)
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format='PNG')
  return buf.getvalue()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


class _GFile:
  GFile = staticmethod(lambda path, mode='r': open(os.fspath(path), mode))
  exists = staticmethod(lambda path: os.path.exists(os.fspath(path)))


_TF_SHIM = types.SimpleNamespace(io=types.SimpleNamespace(gfile=_GFile))


def _encode_png(self, np_image: np.ndarray) -> bytes:
  del self
  buf = io.BytesIO()
  Image.fromarray(np_image).save(buf, format='PNG')
  return buf.getvalue()


def _resolve(arg, files: dict[str, str]):
  """Maps URLs (str / Resource, possibly in a dict) to local paths by their basename."""
  if isinstance(arg, dict):
    return {k: _resolve(v, files) for k, v in arg.items()}
  url = getattr(arg, 'url', arg)
  return files[url.rstrip('/').rsplit('/', 1)[-1]]


@contextlib.contextmanager
def _offline_build(files: dict[str, str], tf_modules=()):
  fake = lambda self, arg: _resolve(arg, files)  # noqa: E731
  with contextlib.ExitStack() as stack:
    encoder = image_feature._ImageEncoder  # pylint: disable=protected-access
    stack.enter_context(mock.patch.object(encoder, '_encode_image', _encode_png))
    for module in (extractor, *tf_modules):
      stack.enter_context(mock.patch.object(module, 'tf', _TF_SHIM))
    stack.enter_context(mock.patch.object(tfds.download.DownloadManager, 'download', fake))
    stack.enter_context(mock.patch.object(tfds.download.DownloadManager, 'download_and_extract',
                                          fake))
    yield


def _prepare(name: str, data_dir, manual_dir=None) -> None:
  builder = tfds.builder(name, data_dir=os.fspath(data_dir), file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, manual_dir=None if manual_dir is None else os.fspath(manual_dir)))


def write_cifar100(data_dir, *, train_per_class: int = 20, test_per_class: int = 2,
                   seed: int = 0) -> dict:
  """Fake cifar100 (100 classes). Returns the fine labels of train / test in original order.

  Train image at original position i has colour_of(i); test image i has colour_of(100000 + i).
  """
  from tensorflow_datasets.image_classification import cifar  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  raw = pathlib.Path(data_dir) / 'raw_cifar100'
  d = raw / 'cifar-100-binary'
  d.mkdir(parents=True, exist_ok=True)
  out = {}
  for split, per_class, offset in (('train', train_per_class, 0), ('test', test_per_class, 100000)):
    labels = rng.permutation(np.repeat(np.arange(100), per_class))
    with open(d / f'{split}.bin', 'wb') as f:
      for i, label in enumerate(labels):
        f.write(bytes([label // 5, label]))  # coarse, fine
        img = np.empty((32, 32, 3), np.uint8)
        img[...] = colour_of(offset + i)
        f.write(img.transpose(2, 0, 1).tobytes())
    out[split] = labels.astype(np.int64)
  (d / 'coarse_label_names.txt').write_text('\n'.join(f'coarse_{i}' for i in range(20)))
  (d / 'fine_label_names.txt').write_text('\n'.join(f'fine_{i}' for i in range(100)))
  with _offline_build({'cifar-100-binary.tar.gz': str(raw)}, [cifar]):
    _prepare('cifar100', data_dir)
  return out


def places_categories() -> list[str]:
  path = tfds.core.tfds_path('image_classification/categories_places365.txt')
  return pathlib.Path(path).read_text().split()


def places_lt_categories() -> list[str]:
  """Places365's categories in the order the OLTR Places-LT lists number them: sorted with '/'
  read as '_' (tests/test_benchmark_files.py checks this on the published lists)."""
  return sorted(places_categories(), key=lambda name: name.replace('/', '_'))


def write_places365_small(data_dir, train: dict[int, int], num_val: int = 12,
                          num_test: int = 2, image_size: int = 256) -> dict:
  """Fake places365_small: `train[label] = n` images 00000001.jpg.. in each class folder.

  Returns {'train': [(tfds filename, label, colour index)], 'validation': [...]}; train basenames
  repeat across classes, as in the real data. Validation image k (1-based) has label
  sorted(train)[k % len(train)].
  """
  cats = places_categories()
  raw = pathlib.Path(data_dir) / 'raw_places'
  ann = raw / 'annotation'
  ann.mkdir(parents=True, exist_ok=True)
  out = {'train': [], 'validation': []}
  k = 200000
  lines = []
  with tarfile.open(raw / 'data_256.tar', 'w') as tar:
    for label in sorted(train):
      cat = cats[label]
      for n in range(1, train[label] + 1):
        rel = f'/{cat[0]}/{cat}/{n:08d}.jpg'
        _add_bytes(tar, f'data_256{rel}', png(k, image_size, image_size))
        lines.append(f'{rel} {label}')
        out['train'].append((f'data_256{rel}', label, k))
        k += 1
  (ann / 'places365_train_standard.txt').write_text('\n'.join(lines) + '\n')
  lines = []
  classes = sorted(train)
  with tarfile.open(raw / 'val_256.tar', 'w') as tar:
    for n in range(1, num_val + 1):
      base, label = f'Places365_val_{n:08d}.jpg', classes[n % len(classes)]
      _add_bytes(tar, f'val_256/{base}', png(k, image_size, image_size))
      lines.append(f'{base} {label}')
      out['validation'].append((f'val_256/{base}', label, k))
      k += 1
  (ann / 'places365_val.txt').write_text('\n'.join(lines) + '\n')
  lines = []
  with tarfile.open(raw / 'test_256.tar', 'w') as tar:
    for n in range(1, num_test + 1):
      base = f'Places365_test_{n:08d}.jpg'
      _add_bytes(tar, f'test_256/{base}', png(k, image_size, image_size))
      lines.append(base)
      k += 1
  (ann / 'places365_test.txt').write_text('\n'.join(lines) + '\n')
  files = {'train_256_places365standard.tar': str(raw / 'data_256.tar'),
           'val_256.tar': str(raw / 'val_256.tar'), 'test_256.tar': str(raw / 'test_256.tar'),
           'filelist_places365-standard.tar': str(ann)}
  with _offline_build(files):
    _prepare('places365_small', data_dir)
  return out


def imagenet_synsets() -> list[str]:
  path = tfds.core.tfds_path('datasets/imagenet2012/labels.txt')
  return pathlib.Path(path).read_text().split()


def imagenet_validation_synsets() -> list[str]:
  path = tfds.core.tfds_path('datasets/imagenet2012/validation_labels.txt')
  return pathlib.Path(path).read_text().split()


def write_imagenet2012(data_dir, train: dict[int, int], num_val: int = 10,
                       size: tuple[int, int] = (48, 64)) -> dict:
  """Fake imagenet2012: `train[label] = n` images `<synset>_<j>.JPEG` of the label's synset.

  The validation tar holds ILSVRC2012_val_00000001..num_val; the builder labels them from its
  packaged validation_labels.txt. Returns {'train'/'validation': [(file_name, label, colour)]}.
  """
  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as inb
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
  # pylint: enable=g-import-not-at-top
  synsets = imagenet_synsets()
  manual = pathlib.Path(data_dir) / 'manual_imagenet'
  manual.mkdir(parents=True, exist_ok=True)
  out = {'train': [], 'validation': []}
  k = 300000
  with tarfile.open(manual / 'ILSVRC2012_img_train.tar', 'w') as outer:
    for label in sorted(train):
      syn = synsets[label]
      inner_buf = io.BytesIO()
      with tarfile.open(fileobj=inner_buf, mode='w') as inner:
        for j in range(train[label]):
          fname = f'{syn}_{10 * j + 7}.JPEG'
          _add_bytes(inner, fname, png(k, *size))
          out['train'].append((fname, label, k))
          k += 1
      _add_bytes(outer, f'{syn}.tar', inner_buf.getvalue())
  val_syn = imagenet_validation_synsets()
  with tarfile.open(manual / 'ILSVRC2012_img_val.tar', 'w') as tar:
    for n in range(1, num_val + 1):
      fname = f'ILSVRC2012_val_{n:08d}.JPEG'
      _add_bytes(tar, fname, png(k, size[1], size[0]))
      out['validation'].append((fname, synsets.index(val_syn[n - 1]), k))
      k += 1
  with _offline_build({}, [inb, imagenet_common]):
    _prepare('imagenet2012', data_dir, manual_dir=manual)
  return out


def write_i_naturalist2018(data_dir, train: dict[int, int], val_per_class: int = 3,
                           size: tuple[int, int] = (30, 40)) -> dict:
  """Fake i_naturalist2018: category ids 0..K-1 named by the first K tfds species names.

  Returns {'train'/'validation': [(id, label, colour)]}.
  """
  # pylint: disable-next=g-import-not-at-top
  from tensorflow_datasets.image_classification.i_naturalist2018 import i_naturalist2018 as inat
  base = pathlib.Path(tfds.core.tfds_path('image_classification/i_naturalist2018'))
  names = (base / 'inaturalist2018_labels.txt').read_text().splitlines()
  supers = (base / 'inaturalist2018_supercategories.txt').read_text().splitlines()
  num = max(train) + 1
  raw = pathlib.Path(data_dir) / 'raw_inat'
  for sub in ('train_annos', 'val_annos', 'categories'):
    (raw / sub).mkdir(parents=True, exist_ok=True)
  cats = [{'id': c, 'name': names[c], 'supercategory': supers[c % len(supers)]}
          for c in range(num)]
  (raw / 'categories' / 'categories.json').write_text(json.dumps(cats))
  out = {'train': [], 'validation': []}
  k = 400000
  with tarfile.open(raw / 'train_val2018.tar.gz', 'w:gz') as tar:
    for split, per in (('train', train), ('validation', {c: val_per_class for c in range(num)})):
      images, annos = [], []
      for c in sorted(per):
        for _ in range(per[c]):
          key = hashlib.md5(str(k).encode()).hexdigest()
          path = f'train_val2018/{cats[c]["supercategory"]}/{c}/{key}.jpg'
          _add_bytes(tar, path, png(k, *size))
          images.append({'id': k, 'file_name': path})
          annos.append({'id': k, 'image_id': k, 'category_id': c})
          out[split].append((key, c, k))
          k += 1
      ann_dir, fname = (('train_annos', 'train2018.json') if split == 'train' else
                        ('val_annos', 'val2018.json'))
      (raw / ann_dir / fname).write_text(
          json.dumps({'images': images, 'annotations': annos, 'categories': cats}))
  with tarfile.open(raw / 'test2018.tar.gz', 'w:gz') as tar:
    key = hashlib.md5(b'test').hexdigest()
    _add_bytes(tar, f'test2018/{key}.jpg', png(k, *size))
  files = {'train_val2018.tar.gz': str(raw / 'train_val2018.tar.gz'),
           'train2018.json.tar.gz': str(raw / 'train_annos'),
           'val2018.json.tar.gz': str(raw / 'val_annos'),
           'test2018.tar.gz': str(raw / 'test2018.tar.gz'),
           'categories.json.tar.gz': str(raw / 'categories')}
  with _offline_build(files, [inat]):
    _prepare('i_naturalist2018', data_dir)
  return out


def write_split_file(path, entries) -> pathlib.Path:
  """Writes `<relative/path> <label>` lines (the OLTR format)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(''.join(f'{p} {label}\n' for p, label in entries))
  return path
