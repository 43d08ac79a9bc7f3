"""CIFAR-100-LT profile and selection, head/medium/tail groups, OLTR split files."""

import hashlib

import numpy as np
import pytest

from ltdpt_jax.data import cifar_lt
from ltdpt_jax.data import longtail
from ltdpt_jax.data import splits
from ltdpt_jax.evaluators import longtail as evaluation


def ldam_reference(targets, imb_factor, rand_number):
  """LDAM-DRW's IMBALANCECIFAR100 selection, as its code does it (global legacy RNG)."""
  np.random.seed(rand_number)
  img_max = len(targets) / 100
  img_num_per_cls = [int(img_max * (imb_factor ** (cls_idx / (100 - 1.0))))
                     for cls_idx in range(100)]
  targets_np = np.array(targets, dtype=np.int64)
  new_idx = []
  for the_class, the_img_num in zip(np.unique(targets_np), img_num_per_cls):
    idx = np.where(targets_np == the_class)[0]
    np.random.shuffle(idx)
    new_idx.append(idx[:the_img_num])
  return np.concatenate(new_idx)


# ratio -> (total, head, medium, tail) under head > 100, medium 20..100, tail < 20.
PUBLISHED = {200: (9502, 30, 31, 39), 100: (10847, 35, 35, 30), 50: (12608, 41, 41, 18),
             10: (19573, 69, 31, 0)}


@pytest.mark.parametrize('ratio', sorted(PUBLISHED))
def test_cifar_lt_counts_and_groups_match_published(ratio):
  counts = cifar_lt.cifar_lt_counts(ratio)
  total, head, medium, tail = PUBLISHED[ratio]
  assert counts.dtype == np.int64 and counts.shape == (100,)
  assert counts.sum() == total
  assert counts[0] == 500 and counts[-1] == int(500 / ratio)
  assert np.all(np.diff(counts) <= 0)
  g = evaluation.shot_groups(counts)
  assert (len(g['head']), len(g['medium']), len(g['tail'])) == (head, medium, tail)
  # Groups partition the classes and follow the thresholds, checked class by class.
  assert sorted(np.concatenate(list(g.values())).tolist()) == list(range(100))
  for c in range(100):
    want = 'head' if counts[c] > 100 else ('tail' if counts[c] < 20 else 'medium')
    assert c in g[want]


def test_cifar_lt_counts_formula_and_boundaries():
  for ratio in (200, 100, 50, 10):
    want = [int(500 * (1 / ratio) ** (i / 99)) for i in range(100)]
    assert cifar_lt.cifar_lt_counts(ratio).tolist() == want
  # Classes exactly on a boundary (reference note 1.3) are medium.
  c200, c100 = cifar_lt.cifar_lt_counts(200), cifar_lt.cifar_lt_counts(100)
  assert c200[30] == 100 and c200[60] == 20 and c100[69] == 20
  assert cifar_lt.cifar_lt_counts(50)[81] == 20 and cifar_lt.cifar_lt_counts(10)[69] == 100
  g = evaluation.shot_groups(c200)
  assert 30 in g['medium'] and 60 in g['medium'] and 29 in g['head'] and 61 in g['tail']
  assert longtail.exponential_counts(200, 10, 20).tolist() == [
      int(200 * 0.1 ** (i / 19)) for i in range(20)]


def test_shot_groups_empty_and_errors():
  g = evaluation.shot_groups([500, 101, 100, 20, 19, 0])
  assert g['head'].tolist() == [0, 1] and g['medium'].tolist() == [2, 3]
  assert g['tail'].tolist() == [4, 5]
  assert evaluation.shot_groups([50, 30])['tail'].size == 0
  with pytest.raises(ValueError, match='1-D'):
    evaluation.shot_groups(np.ones((2, 2)))
  with pytest.raises(ValueError, match='ratio'):
    longtail.exponential_counts(500, 0.5, 10)


@pytest.mark.parametrize('ratio,seed', [(100, 0), (200, 1), (10, 7)])
def test_cifar_lt_selection_matches_ldam(ratio, seed):
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.repeat(np.arange(100), 500))  # a shuffled full-size CIFAR order
  got = cifar_lt.cifar_lt_indices(labels, ratio, seed=seed)
  want = ldam_reference(labels.tolist(), 1 / ratio, seed)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(np.bincount(labels[got], minlength=100),
                                cifar_lt.cifar_lt_counts(ratio))
  assert len(np.unique(got)) == len(got)


def test_cifar_lt_selection_errors():
  with pytest.raises(ValueError, match='missing'):
    cifar_lt.cifar_lt_indices(np.repeat(np.arange(99), 5), 10)


def test_read_split_file_formats_and_errors(tmp_path):
  p = tmp_path / 'ok.txt'
  p.write_text('train/a/1.jpg 0\n/abs/train/b/2.jpg 3\n\n')
  assert splits.read_split_file(p) == [('train/a/1.jpg', 0), ('/abs/train/b/2.jpg', 3)]
  for bad, lineno in (('a.jpg 0\nb.jpg\n', 2), ('a.jpg 0\nb.jpg 1\nc.jpg x\n', 3),
                      ('a.jpg 1 2\n', 1), ('a.jpg 0\nb.jpg -1\n', 2)):
    p.write_text(bad)
    with pytest.raises(ValueError, match=rf'ok\.txt:{lineno}: malformed'):
      splits.read_split_file(p)
  with pytest.raises(FileNotFoundError):
    splits.read_split_file(tmp_path / 'absent.txt')


# file -> (lines, classes, min per class, max per class, head, medium, tail)
REAL = {
    'Places_LT_train.txt': (62500, 365, 5, 4980, 131, 163, 71),
    'Places_LT_val.txt': (7300, 365, 20, 20, None, None, None),
    'Places_LT_test.txt': (36500, 365, 100, 100, None, None, None),
    'ImageNet_LT_test.txt': (50000, 1000, 50, 50, None, None, None),
}


@pytest.mark.parametrize('name', sorted(REAL))
def test_real_split_files(shared_dir, name):
  path = shared_dir / 'data' / 'splits' / name
  if not path.is_file():
    pytest.skip(f'{path} not present')
  entries = splits.read_split_file(path)
  lines, classes, lo, hi, head, medium, tail = REAL[name]
  assert len(entries) == lines
  counts = splits.class_counts(entries)
  assert len(counts) == classes and counts.min() == lo and counts.max() == hi
  if head is not None:
    g = evaluation.shot_groups(counts)
    assert (len(g['head']), len(g['medium']), len(g['tail'])) == (head, medium, tail)
  assert hashlib.sha256(path.read_bytes()).hexdigest() == splits.SPLIT_FILES[name][0]
  prefix = {'Places_LT_train.txt': 'train/', 'Places_LT_val.txt': 'train/'}.get(name, 'val/')
  assert all(p.startswith(prefix) for p, _ in entries)
  assert len({p for p, _ in entries}) == lines


def test_real_places_val_disjoint_from_train(shared_dir):
  d = shared_dir / 'data' / 'splits'
  if not (d / 'Places_LT_val.txt').is_file():
    pytest.skip('split files not present')
  train = {p for p, _ in splits.read_split_file(d / 'Places_LT_train.txt')}
  val = {p for p, _ in splits.read_split_file(d / 'Places_LT_val.txt')}
  assert not train & val


def test_fetch_split_file_download_cache_and_checksum(tmp_path):
  src = tmp_path / 'remote' / 'Places_LT_val.txt'
  src.parent.mkdir()
  src.write_text('train/a/1.jpg 0\n')
  sha = hashlib.sha256(src.read_bytes()).hexdigest()
  cache = tmp_path / 'cache'
  got = splits.fetch_split_file('Places_LT_val.txt', cache=cache, urls=[src.as_uri()], sha256=sha)
  assert got == cache / 'Places_LT_val.txt' and got.read_text() == src.read_text()
  src.unlink()  # a second call is served from the cache
  assert splits.fetch_split_file('Places_LT_val.txt', cache=cache, urls=[src.as_uri()],
                                 sha256=sha) == got
  bad = tmp_path / 'remote' / 'bad.txt'
  bad.write_text('tampered 0\n')
  with pytest.raises(RuntimeError, match='sha256'):
    splits.fetch_split_file('Places_LT_test.txt', cache=cache, urls=[bad.as_uri()])
  assert not (cache / 'Places_LT_test.txt').exists()


def test_fetch_split_file_from_split_dir(tmp_path):
  (tmp_path / 'Places_LT').mkdir()
  (tmp_path / 'Places_LT' / 'Places_LT_train.txt').write_text('train/a/1.jpg 0\n')
  (tmp_path / 'ImageNet_LT_test.txt').write_text('val/a/1.JPEG 0\n')
  assert splits.fetch_split_file('Places_LT_train.txt', split_dir=tmp_path) == (
      tmp_path / 'Places_LT' / 'Places_LT_train.txt')
  assert splits.fetch_split_file('ImageNet_LT_test.txt', split_dir=tmp_path) == (
      tmp_path / 'ImageNet_LT_test.txt')
  with pytest.raises(FileNotFoundError,
                     match='Places_LT_test.txt not found in config.data.split_dir'):
    splits.fetch_split_file('Places_LT_test.txt', split_dir=tmp_path)


def test_match_split_entries():
  names = ['data_256/a/airfield/00000001.jpg', 'data_256/b/bar/00000001.jpg',
           b'data_256/a/airfield/00000002.jpg']
  labels = [0, 5, 0]
  entries = [('train/airfield/00000002.jpg', 0), ('train/bar/00000001.jpg', 5),
             ('train/airfield/00000001.jpg', 0)]
  np.testing.assert_array_equal(splits.match_split_entries(entries, names, labels), [2, 1, 0])
  with pytest.raises(KeyError,
                     match=r"entry 1 'train/bar/00000001.jpg' label 3.*label\(s\) \[0, 5\]"):
    splits.match_split_entries([('train/bar/00000001.jpg', 3)], names, labels)
  with pytest.raises(KeyError, match='no record has that file name'):
    splits.match_split_entries([('train/x/9.jpg', 0)], names, labels)
  with pytest.raises(ValueError, match='same file twice'):
    splits.match_split_entries(entries[:1] * 2, names, labels)
