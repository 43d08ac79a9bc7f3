"""The paper's benchmarks from the dataset's own files (`config.data.source='files'`), without
TensorFlow: CIFAR-100 from its official binary archive, against the tfds path and LDAM-DRW's
selection, in each place a user may keep it, downloaded with its MD5, and every wrong root."""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
import tarfile

import numpy as np
import pytest

import cli_worker
import fake_tfds
import train_utils
from ltdpt_jax import config_lib
from ltdpt_jax import fetch
from ltdpt_jax.data import benchmark_files
from ltdpt_jax.data import files
from ltdpt_jax.data import sources
from test_data_longtail import ldam_reference

TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 2


def write_cifar100_binary(folder: pathlib.Path, seed: int = 0) -> dict[str, np.ndarray]:
  """cifar-100-binary/{train,test}.bin and the label names, as the official archive holds them
  (record: coarse label, fine label, 1024 red, 1024 green, 1024 blue bytes), with random pixels.
  Returns each split's fine labels and images (N, 32, 32, 3) in file order."""
  rng = np.random.default_rng(seed)
  d = folder / 'cifar-100-binary'
  d.mkdir(parents=True)
  out = {}
  for split, per_class in (('train', TRAIN_PER_CLASS), ('test', TEST_PER_CLASS)):
    fine = rng.permutation(np.repeat(np.arange(100), per_class)).astype(np.uint8)
    images = rng.integers(0, 256, (len(fine), 32, 32, 3), dtype=np.uint8)
    records = np.concatenate([(fine // 5)[:, None], fine[:, None],
                              images.transpose(0, 3, 1, 2).reshape(len(fine), -1)], axis=1)
    (d / f'{split}.bin').write_bytes(records.tobytes())
    out[split], out[f'{split}_images'] = fine.astype(np.int64), images
  (d / 'fine_label_names.txt').write_text(''.join(f'fine_{i}\n' for i in range(100)))
  (d / 'coarse_label_names.txt').write_text(''.join(f'coarse_{i}\n' for i in range(20)))
  return out


def make_archive(folder: pathlib.Path, to: pathlib.Path) -> pathlib.Path:
  to.mkdir(parents=True, exist_ok=True)
  archive = to / 'cifar-100-binary.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(folder / 'cifar-100-binary', arcname='cifar-100-binary')
  return archive


def data_config(**fields):
  c = config_lib.base_config().data
  c.imbalance_ratio = 10.0
  c.update(fields)
  return c


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / 'cache'))
  return tmp_path / 'cache'


def _items(seq) -> list[tuple[bytes, int, int]]:
  return [(x['image'].tobytes(), x['label'], x['id']) for x in (seq[i] for i in range(len(seq)))]


def test_files_give_the_tfds_cifar100_lt_image_for_image(tmp_path, cache):
  """The same binary files read directly and through tfds (which shuffles its records on disk):
  the same long-tailed training list (LDAM-DRW's selection, by an independent implementation),
  the same test split, images, labels and class names."""
  data_dir = tmp_path / 'tfds'
  written = fake_tfds.write_cifar100(data_dir, train_per_class=TRAIN_PER_CLASS,
                                     test_per_class=TEST_PER_CLASS)
  for ratio, seed in ((10.0, 0), (100.0, 3)):
    via_tfds = sources.get_sources(data_config(data_dir=str(data_dir), imbalance_ratio=ratio,
                                               seed=seed))
    via_files = sources.get_sources(data_config(
        source='files', image_root=str(data_dir / 'raw_cifar100'), imbalance_ratio=ratio,
        seed=seed))
    keep = ldam_reference(written['train'].tolist(), 1 / ratio, seed)
    np.testing.assert_array_equal(via_files.train.labels, written['train'][keep])
    np.testing.assert_array_equal(via_files.eval.labels, written['test'])
    assert _items(via_files.train) == _items(via_tfds.train)
    assert _items(via_files.eval) == _items(via_tfds.eval)
    assert via_files.class_names == via_tfds.class_names == tuple(f'fine_{i}' for i in range(100))
    assert via_files.eval_split == via_tfds.eval_split == 'test'


def test_the_archive_its_folder_or_the_folder_above(tmp_path, cache, caplog):
  """image_root may hold the archive (extracted once into the cache), the extracted
  cifar-100-binary/, or be that folder; each gives the images as written (pixels in HWC order)."""
  written = write_cifar100_binary(tmp_path / 'tree')
  archive = make_archive(tmp_path / 'tree', tmp_path / 'archive')
  keep = ldam_reference(written['train'].tolist(), 0.1, 0)
  for root in (tmp_path / 'archive', tmp_path / 'tree', tmp_path / 'tree' / 'cifar-100-binary'):
    train, test, names = benchmark_files.cifar100_sources(str(root), 10.0, 0)
    np.testing.assert_array_equal(train.labels, written['train'][keep])
    for i in (0, 5, len(train) - 1):
      np.testing.assert_array_equal(train[i]['image'], written['train_images'][keep[i]])
    np.testing.assert_array_equal(test[7]['image'], written['test_images'][7])
    assert names[3] == 'fine_3'
  md5 = hashlib.md5(archive.read_bytes()).hexdigest()
  extracted = cache / 'cifar100' / md5 / 'cifar-100-binary'
  assert f'has MD5 {md5}, not the published' in caplog.text  # a test archive, not the real one
  stamp = (extracted / 'train.bin').stat().st_mtime_ns
  assert benchmark_files.cifar100_dir(str(tmp_path / 'archive')) == extracted
  assert (extracted / 'train.bin').stat().st_mtime_ns == stamp  # extracted once
  assert sorted(p.name for p in extracted.parent.parent.iterdir()) == [md5]  # no leftovers


def test_an_empty_image_root_downloads_the_archive_once_with_its_md5(tmp_path, cache,
                                                                       monkeypatch):
  write_cifar100_binary(tmp_path / 'tree')
  archive = make_archive(tmp_path / 'tree', tmp_path / 'server')
  md5 = hashlib.md5(archive.read_bytes()).hexdigest()
  monkeypatch.setattr(benchmark_files, 'CIFAR100_URL', archive.as_uri())
  monkeypatch.setattr(benchmark_files, 'CIFAR100_MD5', '0' * 32)
  with pytest.raises(fetch.FetchError) as e:
    benchmark_files.cifar100_dir('')
  assert f'md5 {md5} != expected {"0" * 32}' in str(e.value)
  assert 'config.data.image_root' in str(e.value) and '\n' not in str(e.value)
  monkeypatch.setattr(benchmark_files, 'CIFAR100_MD5', md5)
  folder = benchmark_files.cifar100_dir('')
  assert folder == cache / 'cifar100' / md5 / 'cifar-100-binary'
  assert (cache / 'cifar100' / 'cifar-100-binary.tar.gz').read_bytes() == archive.read_bytes()
  archive.unlink()  # the second call finds it in the cache
  assert benchmark_files.cifar100_dir('') == folder


def test_wrong_roots_fail_in_one_line(tmp_path, cache):
  good = write_cifar100_binary(tmp_path / 'good')
  del good
  pickled = tmp_path / 'pickled' / 'cifar-100-python'
  pickled.mkdir(parents=True)
  (pickled / 'train').write_bytes(b'\x80\x04')
  cifar10 = tmp_path / 'cifar10' / 'cifar-10-batches-bin'
  cifar10.mkdir(parents=True)
  (cifar10 / 'data_batch_1.bin').write_bytes(bytes(3073 * 4))
  short = tmp_path / 'short' / 'cifar-100-binary'
  short.mkdir(parents=True)
  (short / 'train.bin').write_bytes(bytes(3074 * 3 + 100))
  (short / 'test.bin').write_bytes(bytes(3074))
  as10 = tmp_path / 'as10' / 'cifar-100-binary'
  as10.mkdir(parents=True)
  (as10 / 'train.bin').write_bytes(bytes(3073 * 4))
  (as10 / 'test.bin').write_bytes(bytes(3073))
  labels = tmp_path / 'labels' / 'cifar-100-binary'
  labels.mkdir(parents=True)
  record = bytes([3, 140]) + bytes(3072)
  (labels / 'train.bin').write_bytes(record * 2)
  (labels / 'test.bin').write_bytes(record)
  bad_tar = tmp_path / 'bad_tar'
  bad_tar.mkdir()
  (bad_tar / 'cifar-100-binary.tar.gz').write_bytes(b'not a tar file at all')
  cases = {
      str(tmp_path / 'nowhere'): ('is not a directory', 'leave it empty to download'),
      str(tmp_path / 'pickled'): ('No CIFAR-100 binary data', 'cifar-100-python',
                                  'Python (pickle) version'),
      str(tmp_path / 'cifar10'): ('It holds CIFAR-10, not CIFAR-100',),
      str(short.parent): ('train.bin is not a CIFAR-100 binary file', '9322 bytes'),
      str(as10.parent): ('3,073-byte records: CIFAR-10',),
      str(labels.parent): ('labels outside CIFAR-100 (fine 140',),
      str(bad_tar): ('cifar-100-binary.tar.gz cannot be extracted', 'download it again'),
  }
  for root, needles in cases.items():
    with pytest.raises(files.DataError) as e:
      benchmark_files.cifar100_sources(root, 10.0, 0)
    msg = str(e.value)
    assert '\n' not in msg, msg
    for needle in needles:
      assert needle in msg, (needle, msg)
  assert not list((cache / 'cifar100').glob('*/.*'))  # no half-extracted folder left behind


def test_cifar100_lt_config_trains_from_the_archive_without_tfds(tmp_path):
  """`configs/cifar100_lt.py:ratio=10,source=files,image_root=DIR` (a tiny ViT) trains and
  evaluates in a process where tensorflow_datasets cannot be imported; a missing root is one
  line and exit 2 before any step."""
  written = write_cifar100_binary(tmp_path / 'tree')
  make_archive(tmp_path / 'tree', tmp_path / 'data')
  blocker = tmp_path / 'no_tfds' / 'tensorflow_datasets'
  blocker.mkdir(parents=True)
  (blocker / '__init__.py').write_text("raise ImportError('tensorflow_datasets is blocked')\n")
  tiny = train_utils.tiny_config(image_size=32, batch_size=64, epochs=1, drw_epochs=0)
  flags = [f'--config.model.{k}={v}' for k, v in (
      ('backbone', 'custom'), ('checkpoint', ''), ('num_fr_prompts', 2), ('num_br_prompts', 2),
      ('num_groups', 4), ('num_br_blocks', 1))]
  flags += [f'--config.model.vit.{k}={v}' for k, v in tiny.model.vit.items()]
  flags += ['--config.data.image_size=32', '--config.data.batch_size=256',
            '--config.data.eval_batch_size=100', '--config.data.num_workers=0',
            '--config.train.epochs=1', '--config.train.drw_epochs=0', '--config.train.plots=False']
  env = {'PYTHONPATH': f'{blocker.parent}:{train_utils.REPO}',
         fetch.CACHE_ENV: str(tmp_path / 'cache')}

  def main(root, workdir):
    return cli_worker.run_cli(
        [sys.executable, '-m', 'ltdpt_jax.main',
         f'--config=configs/cifar100_lt.py:ratio=10,source=files,image_root={root}',
         f'--workdir={workdir}', *flags], timeout=300, **env)

  out = main(tmp_path / 'missing', tmp_path / 'refused')
  cli_worker.one_error_line(out, 2, f"image_root='{tmp_path / 'missing'}'", 'is not a directory')
  assert not (tmp_path / 'refused').exists()
  out = main(tmp_path / 'data', tmp_path / 'run')
  assert out.returncode == 0, out.stderr[-3000:]
  config = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert config['data']['source'] == 'files'
  assert config['data']['image_root'] == str(tmp_path / 'data')
  keep = ldam_reference(written['train'].tolist(), 0.1, 0)
  info = json.loads((tmp_path / 'run' / 'run_info.json').read_text())
  assert info['class_counts'] == np.bincount(written['train'][keep], minlength=100).tolist()
  results = json.loads((tmp_path / 'run' / 'results.json').read_text())
  assert results['last']['step'] == len(keep) // 256
  record = json.loads((tmp_path / 'run' / f'eval_{len(keep) // 256}.json').read_text())
  assert sum(row['eval_count'] for row in record['per_class']) == len(written['test'])
