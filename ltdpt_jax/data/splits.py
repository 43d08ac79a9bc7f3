"""The OLTR split files of ImageNet-LT and Places-LT (Liu et al. 2019): reading, fetching, matching.

`read_split_file` parses one, `fetch_split_file` reads it from `config.data.split_dir` or
downloads it once (SHA-256 checked), `match_split_entries` joins its entries with the records of
a tfds split, and `class_counts` counts them.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
import logging
import os
import pathlib

from etils import epath
import numpy as np

from ltdpt_jax import fetch

_COMMIT = '22370c64141cc662f62ead89447c838c4a7977b5'  # facebookresearch/classifier-balancing
_GITHUB = f'https://raw.githubusercontent.com/facebookresearch/classifier-balancing/{_COMMIT}/data'
_DRIVE = 'https://drive.google.com/uc?export=download&id='

# The files the OLTR authors published (the same blobs as in facebookresearch/classifier-balancing):
#
# | file                  | lines   | classes | per class | drawn from (tfds split)             |
# | ImageNet_LT_train.txt | 115,846 | 1000    | 1280..5   | imagenet2012 `train`                |
# | ImageNet_LT_val.txt   | 20,000  | 1000    | 20        | imagenet2012 `train`                |
# | ImageNet_LT_test.txt  | 50,000  | 1000    | 50        | imagenet2012 `validation` (all)     |
# | Places_LT_train.txt   | 62,500  | 365     | 4980..5   | places365_small `train`             |
# | Places_LT_val.txt     | 7,300   | 365     | 20        | places365_small `train`             |
# | Places_LT_test.txt    | 36,500  | 365     | 100       | places365_small `validation` (all)  |
#
# Places-LT train has 131 / 163 / 71 head / medium / tail classes (> 100, 20..100, < 20).
# file name -> (sha256, mirrors). sha256 of ImageNet_LT_{train,val}.txt as in tfds
# `imagenet_lt/checksums.tsv` (whose Google Drive URLs are the second mirror); the others computed
# from the published files.
SPLIT_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    'ImageNet_LT_train.txt': (
        'efdbdad4f050237c310b2f354cf95a8b1d7c8d57a63c4ea4bb6bf2bcb012f37f',
        (f'{_GITHUB}/ImageNet_LT/ImageNet_LT_train.txt',
         f'{_DRIVE}1Sl1cwy6Dei1I1BMS1YKjI35fkaR1UA_7')),
    'ImageNet_LT_val.txt': (
        '9af7ba688acf9532ff5845a8fb14a1e97fdc4c51ac48bc72c08ea9c3f7ff142e',
        (f'{_GITHUB}/ImageNet_LT/ImageNet_LT_val.txt',
         f'{_DRIVE}1AjYczW4khrQrwPIygXUkHF-Qv4QGEsCF')),
    'ImageNet_LT_test.txt': (
        'd1590191cf8a71fada7b1aaedaa2d139a2aea93ff2f1b755319d0bd8dbaa55d5',
        (f'{_GITHUB}/ImageNet_LT/ImageNet_LT_test.txt',)),
    'Places_LT_train.txt': (
        '726c4871dcbf07ce2f857703bfe32e9a83ffbf52d704239f6d95c4f4f4c247f7',
        (f'{_GITHUB}/Places_LT/Places_LT_train.txt',)),
    'Places_LT_val.txt': (
        '719e3cf3766c09134ea28f56f1036c78def511ac1ed2c2532a6beef78f2439ba',
        (f'{_GITHUB}/Places_LT/Places_LT_val.txt',)),
    'Places_LT_test.txt': (
        '44eee8441c8098c59195465abede425721bc35525d75209f9433b161a6eb37bc',
        (f'{_GITHUB}/Places_LT/Places_LT_test.txt',)),
}

# tfds split each OLTR list selects from, by the first folder of its paths.
TFDS_SPLIT_OF_PREFIX = {'train': 'train', 'val': 'validation'}


def listed_class(path: str, dataset: str) -> str:
  """The class a list path `<split>/<class>/<file>` names, spelt as tfds spells it: an ImageNet
  wnid as it is; a Places365 category with '/' for the lists' '-' ('apartment_building-outdoor'
  is 'apartment_building/outdoor'; no category has a '-' of its own)."""
  folder = path.lstrip('/').split('/')[1]
  return folder.replace('-', '/') if dataset == 'places_lt' else folder


def oltr_label_order(tfds_names: Sequence[str], dataset: str) -> tuple[str, ...]:
  """tfds' class names in the order the OLTR lists number the classes.

  ImageNet-LT numbers them as tfds does (sorted wnids). OLTR numbers Places-LT's classes in the
  order of the category names with '/' read as '_', tfds and Places365 with '/' kept, so five
  classes differ: OLTR's 116-118 are desert_road, desert/sand, desert/vegetation (tfds:
  desert/sand, desert/vegetation, desert_road) and 141-142 field_road, field/wild (tfds:
  field/wild, field_road). The lists' labels are what LPT and the paper evaluate, so they are
  kept, with these names.
  """
  if dataset == 'places_lt':
    return tuple(sorted(tfds_names, key=lambda name: name.replace('/', '_')))
  return tuple(tfds_names)


def class_names_from_lists(entries: Sequence[tuple[str, int]], num_classes: int, dataset: str,
                           fallback: Sequence[str] = ()) -> tuple[str, ...]:
  """The class names in the lists' label order (`oltr_label_order`): each label's
  `listed_class`, else `fallback`'s name at that index, else 'class_<i>'."""
  names = [fallback[i] if i < len(fallback) else f'class_{i}' for i in range(num_classes)]
  for path, label in entries:
    if label < num_classes:
      names[label] = listed_class(path, dataset)
  return tuple(names)


def read_split_file(path: str | os.PathLike) -> list[tuple[str, int]]:
  """Parses an OLTR split file into [(relative_path, label), ...] in file order.

  A line is `<relative/path> <int label>`, e.g. `train/n01440764/n01440764_762.JPEG 0`
  (ImageNet) or `train/airfield/00004851.jpg 0` (Places365-Standard "easyformat"); OLTR joins
  the path with a data root, and only its basename and the label matter here. Blank lines are
  skipped. A line that is not `<path> <non-negative int>` raises a ValueError
  naming the file and the 1-based line number. Local or remote (gs://, through `etils.epath`).
  """
  path = epath.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'Split file {path} does not exist.')
  entries = []
  with path.open('r', encoding='utf-8') as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      parts = line.split()
      ok = len(parts) == 2
      if ok:
        try:
          label = int(parts[1])
        except ValueError:
          ok = False
      if not ok or label < 0:
        raise ValueError(f'{path}:{lineno}: malformed split-file line {line.rstrip()!r}; '
                         "expected '<relative/path> <non-negative integer label>'.")
      entries.append((parts[0], label))
  if not entries:
    raise ValueError(f'Split file {path} has no entries.')
  return entries


def class_counts(entries: Sequence[tuple[str, int]], num_classes: int | None = None) -> np.ndarray:
  """Images per label (int64, length num_classes or max label + 1)."""
  labels = np.array([label for _, label in entries], np.int64)
  return np.bincount(labels, minlength=num_classes or 0).astype(np.int64)


def fetch_split_file(name: str, *, split_dir: str | os.PathLike = '',
                     cache: str | os.PathLike | None = None,
                     urls: Sequence[str] | None = None, sha256: str | None = None,
                     timeout: float | None = None) -> epath.Path:
  """Returns a local path of the OLTR split file `name` (e.g. 'Places_LT_train.txt').

  With `split_dir`, the file is taken from `<split_dir>/<name>` or `<split_dir>/<prefix>/<name>`
  (prefix 'ImageNet_LT' / 'Places_LT', the OLTR layout); a checksum different from the published
  one is logged, not fatal, so that custom lists can be used. Without it, the file is downloaded
  from `urls` (default: the published mirrors) into `cache` (default `fetch.cache_dir()/splits`)
  with `fetch.download`, which keeps a cached copy with the expected sha256 and replaces another.
  `split_dir` may be remote (gs://, read through `etils.epath`, as on Cloud TPU VMs).
  """
  if name not in SPLIT_FILES and (urls is None or sha256 is None):
    raise ValueError(f'Unknown split file {name!r}; known: {sorted(SPLIT_FILES)} '
                     '(or pass urls= and sha256=).')
  want_sha, mirrors = SPLIT_FILES.get(name, (None, ()))
  want_sha = sha256 or want_sha
  mirrors = tuple(urls) if urls is not None else mirrors
  prefix = name.rsplit('_', 1)[0]
  if split_dir:
    split_dir = epath.Path(split_dir)
    for cand in (split_dir / name, split_dir / prefix / name):
      if cand.is_file():
        got = fetch.sha256_of(cand)
        if got != want_sha:
          logging.warning('Split file %s has sha256 %s, not the published %s; using it as given.',
                          cand, got, want_sha)
        return cand
    raise FileNotFoundError(
        f'Split file {name} not found in config.data.split_dir={str(split_dir)!r} (looked for '
        f'{split_dir / name} and {split_dir / prefix / name}). Download it from {mirrors[0]} '
        f"(sha256 {want_sha}) into that directory, or set config.data.split_dir='' to download "
        'and cache it automatically.')
  target = pathlib.Path(cache) if cache is not None else fetch.cache_dir() / 'splits'
  return fetch.download(mirrors, target / name, sha256=want_sha, timeout=timeout,
                        local_copy_key='config.data.split_dir (a directory holding it)')


def match_split_entries(entries: Sequence[tuple[str, int]], file_names: Iterable[str | bytes],
                        labels: Iterable[int], *, what: str = 'split file') -> np.ndarray:
  """Record indices of a tfds split that the split-file entries name, in entry order.

  Matched by (basename, label): Places train basenames such as `00000001.jpg` repeat across
  classes. A listed file that is absent, or present only under another label, raises an error
  naming it.

  Args:
    entries: (relative path, label) pairs from `read_split_file`.
    file_names: per tfds record, its file name or path (`file_name` of imagenet2012, `filename` of
      places365_small); only the basename is compared.
    labels: per tfds record, its label.
    what: how to name the entries in errors (e.g. the split file's name).

  Returns:
    int64 array, entry k -> index of the record with the same (basename, label).
  """
  index: dict[tuple[str, int], int] = {}
  by_name: dict[str, list[int]] = collections.defaultdict(list)
  for i, (fname, label) in enumerate(zip(file_names, labels)):
    if isinstance(fname, bytes):
      fname = fname.decode('utf-8')
    base = fname.replace('\\', '/').rsplit('/', 1)[-1]
    key = (base, int(label))
    if key in index:
      raise ValueError(f'Two tfds records share the file name {base!r} and label {int(label)} '
                       f'(records {index[key]} and {i}); cannot join {what} unambiguously.')
    index[key] = i
    by_name[base].append(int(label))
  out = np.empty(len(entries), np.int64)
  for k, (path, label) in enumerate(entries):
    base = path.rsplit('/', 1)[-1]
    i = index.get((base, label))
    if i is None:
      other = by_name.get(base)
      hint = (f' (a record with that name exists with label(s) {other})' if other else
              ' (no record has that file name: is this the right tfds dataset/split?)')
      raise KeyError(f'{what}: entry {k + 1} {path!r} label {label} has no matching tfds '
                     f'record{hint}.')
    out[k] = i
  if len(set(out.tolist())) != len(out):
    raise ValueError(f'{what} lists the same file twice.')
  return out
