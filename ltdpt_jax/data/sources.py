"""Random-access sources of the datasets: tfds ArrayRecord data, synthetic, or the user's files.

The paper's benchmarks come from tfds (`config.data.source='tfds'`) or from the files
researchers already have ('files': `benchmark_files`).

`get_sources(config.data)` returns the train and eval `Sources`; each source is a picklable
sequence of {'image': uint8 HWC, 'label': int, 'id': i} with every label in `.labels`. grain
reads them in worker processes, so nothing here imports JAX. `open_tfds` opens a prepared tfds
split (and says how to prepare it), `scan_fields` reads its record fields without the images.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ltdpt_jax import fetch
from ltdpt_jax.data import benchmark_files
from ltdpt_jax.data import cifar_lt
from ltdpt_jax.data import files
from ltdpt_jax.data import splits
from ltdpt_jax.data import synthetic
from ltdpt_jax.data import transforms

TFDS_NAME = {
    'cifar100_lt': 'cifar100',
    'imagenet_lt': 'imagenet2012',
    'places_lt': 'places365_small',
    'inat2018': 'i_naturalist2018',
}
# What config.data.dataset and config.data.eval_split accept (config_lib.validate checks these).
# ImageNet-LT and Places-LT evaluate on the OLTR *test* lists by default, as LPT does (exactly the
# tfds `validation` splits); eval_split 'val' selects the OLTR val lists (20 images per class,
# drawn from the tfds train split).
DATASETS = ('cifar100_lt', 'imagenet_lt', 'places_lt', 'inat2018', 'synthetic', 'folder', 'list')
EVAL_SPLITS = ('test', 'val')
# Where config.data.source reads the paper's benchmarks (the four of TFDS_NAME) from: prepared
# tfds data in config.data.data_dir, or the dataset's own files under config.data.image_root.
BENCHMARK_SOURCES = ('tfds', 'files')
ON_BAD_IMAGE = files.ON_BAD_IMAGE
# Classes of each real dataset.
NUM_CLASSES = {'cifar100_lt': cifar_lt.CIFAR100_NUM_CLASSES, 'imagenet_lt': 1000,
               'places_lt': 365, 'inat2018': 8142}
_FILE_FIELD = {'imagenet2012': 'file_name', 'places365_small': 'filename'}
_SPLIT_PREFIX = {'imagenet_lt': 'ImageNet_LT', 'places_lt': 'Places_LT'}
_DISK_CACHE_MIN_RECORDS = 100_000
_SCAN_CHUNK = 1024


def prepare_hint(name: str, data_dir: str) -> str:
  """How to prepare tfds dataset `name` in ArrayRecord format in `data_dir`."""
  dd = f' --data_dir={data_dir}' if data_dir else ''
  manual = {
      'imagenet2012': ' --manual_dir=DIR_WITH_ILSVRC2012_img_train.tar_AND_ILSVRC2012_img_val.tar',
  }.get(name, '')
  pyargs = f"data_dir={data_dir!r}, " if data_dir else ''
  return (f'Prepare it once (the preparation needs TensorFlow: pip install tensorflow): '
          f'`tfds build {name}{dd}{manual} --file_format=array_record`, or in Python '
          f"`tfds.builder({name!r}, {pyargs}file_format='array_record').download_and_prepare()`.")


def open_tfds(name: str, split: str, data_dir: str = '', *, decoders: Any = None):
  """`tfds.data_source(name, split=split, data_dir=data_dir)` with clear errors when unprepared.

  The dataset must be prepared once in ArrayRecord format (`tfds.data_source` reads nothing
  else); the errors say how (`prepare_hint`).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(f'tfds could not open dataset {name!r} in data_dir '
                       f'{data_dir or "(tfds default)"}: {e}') from e
  where = str(builder.data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f'tfds dataset {name!r} (version {builder.version}) is not prepared in {where} '
        f'(config.data.data_dir={data_dir!r}). {prepare_hint(name, data_dir)}')
  info = builder.info
  file_format = str(getattr(info.file_format, 'value', info.file_format) or 'tfrecord')
  if file_format != 'array_record':
    raise ValueError(
        f'tfds dataset {name!r} in {where} is stored as {file_format}; random access needs '
        f'ArrayRecord. Convert it with `tfds convert_format --dataset_version_dir={where} '
        f'--out_file_format=array_record` or rebuild it: {prepare_hint(name, data_dir)}')
  if split not in info.splits:
    raise ValueError(f'tfds dataset {name!r} in {where} has no split {split!r} '
                     f'(it has {sorted(info.splits)}).')
  return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False,
                          decoders=decoders)


@functools.lru_cache(maxsize=8)
def label_names(name: str, data_dir: str) -> tuple[str, ...]:
  """The class names of tfds dataset `name` (its 'label' feature)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tuple(tfds.builder(name, data_dir=data_dir or None).info.features['label'].names)


def _dataset_fingerprint(name: str, data_dir: str) -> tuple[str, str]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir or None)
  path = pathlib.Path(str(builder.data_dir))
  info_file = path / 'dataset_info.json'
  content = info_file.read_bytes() if info_file.exists() else b''
  return str(path), hashlib.sha1(str(path).encode() + content).hexdigest()[:16]


@functools.lru_cache(maxsize=32)
def scan_fields(name: str, split: str, data_dir: str, fields: tuple[str, ...]
                ) -> dict[str, np.ndarray]:
  """Reads `fields` (not the image) of every record of a tfds split, in record order.

  Joining split files needs each record's file name. Image decoding is skipped, but the whole
  split is read (minutes for imagenet2012), so the result is cached in memory, and on disk under
  `fetch.cache_dir()/index` for splits of more than 100,000 records, keyed by the prepared
  dataset's path and dataset_info.json. Text fields come back as str arrays, the others as int64.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  src = open_tfds(name, split, data_dir, decoders={'image': tfds.decode.SkipDecoding()})
  n = len(src)
  cache_file = None
  if n > _DISK_CACHE_MIN_RECORDS:
    _, fp = _dataset_fingerprint(name, data_dir)
    cache_file = (fetch.cache_dir() / 'index' /
                  f'{name}-{split}-{"-".join(fields)}-{fp}.npz')
    if cache_file.is_file():
      with np.load(cache_file) as z:
        out = {k: z[k] for k in fields}
      if all(len(v) == n for v in out.values()):
        return out
  logging.info('Scanning %s of %d records of tfds %s/%s (cached afterwards).', fields, n, name,
               split)
  cols: dict[str, list] = {k: [] for k in fields}
  for start in range(0, n, _SCAN_CHUNK):
    recs = src.__getitems__(list(range(start, min(start + _SCAN_CHUNK, n))))
    for r in recs:
      for k in fields:
        v = r[k]
        cols[k].append(v.decode('utf-8') if isinstance(v, bytes) else v)
  out = {}
  for k, v in cols.items():
    out[k] = np.array(v) if v and isinstance(v[0], str) else np.asarray(v, np.int64)
  if cache_file is not None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f'.tmp{os.getpid()}.npz')
    np.savez(tmp, **out)
    os.replace(tmp, cache_file)
  return out


class RecordView:
  """Records `record_indices` of a tfds source, relabelled: [i] -> {'image', 'label', 'id': i}."""

  def __init__(self, source: Sequence[dict], record_indices: np.ndarray, labels: np.ndarray):
    if len(record_indices) != len(labels):
      raise ValueError(f'{len(record_indices)} record indices but {len(labels)} labels.')
    self.source = source
    self.record_indices = np.asarray(record_indices, np.int64)
    self.labels = np.asarray(labels, np.int64)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    rec = self.source[int(self.record_indices[index])]
    return {'image': transforms.as_rgb(rec['image']), 'label': int(self.labels[index]),
            'id': index}


@dataclasses.dataclass(frozen=True)
class Sources:
  """The train and eval sources of one dataset and what the trainer needs to know about them."""
  name: str
  train: Any
  eval: Any
  num_classes: int
  eval_split: str  # which split `eval` is, e.g. 'test', 'validation', 'Places_LT_test.txt'
  class_names: tuple[str, ...] = ()
  bad_images: tuple[tuple[str, str], ...] = ()  # (path, problem) of the files skipped
  val: Any = None  # images held out of `train` for model selection (data.val_fraction)

  @property
  def class_counts(self) -> np.ndarray:
    return np.bincount(self.train.labels, minlength=self.num_classes).astype(np.int64)


def _ids_to_int(ids: np.ndarray, prefix: str) -> np.ndarray:
  try:
    out = np.array([int(s[len(prefix):]) for s in ids], np.int64)
  except ValueError as e:
    raise ValueError(f'cifar100 ids should look like {prefix}00000, got e.g. {ids[:3]}') from e
  if len(np.unique(out)) != len(out):
    raise ValueError('cifar100 has duplicate ids; the prepared dataset is corrupt.')
  return out


def cifar100_lt_sources(data_dir: str, ratio: float, seed: int, *, source: str = 'tfds',
                        image_root: str = '') -> Sources:
  """CIFAR-100-LT: LDAM's seeded subset of the training images, the test split whole.

  source 'tfds': tfds `cifar100` in `data_dir`. Its prepared files are shuffled on disk, so the
  records are first sorted by their `id` (`train_%05d`, the position in the original CIFAR-100
  training file). source 'files': the official binary archive under `image_root`, already in
  that order (`benchmark_files.cifar100_sources`). Either way train element i is image i of
  LDAM's IMBALANCECIFAR100 list.
  """
  num_classes = NUM_CLASSES['cifar100_lt']
  if source == 'files':
    train, test, names = benchmark_files.cifar100_sources(image_root, ratio, seed)
    return Sources('cifar100_lt', train, test, num_classes, 'test', names)
  name = 'cifar100'
  tr = scan_fields(name, 'train', data_dir, ('id', 'label'))
  order = np.argsort(_ids_to_int(tr['id'], 'train_'), kind='stable')
  labels_orig = tr['label'][order]
  keep = cifar_lt.cifar_lt_indices(labels_orig, ratio, seed=seed)
  train = RecordView(open_tfds(name, 'train', data_dir), order[keep], labels_orig[keep])
  te = scan_fields(name, 'test', data_dir, ('id', 'label'))
  te_order = np.argsort(_ids_to_int(te['id'], 'test_'), kind='stable')
  test = RecordView(open_tfds(name, 'test', data_dir), te_order, te['label'][te_order])
  return Sources('cifar100_lt', train, test, num_classes, 'test', label_names(name, data_dir))


def _split_file_view(dataset: str, list_name: str, data_dir: str, split_dir: str
                     ) -> tuple[RecordView, list[tuple[str, int]]]:
  """The records of tfds imagenet2012 / places365_small an OLTR list names, with its labels.

  A record is found by its file name and its tfds class, the class the list's folder names
  (`splits.listed_class`), not the list's label: Places-LT numbers five classes differently
  from tfds (`splits.oltr_label_order`) and its training file names repeat in every class.
  """
  name = TFDS_NAME[dataset]
  path = splits.fetch_split_file(list_name, split_dir=split_dir)
  entries = splits.read_split_file(path)
  prefixes = {p.lstrip('/').split('/', 1)[0] for p, _ in entries}
  if len(prefixes) != 1 or next(iter(prefixes)) not in splits.TFDS_SPLIT_OF_PREFIX:
    raise ValueError(f'{path}: paths must all start with one of '
                     f'{sorted(splits.TFDS_SPLIT_OF_PREFIX)}/ '
                     f'(got first folders {sorted(prefixes)}).')
  tfds_split = splits.TFDS_SPLIT_OF_PREFIX[next(iter(prefixes))]
  field = _FILE_FIELD[name]
  scanned = scan_fields(name, tfds_split, data_dir, (field, 'label'))
  tfds_label = {n: i for i, n in enumerate(label_names(name, data_dir))}
  by_class = [(p, tfds_label.get(splits.listed_class(p, dataset), label)) for p, label in entries]
  rec = splits.match_split_entries(by_class, scanned[field], scanned['label'],
                                   what=f'{path} vs tfds {name}/{tfds_split}')
  labels = np.array([label for _, label in entries], np.int64)
  return RecordView(open_tfds(name, tfds_split, data_dir), rec, labels), entries


def split_file_digests(data) -> dict[str, str]:
  """{list file name: SHA-256} of the OLTR lists an ImageNet-LT / Places-LT config reads (its
  train list and eval list, from `data.split_dir` or the download cache), {} for any other
  dataset: what a run records so that a report can compare them with the published files."""
  prefix = _SPLIT_PREFIX.get(data.dataset)
  if prefix is None:
    return {}
  names = (f'{prefix}_train.txt', f'{prefix}_{data.get("eval_split", "test")}.txt')
  return {n: fetch.sha256_of(splits.fetch_split_file(n, split_dir=data.get('split_dir', '')))
          for n in names}


def split_file_sources(dataset: str, data_dir: str, split_dir: str,
                       eval_split: str = 'test', *, source: str = 'tfds', image_root: str = '',
                       on_bad_image: str = 'error') -> Sources:
  """ImageNet-LT / Places-LT: the OLTR lists joined with tfds imagenet2012 / places365_small by
  file name (source 'tfds'), or read from the user's image tree under `image_root` ('files':
  `benchmark_files.split_list_sources`). Either way the labels are the lists'.

  `eval_split` 'test' (default) or 'val' picks the OLTR list of the eval source.
  """
  if eval_split not in EVAL_SPLITS:
    raise ValueError(f'config.data.eval_split must be one of {EVAL_SPLITS}, got {eval_split!r}.')
  if source == 'files':
    train, ev, names, ev_name, bad = benchmark_files.split_list_sources(
        dataset, image_root, split_dir, eval_split, NUM_CLASSES[dataset], on_bad_image)
    return _image_file_sources(dataset, train, ev, NUM_CLASSES[dataset], ev_name, names, bad)
  prefix = _SPLIT_PREFIX[dataset]
  train, train_entries = _split_file_view(dataset, f'{prefix}_train.txt', data_dir, split_dir)
  ev_name = f'{prefix}_{eval_split}.txt'
  ev, ev_entries = _split_file_view(dataset, ev_name, data_dir, split_dir)
  num_classes = NUM_CLASSES[dataset]
  for what, v in (('train', train), (ev_name, ev)):
    if v.labels.max() >= num_classes:
      raise ValueError(f'{dataset} {what} has label {v.labels.max()} >= {num_classes} classes.')
  names = splits.class_names_from_lists(
      train_entries + ev_entries, num_classes, dataset,
      splits.oltr_label_order(label_names(TFDS_NAME[dataset], data_dir), dataset))
  return Sources(dataset, train, ev, num_classes, ev_name, names)


def inat2018_sources(data_dir: str, *, source: str = 'tfds', image_root: str = '',
                     split_dir: str = '', on_bad_image: str = 'error') -> Sources:
  """iNaturalist 2018: tfds `i_naturalist2018` train / validation as they are (the tfds label,
  the index of the species name in tfds' names file, is used as is), or with source 'files' the
  official annotations over the user's train_val2018/ (`benchmark_files.inat2018_sources`)."""
  if source == 'files':
    train, ev, names, ev_name, bad = benchmark_files.inat2018_sources(
        image_root, split_dir, NUM_CLASSES['inat2018'], on_bad_image)
    return _image_file_sources('inat2018', train, ev, NUM_CLASSES['inat2018'], ev_name, names,
                               bad)
  name = 'i_naturalist2018'
  views = []
  for split in ('train', 'validation'):
    labels = scan_fields(name, split, data_dir, ('label',))['label']
    views.append(RecordView(open_tfds(name, split, data_dir), np.arange(len(labels)), labels))
  names = label_names(name, data_dir)
  return Sources('inat2018', views[0], views[1], len(names), 'validation', names)


def synthetic_sources(*, num_classes: int, imbalance_ratio: float, num_train_max: int,
                      num_test_per_class: int, image_size: int, seed: int,
                      class_set: str = 'default') -> Sources:
  kw = dict(num_classes=num_classes, imbalance_ratio=imbalance_ratio,
            num_train_max=num_train_max, num_test_per_class=num_test_per_class,
            image_size=image_size, seed=seed, class_set=class_set)
  return Sources('synthetic', synthetic.SyntheticLT('train', **kw),
                 synthetic.SyntheticLT('test', **kw), num_classes, 'test',
                 tuple(synthetic.class_names(num_classes, class_set)))


def file_sources(dataset: str, *, train: str, eval_: str, image_root: str,
                 class_names: tuple[str, ...], on_bad_image: str) -> Sources:
  """'folder' (train/eval directories) or 'list' (train/eval list files): see `files`."""
  if dataset == 'folder':
    tr = files.scan_folder(train, class_names=class_names or None, key='train_dir')
    ev = files.scan_folder(eval_, class_names=tr.class_names, key='eval_dir',
                           allow_empty_classes=True)
  else:
    tr = files.read_list(train, image_root=image_root, class_names=class_names or None,
                         key='train_list')
    ev = files.read_list(eval_, image_root=image_root, class_names=tr.class_names,
                         key='eval_list')
  for scan in (tr, ev):
    if scan.ignored:
      logging.info('Scanned %s: %d images; ignored %s.', scan.where, len(scan.paths),
                   ', '.join(f'{n} {what}' for what, n in sorted(scan.ignored.items())))
  tr, bad_tr = files.without_bad(tr, on_bad_image)
  ev, bad_ev = files.without_bad(ev, on_bad_image)
  counts = np.bincount(tr.labels, minlength=len(tr.class_names))
  empty = [tr.class_names[i] for i in np.flatnonzero(counts == 0)]
  if empty:
    raise files.DataError(f'Class(es) {empty[:5]} have no readable training image in '
                          f'{tr.where}; add images, or leave them out of config.data.class_names.')
  return _image_file_sources(dataset, tr, ev, len(tr.class_names), ev.where, tr.class_names,
                             {**bad_tr, **bad_ev})


def _image_file_sources(name: str, train: files.Scan, ev: files.Scan, num_classes: int,
                        eval_split: str, class_names, bad: dict[str, str]) -> Sources:
  """Sources over the image files two scans found, and {path: problem} of those dropped."""
  return Sources(name, files.ImageFiles(train.paths, train.labels),
                 files.ImageFiles(ev.paths, ev.labels), num_classes, eval_split,
                 tuple(class_names), tuple(sorted(bad.items())))


def synthetic_image_size(d) -> int:
  """Side of a synthetic dataset's generated images: data.synthetic_image_size, or
  data.image_size where that is 0 or absent."""
  return int(d.get('synthetic_image_size', 0) or d.image_size)


def _key(d) -> tuple:
  common = (d.dataset, str(d.get('data_dir', '') or ''))
  if d.dataset in TFDS_NAME:  # where a benchmark is read from
    common += (str(d.get('source', 'tfds')), str(d.get('image_root', '') or ''),
               str(d.get('on_bad_image', 'error')))
  if d.dataset == 'cifar100_lt':
    return common + (float(d.imbalance_ratio), int(d.seed))
  if d.dataset in ('imagenet_lt', 'places_lt'):
    return common + (str(d.get('split_dir', '') or ''), str(d.get('eval_split', 'test')))
  if d.dataset == 'inat2018':
    return common + (str(d.get('split_dir', '') or ''),)
  if d.dataset == 'synthetic':
    return common + (int(d.num_classes), float(d.imbalance_ratio), int(d.num_train_max),
                     int(d.num_test_per_class), synthetic_image_size(d), int(d.seed),
                     str(d.get('class_set', 'default')))
  if d.dataset in ('folder', 'list'):
    where = ((d.train_dir, d.eval_dir) if d.dataset == 'folder' else (d.train_list, d.eval_list))
    return common + tuple(str(w) for w in where) + (
        str(d.get('image_root', '')), tuple(d.get('class_names', ()) or ()),
        str(d.get('on_bad_image', 'error')))
  raise ValueError(f'Unknown config.data.dataset {d.dataset!r}; expected one of {DATASETS}.')


@functools.lru_cache(maxsize=8)
def _sources_for_key(key: tuple) -> Sources:
  dataset, data_dir = key[0], key[1]
  if dataset in TFDS_NAME:
    where = dict(source=key[2], image_root=key[3])
    if dataset == 'cifar100_lt':
      return cifar100_lt_sources(data_dir, key[5], key[6], **where)
    if dataset == 'inat2018':
      return inat2018_sources(data_dir, split_dir=key[5], on_bad_image=key[4], **where)
    return split_file_sources(dataset, data_dir, key[5], key[6], on_bad_image=key[4], **where)
  if dataset in ('folder', 'list'):
    _, _, train, eval_, image_root, class_names, on_bad_image = key
    return file_sources(dataset, train=train, eval_=eval_, image_root=image_root,
                        class_names=class_names, on_bad_image=on_bad_image)
  _, _, k, ratio, nmax, ntest, size, seed, class_set = key
  return synthetic_sources(num_classes=k, imbalance_ratio=ratio, num_train_max=nmax,
                           num_test_per_class=ntest, image_size=size, seed=seed,
                           class_set=class_set)


class Subset:
  """Elements `indices` of a source (with `labels`), renumbered 0..len-1."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices, np.int64)
    self.labels = np.asarray(source.labels)[self.indices]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict:
    return {**self.source[int(self.indices[int(index)])], 'id': int(index)}


def val_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, validation indices) of a training set: from each class, round(fraction x
  its images) drawn at random (seeded by `seed`), but never its last one, so every class keeps
  at least one training image (a class of one image gives none). Both sorted, disjoint, together
  all of `labels`."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f'config.data.val_fraction={fraction} must be in [0, 1).')
  labels = np.asarray(labels)
  rng = np.random.default_rng([int(seed), 0x7A1])
  held = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    k = min(int(np.floor(fraction * len(members) + 0.5)), len(members) - 1)
    held.append(rng.permutation(members)[:k])
  val = np.sort(np.concatenate(held)) if held else np.zeros((0,), np.int64)
  train = np.setdiff1d(np.arange(len(labels)), val)
  return train.astype(np.int64), val.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _sources_with_val(key: tuple, fraction: float, seed: int) -> Sources:
  src = _sources_for_key(key)
  if fraction <= 0:
    return src
  train, val = val_split(src.train.labels, fraction, seed)
  return dataclasses.replace(src, train=Subset(src.train, train), val=Subset(src.train, val))


def get_sources(data) -> Sources:
  """The train / eval sources that a config's data section describes (memoised per process).

  | config.data.dataset | tfds dataset (version) | train | eval |
  |---|---|---|---|
  | 'cifar100_lt' | cifar100 (3.0.2) | LDAM subset of `train` | `test` (10,000) |
  | 'imagenet_lt' | imagenet2012 (5.1.0) | ImageNet_LT_train.txt in `train` | ImageNet_LT_test.txt |
  | 'places_lt' | places365_small (2.1.0) | Places_LT_train.txt in `train` | Places_LT_test.txt |
  | 'inat2018' | i_naturalist2018 (1.0.0) | `train` (437,513) | `validation` (24,426) |
  | 'synthetic' | none (`synthetic`; `data.class_set`) | long-tailed train | balanced test |
  | 'folder' | none (`files`) | `data.train_dir` class folders | `data.eval_dir` |
  | 'list' | none (`files`) | `data.train_list` under `data.image_root` | `data.eval_list` |

  With `data.source='files'` the four benchmarks read the dataset's own files under
  `data.image_root` instead (`benchmark_files`), with the same images and labels: the CIFAR-100
  binary archive, the ImageNet and Places365 image trees through the same OLTR lists, and
  iNat2018's train_val2018/ through its official annotations.

  With `data.val_fraction` > 0, part of the training images (`val_split`, seeded by
  `data.seed`) become `val`, a validation split for model selection, and leave `train`.
  """
  return _sources_with_val(_key(data), float(data.get('val_fraction', 0.0) or 0.0),
                           int(data.get('seed', 0)))
