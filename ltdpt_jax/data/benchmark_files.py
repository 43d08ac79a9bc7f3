"""The paper's benchmarks from the files researchers already have, without TensorFlow.

`config.data.source = 'files'` reads a benchmark from `config.data.image_root` instead of tfds:
`cifar100_sources` (the official CIFAR-100 binary archive, `CifarBinary`), with the same images,
labels and order as the tfds path. NumPy only: grain workers import it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import tarfile
import tempfile

import numpy as np

from ltdpt_jax import fetch
from ltdpt_jax.data import cifar_lt
from ltdpt_jax.data import files

# The binary version of CIFAR-100 (fixed-size records, nothing to unpickle) and the MD5 its
# publisher gives for it (https://www.cs.toronto.edu/~kriz/cifar.html).
CIFAR100_URL = 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz'
CIFAR100_MD5 = '03b5dce01913d631647c71ecec9e9cb8'
CIFAR100_ARCHIVE = 'cifar-100-binary.tar.gz'
CIFAR100_DIR = 'cifar-100-binary'
# A record: coarse label (1 byte), fine label (1 byte), then 32x32 red, green and blue planes.
CIFAR_SIDE = 32
CIFAR100_RECORD_BYTES = 2 + 3 * CIFAR_SIDE * CIFAR_SIDE
_CIFAR_SPLIT_FILES = ('train.bin', 'test.bin')


class CifarBinary:
  """Records `positions` of a CIFAR-100 binary file: [i] -> {'image', 'label', 'id': i}.

  Pickles as its path and positions (grain sends it to each worker), and maps the file into
  memory in each process on first use; 'image' is uint8 (32, 32, 3), 'label' the fine label.
  """

  def __init__(self, path: str | os.PathLike, positions: np.ndarray, labels: np.ndarray):
    if len(positions) != len(labels):
      raise ValueError(f'{len(positions)} positions but {len(labels)} labels.')
    self.path = str(path)
    self.positions = np.asarray(positions, np.int64)
    self.labels = np.asarray(labels, np.int64)
    self._records = None

  def __getstate__(self) -> dict:
    return {**self.__dict__, '_records': None}

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    if self._records is None:
      self._records = read_cifar_records(self.path)
    index = int(index)
    planes = self._records[int(self.positions[index]), 2:]
    image = planes.reshape(3, CIFAR_SIDE, CIFAR_SIDE).transpose(1, 2, 0)
    return {'image': np.ascontiguousarray(image), 'label': int(self.labels[index]), 'id': index}


def read_cifar_records(path: str | os.PathLike) -> np.ndarray:
  """A CIFAR-100 binary file as a read-only uint8 (N, 3074) memory map, after checking its size."""
  size = os.path.getsize(path)
  if size == 0 or size % CIFAR100_RECORD_BYTES:
    hint = (' (3,073-byte records: CIFAR-10, not CIFAR-100)'
            if size and size % (CIFAR100_RECORD_BYTES - 1) == 0 else '')
    raise files.DataError(f'{path} is not a CIFAR-100 binary file: {size} bytes is not a '
                          f'multiple of its {CIFAR100_RECORD_BYTES}-byte records{hint}.')
  return np.memmap(path, np.uint8, mode='r').reshape(-1, CIFAR100_RECORD_BYTES)


def _md5_of(path: pathlib.Path) -> str:
  h = hashlib.md5()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      h.update(chunk)
  return h.hexdigest()


def _extract_cifar(archive: pathlib.Path) -> pathlib.Path:
  """Extracts `archive` once into the cache (keyed by its MD5) and returns its cifar-100-binary/.

  The extraction goes to a temporary folder renamed into place, so an interrupted one is redone.
  """
  md5 = _md5_of(archive)
  if md5 != CIFAR100_MD5:
    logging.warning('%s has MD5 %s, not the published %s: reading it anyway.', archive, md5,
                    CIFAR100_MD5)
  target = fetch.cache_dir() / 'cifar100' / md5
  if not (target / CIFAR100_DIR / 'train.bin').is_file():
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{md5}.', dir=target.parent))
    try:
      with tarfile.open(archive, 'r:gz') as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.startswith(f'{CIFAR100_DIR}/')]
        if not members:
          raise files.DataError(f'{archive} holds no {CIFAR100_DIR}/ folder: not the CIFAR-100 '
                                f'binary archive ({CIFAR100_URL}).')
        tar.extractall(tmp, members=members, filter='data')
      shutil.rmtree(target, ignore_errors=True)
      os.replace(tmp, target)
    except (tarfile.TarError, EOFError, OSError) as e:
      why = ' '.join(str(e).split())
      raise files.DataError(f'{archive} cannot be extracted ({type(e).__name__}: {why}); '
                            f'download it again from {CIFAR100_URL}.') from e
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return target / CIFAR100_DIR


def cifar100_dir(image_root: str) -> pathlib.Path:
  """The folder holding CIFAR-100's train.bin and test.bin, from `config.data.image_root`.

  Accepted: the extracted folder itself, a folder holding it (`cifar-100-binary/`) or the
  archive (`cifar-100-binary.tar.gz`, extracted once into the cache); '' downloads the archive
  once into `fetch.cache_dir()/cifar100` (checked against its published MD5) and extracts it.
  Anything else is a one-line DataError saying what was found and what to do.
  """
  if not image_root:
    archive = fetch.download([CIFAR100_URL], fetch.cache_dir() / 'cifar100' / CIFAR100_ARCHIVE,
                             md5=CIFAR100_MD5, local_copy_key='config.data.image_root')
    return _extract_cifar(archive)
  root = pathlib.Path(image_root).expanduser()
  if not root.is_dir():
    raise files.DataError(f'config.data.image_root={image_root!r} is not a directory; set it to '
                          f'the folder holding {CIFAR100_ARCHIVE} or {CIFAR100_DIR}/, or leave '
                          f'it empty to download CIFAR-100 (161 MB) into {fetch.cache_dir()}.')
  for d in (root, root / CIFAR100_DIR):
    if all((d / f).is_file() for f in _CIFAR_SPLIT_FILES):
      return d
  if (root / CIFAR100_ARCHIVE).is_file():
    return _extract_cifar(root / CIFAR100_ARCHIVE)
  found = sorted(p.name for p in root.iterdir())
  hint = ''
  if 'cifar-100-python' in found or 'cifar-100-python.tar.gz' in found:
    hint = (' It holds the Python (pickle) version, which this project does not unpickle; put '
            f'the binary version ({CIFAR100_URL}) beside it.')
  elif any(n.startswith('cifar-10-') for n in found) or (root / 'data_batch_1.bin').exists():
    hint = ' It holds CIFAR-10, not CIFAR-100.'
  raise files.DataError(
      f'No CIFAR-100 binary data in config.data.image_root={image_root!r} (found: '
      f'{", ".join(found[:8]) or "nothing"}{", ..." if len(found) > 8 else ""}): expected '
      f'{CIFAR100_ARCHIVE}, or {CIFAR100_DIR}/ with {" and ".join(_CIFAR_SPLIT_FILES)}.{hint} '
      'Leave image_root empty to download it into the cache.')


def _cifar_labels(path: pathlib.Path) -> np.ndarray:
  records = read_cifar_records(path)
  coarse, fine = records[:, 0].astype(np.int64), records[:, 1].astype(np.int64)
  if fine.max() >= cifar_lt.CIFAR100_NUM_CLASSES or coarse.max() >= 20:
    raise files.DataError(f'{path} has labels outside CIFAR-100 (fine {fine.max()}, coarse '
                          f'{coarse.max()}): not a CIFAR-100 binary file.')
  return fine


def cifar100_class_names(folder: pathlib.Path) -> tuple[str, ...]:
  names = folder / 'fine_label_names.txt'
  if not names.is_file():
    return tuple(f'class_{i}' for i in range(cifar_lt.CIFAR100_NUM_CLASSES))
  out = tuple(line.strip() for line in names.read_text().splitlines() if line.strip())
  if len(out) != cifar_lt.CIFAR100_NUM_CLASSES:
    raise files.DataError(f'{names} names {len(out)} classes, not '
                          f'{cifar_lt.CIFAR100_NUM_CLASSES}.')
  return out


def cifar100_sources(image_root: str, ratio: float, seed: int
                     ) -> tuple[CifarBinary, CifarBinary, tuple[str, ...]]:
  """CIFAR-100-LT from the binary files: LDAM's seeded subset of train.bin, test.bin whole.

  train.bin is in the original CIFAR-100 order (the order LDAM-DRW's torchvision dataset and
  tfds' `train_%05d` ids follow), so the record position is the position `cifar_lt_indices`
  needs. Returns the train and test sources and the 100 class names.
  """
  folder = cifar100_dir(image_root)
  train_path, test_path = (folder / f for f in _CIFAR_SPLIT_FILES)
  labels = _cifar_labels(train_path)
  keep = cifar_lt.cifar_lt_indices(labels, ratio, seed=seed)
  test_labels = _cifar_labels(test_path)
  return (CifarBinary(train_path, keep, labels[keep]),
          CifarBinary(test_path, np.arange(len(test_labels)), test_labels),
          cifar100_class_names(folder))
