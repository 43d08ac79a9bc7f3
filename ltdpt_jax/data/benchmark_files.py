"""The paper's benchmarks from the files researchers already have, without TensorFlow.

`config.data.source = 'files'` reads a benchmark from `config.data.image_root` instead of tfds,
with the same images and class indices: `cifar100_sources` (the official CIFAR-100 binary
archive, `CifarBinary`), `split_list_sources` (ImageNet-LT and Places-LT: the OLTR lists over
the user's image tree, in any of the layouts of `LAYOUTS`) and `inat2018_sources` (the official
JSON annotations or the iNaturalist18 lists). NumPy only: grain workers import it.
"""

from __future__ import annotations

import json
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
from ltdpt_jax.data import splits

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


def _extract_cifar(archive: pathlib.Path) -> pathlib.Path:
  """Extracts `archive` once into the cache (keyed by its MD5) and returns its cifar-100-binary/.

  The extraction goes to a temporary folder renamed into place, so an interrupted one is redone.
  """
  import pooch  # pylint: disable=g-import-not-at-top  # grain workers never extract
  md5 = pooch.file_hash(str(archive), alg='md5')
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


# ---------------------------------------------------------------------------------------------
# ImageNet-LT, Places-LT and iNaturalist 2018 from image trees.
# ---------------------------------------------------------------------------------------------

# Where a file the OLTR lists name as '<split>/<class>/<file>' may lie under image_root, one
# layout per way the dataset is commonly unpacked: {dataset: [(layout, where), ...]}. Places-LT
# names nested Places365 categories with '-' ('apartment_building-outdoor'), which data_256/
# nests as folders ('a/apartment_building/outdoor'; `splits.listed_class`).
def _class_folders_path(split: str, cls: str, name: str) -> str:
  return f'{split}/{cls}/{name}'


def _imagenet_flat_val(split: str, cls: str, name: str) -> str:
  return f'val/{name}' if split == 'val' else f'{split}/{cls}/{name}'


def _places_folders(size: str):
  def where(split: str, cls: str, name: str) -> str:
    if split == 'val':
      return f'val_{size}/{name}'
    nested = cls.replace('-', '/')
    return f'data_{size}/{nested[0]}/{nested}/{name}'
  return where


LAYOUTS = {
    'imagenet_lt': (
        ('train/<wnid>/ and val/<wnid>/ (class folders)', _class_folders_path),
        ('train/<wnid>/ and val/ (the validation images as the archive holds them)',
         _imagenet_flat_val)),
    'places_lt': (
        ('train/<category>/ and val/<category>/ (places365_standard)', _class_folders_path),
        ('data_256/ and val_256/ (Places365-Standard, small images)', _places_folders('256')),
        ('data_large/ and val_large/ (Places365-Standard, high resolution)',
         _places_folders('large'))),
}
_WHAT = {'imagenet_lt': 'ImageNet (ILSVRC2012)', 'places_lt': 'Places365-Standard',
         'inat2018': 'iNaturalist 2018'}
_SAMPLE = 64  # list entries tried under each layout to choose the tree's layout


def _root(image_root: str, dataset: str) -> str:
  if not image_root:
    raise files.DataError(f"config.data.source='files' needs config.data.image_root: the folder "
                          f'of your {_WHAT[dataset]} images (e.g. {LAYOUTS_HINT[dataset]}).')
  root = files._local_only(image_root, 'image_root')  # pylint: disable=protected-access
  if not os.path.isdir(root):
    raise files.DataError(f'config.data.image_root={image_root!r} is not a directory; set it to '
                          f'the folder of your {_WHAT[dataset]} images ({LAYOUTS_HINT[dataset]}).')
  return root


LAYOUTS_HINT = {
    'imagenet_lt': 'the folder holding train/ and val/',
    'places_lt': 'the folder holding train/ and val/, or data_256/ and val_256/',
    'inat2018': 'the folder holding train_val2018/',
}


def _missing(root: str, dataset: str, list_name: str, paths: list[str], missing: list[int],
             layout: str | None) -> files.DataError:
  """The one line for listed files that are not under `root`: how many, the first few, and,
  when none is there, what the folder holds instead."""
  first = ', '.join(paths[i] for i in missing[:3])
  if layout is None:
    found = sorted(os.listdir(root))
    return files.DataError(
        f'config.data.image_root={root!r} holds none of the first files {list_name} names '
        f'(e.g. {first}) in any layout of {_WHAT[dataset]} '
        f'({"; ".join(name for name, _ in LAYOUTS.get(dataset, ()) ) or "train_val2018/"}); '
        f'it holds {", ".join(found[:8]) or "nothing"}{", ..." if len(found) > 8 else ""}. '
        f'Point image_root at {LAYOUTS_HINT[dataset]}.')
  return files.DataError(
      f'{len(missing):,} of the {len(paths):,} files {list_name} names are not under '
      f'config.data.image_root={root!r} (layout {layout}), e.g. {first}. Complete the tree, or '
      'point image_root at the full dataset.')


def _resolve(root: str, dataset: str, list_name: str, rels: list[str]) -> list[str]:
  """Absolute paths of the listed files, in the layout of the tree (chosen on the first
  `_SAMPLE` entries: the one that finds most of them); DataError if any is missing."""
  parts = []
  for rel in rels:
    split, cls, name = (rel.lstrip('/').split('/') + ['', '', ''])[:3]
    if not name or rel.lstrip('/').count('/') != 2:
      raise files.DataError(f'{list_name}: {rel!r} is not <split>/<class>/<file> as the '
                            'OLTR lists name their images.')
    parts.append((split, cls, name))
  best, best_hits = None, 0
  for layout, where in LAYOUTS[dataset]:
    hits = sum(os.path.isfile(os.path.join(root, where(*p))) for p in parts[:_SAMPLE])
    if hits > best_hits:
      best, best_hits = (layout, where), hits
  if best is None:
    raise _missing(root, dataset, list_name, rels, list(range(min(3, len(rels)))), None)
  layout, where = best
  paths = [os.path.join(root, where(*p)) for p in parts]
  missing = [i for i, path in enumerate(paths) if not os.path.isfile(path)]
  if missing:
    raise _missing(root, dataset, list_name, [where(*p) for p in parts], missing, layout)
  return paths


def _checked_labels(entries: list[tuple[str, int]], num_classes: int, what: str) -> np.ndarray:
  labels = np.array([label for _, label in entries], np.int64)
  if labels.max() >= num_classes:
    raise files.DataError(f'{what} has label {labels.max()}, but the dataset has {num_classes} '
                          'classes: is it a list of another dataset?')
  return labels


def split_list_sources(dataset: str, image_root: str, split_dir: str, eval_split: str,
                       num_classes: int, on_bad_image: str):
  """ImageNet-LT / Places-LT: the OLTR lists (`splits.fetch_split_file`: downloaded with their
  SHA-256, or from `split_dir`) over the user's image tree, labels and class names as listed
  (the tfds path's; `splits.class_names_from_lists`).

  Returns (train Scan, eval Scan, class names, eval list name, {path: problem} of the files
  dropped by `files.without_bad`).
  """
  root = _root(image_root, dataset)
  prefix = {'imagenet_lt': 'ImageNet_LT', 'places_lt': 'Places_LT'}[dataset]
  scans, all_entries = [], []
  for list_name in (f'{prefix}_train.txt', f'{prefix}_{eval_split}.txt'):
    entries = splits.read_split_file(splits.fetch_split_file(list_name, split_dir=split_dir))
    labels = _checked_labels(entries, num_classes, list_name)
    paths = _resolve(root, dataset, list_name, [rel for rel, _ in entries])
    scans.append(files.Scan(tuple(paths), labels, (), {}, f'{root} ({list_name})'))
    all_entries += entries
  names = splits.class_names_from_lists(all_entries, num_classes, dataset)
  (train, bad_train), (ev, bad_eval) = (files.without_bad(s, on_bad_image) for s in scans)
  return train, ev, names, f'{prefix}_{eval_split}.txt', {**bad_train, **bad_eval}


# The official annotations, and the lists most long-tailed code reads (OLTR / LPT format).
INAT_JSON = {'train': 'train2018.json', 'val': 'val2018.json'}
INAT_LISTS = {'train': 'iNaturalist18_train.txt', 'val': 'iNaturalist18_val.txt'}


def _find(name: str, folders: list[str]) -> str | None:
  return next((os.path.join(d, name) for d in folders if os.path.isfile(os.path.join(d, name))),
              None)


def _inat_json(path: str) -> tuple[list[tuple[str, int]], dict[int, str]]:
  """[(file_name, category_id)] of an iNat2018 annotation file in its image order, and
  {category_id: species name}. Images and annotations are joined by image id."""
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
    category = {a['image_id']: int(a['category_id']) for a in data['annotations']}
    entries = [(im['file_name'], category[im['id']]) for im in data['images']]
    names = {int(c['id']): str(c['name']) for c in data.get('categories', ())}
  except (ValueError, KeyError, TypeError) as e:
    raise files.DataError(f'{path} is not an iNaturalist 2018 annotation file ({type(e).__name__}: '
                          f'{e}): expected images, annotations and categories as in the official '
                          f'{os.path.basename(path)}.') from e
  return entries, names


def inat2018_sources(image_root: str, split_dir: str, num_classes: int, on_bad_image: str):
  """iNaturalist 2018: the official train2018.json / val2018.json (in `split_dir` or
  `image_root`), else iNaturalist18_{train,val}.txt there, over image_root/train_val2018/.

  The label is the category id, which is also the tfds label (tfds' names file lists the 8,142
  species in category-id order); the class names are the JSON's species names ('class_<i>'
  with the lists alone). Returns what `split_list_sources` does.
  """
  root = _root(image_root, 'inat2018')
  folders = [d for d in (split_dir, image_root) if d]
  scans, names = [], {}
  for split in ('train', 'val'):
    if path := _find(INAT_JSON[split], folders):
      entries, more = _inat_json(path)
      names.update(more)
    elif path := _find(INAT_LISTS[split], folders):
      entries = [(rel, label) for rel, label in splits.read_split_file(path)]
    else:
      raise files.DataError(
          f'No {INAT_JSON[split]} (official annotations) or {INAT_LISTS[split]} (the OLTR / LPT '
          f'list) in {" or ".join(repr(d) for d in folders)}: put one there '
          '(config.data.split_dir or config.data.image_root).')
    list_name = os.path.basename(path)
    labels = _checked_labels(entries, num_classes, list_name)
    paths = [os.path.join(root, rel.lstrip('/')) for rel, _ in entries]
    missing = [i for i, p in enumerate(paths) if not os.path.isfile(p)]
    if missing:
      sample = min(_SAMPLE, len(paths))
      layout = (None if missing[:sample] == list(range(sample)) else
                'train_val2018/<supercategory>/<category id>/')
      raise _missing(root, 'inat2018', list_name, [r for r, _ in entries], missing, layout)
    scans.append(files.Scan(tuple(paths), labels, (), {}, f'{root} ({list_name})'))
  class_names = tuple(names.get(i, f'class_{i}') for i in range(num_classes))
  (train, bad_train), (ev, bad_eval) = (files.without_bad(s, on_bad_image) for s in scans)
  return train, ev, class_names, os.path.basename(path), {**bad_train, **bad_eval}
