"""The paper's benchmarks from the dataset's own files (`config.data.source='files'`), without
TensorFlow: CIFAR-100 from its official binary archive (against the tfds path and LDAM-DRW's
selection, in each place a user may keep it, downloaded with its MD5, every wrong root), and
ImageNet-LT, Places-LT and iNat2018 from image trees in each real layout (against the tfds path,
and on the published split files), each paper config trained in a process without tfds."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import shutil
import sys
import tarfile
import types

import numpy as np
import pytest
from PIL import Image

import cli_worker
import fake_tfds
import train_utils
from ltdpt_jax import config_lib
from ltdpt_jax import fetch
from ltdpt_jax.data import benchmark_files
from ltdpt_jax.data import files
from ltdpt_jax.data import sources
from ltdpt_jax.data import splits
from test_data_longtail import ldam_reference
from test_data_tfds import config_for
from test_data_tfds import fake  # noqa: F401  (the fake tfds datasets, a module fixture)

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


@pytest.fixture(scope='module')
def no_tfds(tmp_path_factory) -> pathlib.Path:
  """A folder whose package `tensorflow_datasets` refuses to import: first on PYTHONPATH, it
  makes a process one without tfds (one folder for the module, so its runs share one
  environment: tests/fork_server.py forks them from one server)."""
  blocker = tmp_path_factory.mktemp('no_tfds') / 'tensorflow_datasets'
  blocker.mkdir()
  (blocker / '__init__.py').write_text("raise ImportError('tensorflow_datasets is blocked')\n")
  return blocker.parent


def train_without_tfds(tmp_path, no_tfds, spec: str, workdir, *flags: str, batch_size: int):
  """`python -m ltdpt_jax.main --config=configs/<spec>` with a tiny ViT for one epoch, in a
  process where tensorflow_datasets cannot be imported (`no_tfds` first on its PYTHONPATH)."""
  tiny = train_utils.tiny_config()
  model = [f'--config.model.{k}={v}' for k, v in (
      ('backbone', 'custom'), ('checkpoint', ''), ('num_fr_prompts', 2), ('num_br_prompts', 2),
      ('num_groups', 4), ('num_br_blocks', 1))]
  model += [f'--config.model.vit.{k}={v}' for k, v in tiny.model.vit.items()]
  run = ['--config.data.image_size=32', f'--config.data.batch_size={batch_size}',
         '--config.data.eval_batch_size=100', '--config.data.num_workers=0',
         '--config.train.epochs=1', '--config.train.drw_epochs=0', '--config.train.plots=False']
  return cli_worker.run_cli(
      [sys.executable, '-m', 'ltdpt_jax.main', f'--config=configs/{spec}', f'--workdir={workdir}',
       *model, *run, *flags], timeout=300,
      PYTHONPATH=f'{no_tfds}:{train_utils.REPO}', **{fetch.CACHE_ENV: tmp_path / 'cache'})


def test_cifar100_lt_config_trains_from_the_archive_without_tfds(tmp_path, no_tfds):
  """`configs/cifar100_lt.py:ratio=10,source=files,image_root=DIR` (a tiny ViT) trains and
  evaluates without tensorflow_datasets; a missing root is one line and exit 2 before any
  step."""
  written = write_cifar100_binary(tmp_path / 'tree')
  make_archive(tmp_path / 'tree', tmp_path / 'data')
  spec = 'cifar100_lt.py:ratio=10,source=files,image_root={}'
  out = train_without_tfds(tmp_path, no_tfds, spec.format(tmp_path / 'missing'),
                           tmp_path / 'refused', batch_size=256)
  cli_worker.one_error_line(out, 2, f"image_root='{tmp_path / 'missing'}'", 'is not a directory')
  assert not (tmp_path / 'refused').exists()
  out = train_without_tfds(tmp_path, no_tfds, spec.format(tmp_path / 'data'), tmp_path / 'run',
                           batch_size=256)
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


# ---------------------------------------------------------------------------------------------
# ImageNet-LT, Places-LT and iNaturalist 2018 from image trees.
# ---------------------------------------------------------------------------------------------

SHARED_SPLITS = train_utils.REPO.parent / 'shared' / 'data' / 'splits'


def _extract(archive: pathlib.Path, to: pathlib.Path) -> None:
  with tarfile.open(archive) as tar:
    tar.extractall(to, filter='data')


@pytest.fixture(scope='module')
def trees(fake, tmp_path_factory):
  """The fake tfds datasets' raw files unpacked as users keep them, in each layout the files
  source reads: ImageNet with class folders in val/ and with val/ flat (as its archive holds
  it); Places365 as places365_standard (train/, val/ class folders) and as data_256/, val_256/;
  iNat2018's train_val2018/ beside train2018.json and val2018.json."""
  root = tmp_path_factory.mktemp('trees')
  data = pathlib.Path(fake['data_dir'])
  flat = root / 'imagenet_flat_val'
  for inner in tarfile.open(data / 'manual_imagenet' / 'ILSVRC2012_img_train.tar').getnames():
    with tarfile.open(data / 'manual_imagenet' / 'ILSVRC2012_img_train.tar') as outer:
      with tarfile.open(fileobj=outer.extractfile(inner)) as tar:
        tar.extractall(flat / 'train' / inner.removesuffix('.tar'), filter='data')
  _extract(data / 'manual_imagenet' / 'ILSVRC2012_img_val.tar', flat / 'val')
  folders = root / 'imagenet_class_folders'
  shutil.copytree(flat / 'train', folders / 'train')
  synsets = fake_tfds.imagenet_synsets()
  for name, label, _ in fake['imagenet']['validation']:
    (folders / 'val' / synsets[label]).mkdir(parents=True, exist_ok=True)
    shutil.copy(flat / 'val' / name, folders / 'val' / synsets[label] / name)
  small = root / 'places_256'
  _extract(data / 'raw_places' / 'data_256.tar', small)
  _extract(data / 'raw_places' / 'val_256.tar', small)
  standard = root / 'places365_standard'
  cats = fake_tfds.places_categories()
  for path, label, _ in fake['places']['train']:
    to = standard / 'train' / cats[label].replace('/', '-')
    to.mkdir(parents=True, exist_ok=True)
    shutil.copy(small / path, to)
  for path, label, _ in fake['places']['validation']:
    to = standard / 'val' / cats[label].replace('/', '-')
    to.mkdir(parents=True, exist_ok=True)
    shutil.copy(small / path, to)
  inat = root / 'inat2018'
  _extract(data / 'raw_inat' / 'train_val2018.tar.gz', inat)
  shutil.copy(data / 'raw_inat' / 'train_annos' / 'train2018.json', inat)
  shutil.copy(data / 'raw_inat' / 'val_annos' / 'val2018.json', inat)
  return types.SimpleNamespace(imagenet=(flat, folders), places=(standard, small), inat=inat)


def _tree_config(fake, dataset, image_root, **fields):
  return config_for(fake, dataset, source='files', image_root=str(image_root), **fields).data


def _colours(source) -> list[int]:
  return [fake_tfds.index_of_colour(source[i]['image'][0, 0]) for i in range(len(source))]


@pytest.mark.parametrize('dataset', ['imagenet_lt', 'places_lt'])
def test_image_trees_give_the_tfds_split_lists_image_for_image(fake, trees, dataset):
  """Every layout of an ImageNet or Places365 tree, read through the same OLTR lists: the
  images, labels, class names (where a list names the class) and eval list of the tfds path."""
  for eval_split in ('test', 'val') if dataset == 'places_lt' else ('test',):
    via_tfds = sources.get_sources(config_for(fake, dataset, eval_split=eval_split).data)
    for root in getattr(trees, dataset.split('_')[0]):
      via_files = sources.get_sources(_tree_config(fake, dataset, root, eval_split=eval_split))
      for a, b in ((via_files.train, via_tfds.train), (via_files.eval, via_tfds.eval)):
        np.testing.assert_array_equal(a.labels, b.labels)
        assert _colours(a) == _colours(b)
        assert [a[i]['image'].shape for i in range(len(a))] == [
            b[i]['image'].shape for i in range(len(b))]
      assert via_files.eval_split == via_tfds.eval_split
      assert via_files.num_classes == via_tfds.num_classes
      listed = set(via_files.train.labels) | set(via_files.eval.labels)
      for label, name in enumerate(via_files.class_names):
        assert name == (via_tfds.class_names[label] if label in listed else f'class_{label}')


def test_inat2018_tree_gives_the_tfds_labels(fake, trees, tmp_path):
  """train_val2018/ with the official annotations, or with the iNaturalist18 lists in
  split_dir: each image has its tfds label (the category id), the species names are tfds'."""
  via_tfds = sources.get_sources(config_for(fake, 'inat2018').data)
  via_json = sources.get_sources(_tree_config(fake, 'inat2018', trees.inat))
  lists = tmp_path / 'lists'
  lists.mkdir()
  for split, name in (('train', 'train2018.json'), ('val', 'val2018.json')):
    data = json.loads((trees.inat / name).read_text())
    label = {a['image_id']: a['category_id'] for a in data['annotations']}
    fake_tfds.write_split_file(lists / f'iNaturalist18_{split}.txt',
                               [(im['file_name'], label[im['id']]) for im in data['images']])
  without_json = tmp_path / 'images_only'
  shutil.copytree(trees.inat / 'train_val2018', without_json / 'train_val2018')
  via_lists = sources.get_sources(_tree_config(fake, 'inat2018', without_json,
                                               split_dir=str(lists)))
  for via_files in (via_json, via_lists):
    for a, b in ((via_files.train, via_tfds.train), (via_files.eval, via_tfds.eval)):
      assert sorted(zip(_colours(a), a.labels.tolist())) == sorted(
          zip(_colours(b), b.labels.tolist()))
    assert via_files.num_classes == via_tfds.num_classes == 8142
  assert via_json.class_names[:3] == via_tfds.class_names[:3]  # the fake's 3 categories
  assert via_json.class_names[3] == 'class_3'
  assert via_json.eval_split == 'val2018.json' and via_lists.eval_split == 'iNaturalist18_val.txt'
  assert via_lists.class_names[:2] == ('class_0', 'class_1')


def test_wrong_trees_fail_in_one_line_naming_what_is_missing(fake, trees, tmp_path):
  flat, _ = trees.imagenet
  partial = tmp_path / 'partial'
  shutil.copytree(flat, partial)
  gone = [partial / rel for rel, _ in fake['imagenet_lists']['train'][0][1:3]]
  for path in gone:
    path.unlink()
  standard, _ = trees.places
  no_annotations = tmp_path / 'inat_images_only'
  shutil.copytree(trees.inat / 'train_val2018', no_annotations / 'train_val2018')
  no_images, inat_partial = tmp_path / 'inat_annotations_only', tmp_path / 'inat_partial'
  no_images.mkdir()
  shutil.copytree(trees.inat, inat_partial)
  for name in ('train2018.json', 'val2018.json'):
    shutil.copy(trees.inat / name, no_images)
  first = json.loads((trees.inat / 'train2018.json').read_text())['images'][0]['file_name']
  (inat_partial / first).unlink()
  cases = [
      ('imagenet_lt', '', ("config.data.source='files' needs config.data.image_root",
                           'train/ and val/')),
      ('imagenet_lt', tmp_path / 'nowhere', ('is not a directory',)),
      ('imagenet_lt', standard, ('holds none of the first files ImageNet_LT_train.txt names',
                                 'ImageNet (ILSVRC2012)', 'it holds train, val')),
      ('imagenet_lt', partial, ('2 of the 5 files ImageNet_LT_train.txt names are not under',
                                'train/<wnid>/', gone[0].name)),
      ('places_lt', flat, ('holds none of the first files Places_LT_train.txt names',
                           'data_256/ and val_256/')),
      ('inat2018', no_annotations, ('No train2018.json (official annotations) or '
                                    'iNaturalist18_train.txt',)),
      ('inat2018', standard, ('No train2018.json',)),
      ('inat2018', no_images, ('holds none of the first files train2018.json names',
                               'it holds train2018.json, val2018.json')),
      ('inat2018', inat_partial, ('1 of the 10 files train2018.json names are not under',
                                  first)),
  ]
  for dataset, root, needles in cases:
    with pytest.raises(files.DataError) as e:
      sources.get_sources(_tree_config(fake, dataset, root))
    msg = str(e.value)
    assert '\n' not in msg, msg
    for needle in needles:
      assert needle in msg, (needle, msg)


@pytest.mark.skipif(not SHARED_SPLITS.is_dir(), reason='no ../shared/data/splits beside the repo')
def test_the_published_split_files_name_tfds_classes_and_read_from_a_tree(tmp_path):
  """The published Places-LT lists and the ImageNet-LT test list: the class folders they name
  are tfds' class names (Places: '-' standing for tfds' '/'), in tfds' order for ImageNet and in
  OLTR's own for Places (five classes apart: `splits.oltr_label_order`); every file they list
  is found in a data_256/ and val_256/ tree (one small JPEG linked under every name)."""
  entries = {name: splits.read_split_file(SHARED_SPLITS / name)
             for name in ('Places_LT_train.txt', 'Places_LT_val.txt', 'Places_LT_test.txt',
                          'ImageNet_LT_test.txt')}
  places = [e for name, es in entries.items() if name.startswith('Places') for e in es]
  tfds_places = fake_tfds.places_categories()
  listed = splits.class_names_from_lists(places, 365, 'places_lt')
  assert listed == splits.oltr_label_order(tfds_places, 'places_lt') == tuple(
      fake_tfds.places_lt_categories())
  assert [i for i in range(365) if listed[i] != tfds_places[i]] == [116, 117, 118, 141, 142]
  assert listed[116:119] == ('desert_road', 'desert/sand', 'desert/vegetation')
  assert splits.class_names_from_lists(entries['ImageNet_LT_test.txt'], 1000, 'imagenet_lt') == (
      tuple(fake_tfds.imagenet_synsets()))
  buf = io.BytesIO()
  Image.new('RGB', (8, 6), (10, 20, 30)).save(buf, format='JPEG')
  root = tmp_path / 'places'
  where = dict(benchmark_files.LAYOUTS['places_lt'])[
      'data_256/ and val_256/ (Places365-Standard, small images)']
  for path in {root / where(*rel.split('/')) for rel, _ in places}:
    path.parent.mkdir(parents=True, exist_ok=True)
  for rel, _ in places:
    (root / where(*rel.split('/'))).write_bytes(buf.getvalue())
  train, ev, names, ev_name, bad = benchmark_files.split_list_sources(
      'places_lt', str(root), str(SHARED_SPLITS), 'test', 365, 'error')
  assert (len(train.paths), len(ev.paths), ev_name, bad) == (62500, 36500, 'Places_LT_test.txt', {})
  assert train.paths[0] == str(root / 'data_256' / 'a' / 'airfield' / '00004851.jpg')
  assert np.bincount(ev.labels).tolist() == [100] * 365


@pytest.mark.parametrize('config', ['imagenet_lt', 'places', 'inat2018'])
def test_paper_configs_train_from_image_trees_without_tfds(fake, trees, tmp_path, no_tfds,
                                                          config):
  """`configs/<config>.py:source=files,image_root=DIR` (a tiny ViT) trains one epoch and
  evaluates on the tree without tensorflow_datasets, with the training images the lists name;
  a tree of another dataset is one line and exit 2 before any step."""
  dataset = {'places': 'places_lt'}.get(config, config)
  root = {'imagenet_lt': trees.imagenet[1], 'places': trees.places[1],
          'inat2018': trees.inat}[config]
  wrong = trees.inat if config != 'inat2018' else trees.places[0]
  split_dir = f'--config.data.split_dir={fake["split_dir"]}'
  via_tfds = sources.get_sources(config_for(fake, dataset).data)
  out = train_without_tfds(tmp_path, no_tfds, f'{config}.py:source=files,image_root={wrong}',
                           tmp_path / 'refused', split_dir, batch_size=4)
  cli_worker.one_error_line(out, 2, str(wrong))
  assert not (tmp_path / 'refused').exists()
  out = train_without_tfds(tmp_path, no_tfds, f'{config}.py:source=files,image_root={root}',
                           tmp_path / 'run', split_dir, batch_size=4)
  assert out.returncode == 0, out.stderr[-3000:]
  info = json.loads((tmp_path / 'run' / 'run_info.json').read_text())
  assert info['class_counts'] == via_tfds.class_counts.tolist()
  steps = len(via_tfds.train) // 4
  record = json.loads((tmp_path / 'run' / f'eval_{steps}.json').read_text())
  assert sum(row['eval_count'] for row in record['per_class']) == len(via_tfds.eval)
