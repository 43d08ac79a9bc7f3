"""The tfds-backed datasets on tiny fake tfds ArrayRecord datasets (tests/fake_tfds.py)."""

import json
import pathlib
import shutil

import numpy as np
import pytest

import fake_tfds
from ltdpt_jax import config_lib
from ltdpt_jax.data import cifar_lt
from ltdpt_jax.data import pipeline
from ltdpt_jax.data import sources
from test_data_longtail import ldam_reference

# tfds labels. 116 and 118 (desert/sand, desert_road) are two of the five classes the OLTR
# lists number differently (117 and 116: splits.oltr_label_order), and share file names.
PLACES_TRAIN = {0: 6, 1: 4, 8: 5, 9: 3, 116: 3, 118: 4}
IMAGENET_TRAIN = {0: 5, 1: 3, 2: 4}
INAT_TRAIN = {0: 5, 1: 2, 2: 3}


@pytest.fixture(scope='module')
def fake(tmp_path_factory):
  """All four fake datasets in one tfds data_dir, plus OLTR-format split files."""
  root = tmp_path_factory.mktemp('tfds')
  data_dir, split_dir = root / 'data', root / 'splits'
  out = {'data_dir': str(data_dir), 'split_dir': str(split_dir)}
  out['cifar'] = fake_tfds.write_cifar100(data_dir, train_per_class=20, test_per_class=2)
  out['places'] = fake_tfds.write_places365_small(data_dir, PLACES_TRAIN, num_val=12)
  out['imagenet'] = fake_tfds.write_imagenet2012(data_dir, IMAGENET_TRAIN, num_val=10)
  out['inat'] = fake_tfds.write_i_naturalist2018(data_dir, INAT_TRAIN)
  cats = fake_tfds.places_categories()
  oltr = {label: fake_tfds.places_lt_categories().index(cat) for label, cat in enumerate(cats)}

  def places_entry(base, label, split):  # easyformat: nested categories joined with '-'
    return (f'{split}/{cats[label].replace("/", "-")}/{base}', oltr[label])

  by_key = {(f.rsplit('/', 1)[-1], lab): k for f, lab, k in out['places']['train']}
  train_keys = [('00000002.jpg', 0), ('00000005.jpg', 0), ('00000001.jpg', 0),
                ('00000001.jpg', 8), ('00000003.jpg', 9), ('00000004.jpg', 1),
                ('00000002.jpg', 118), ('00000001.jpg', 116), ('00000003.jpg', 118)]
  val_keys = [('00000006.jpg', 0), ('00000002.jpg', 8)]
  rng = np.random.default_rng(0)
  test = [out['places']['validation'][i] for i in rng.permutation(12)]
  out['places_lists'] = {
      'train': ([places_entry(b, lab, 'train') for b, lab in train_keys],
                [by_key[k] for k in train_keys]),
      'val': ([places_entry(b, lab, 'train') for b, lab in val_keys],
              [by_key[k] for k in val_keys]),
      'test': ([places_entry(f.rsplit('/', 1)[-1], lab, 'val') for f, lab, _ in test],
               [k for _, _, k in test]),
  }
  for split, (entries, _) in out['places_lists'].items():
    fake_tfds.write_split_file(split_dir / f'Places_LT_{split}.txt', entries)
  syn = fake_tfds.imagenet_synsets()
  inet_train = [out['imagenet']['train'][i] for i in (4, 0, 7, 11, 5)]
  inet_test = out['imagenet']['validation'][::-1]
  out['imagenet_lists'] = {
      'train': ([(f'train/{syn[lab]}/{f}', lab) for f, lab, _ in inet_train],
                [k for _, _, k in inet_train]),
      'test': ([(f'val/{syn[lab]}/{f}', lab) for f, lab, _ in inet_test],
               [k for _, _, k in inet_test]),
  }
  for split, (entries, _) in out['imagenet_lists'].items():
    fake_tfds.write_split_file(split_dir / f'ImageNet_LT_{split}.txt', entries)
  return out


def config_for(fake, dataset, **data):
  c = config_lib.base_config()
  c.data.dataset = dataset
  c.data.data_dir = fake['data_dir'] if fake else ''
  c.data.split_dir = fake['split_dir'] if fake else ''
  c.data.image_size = 16
  c.data.batch_size = 4
  c.data.eval_batch_size = 5
  c.data.num_workers = 0
  for k, v in data.items():
    c.data[k] = v
  return c


def colours(source):
  return [fake_tfds.index_of_colour(source[i]['image'][0, 0]) for i in range(len(source))]


def test_tfds_datasets_name_their_classes_and_open_only_their_splits(fake):
  """The class names of each tfds-backed dataset are tfds' label names (CIFAR-100: the fine
  labels of the raw files; Places-365 and ImageNet: the builders' packaged lists; iNat 2018:
  all 8142 species, those of the fake's categories first); `open_tfds` reads a prepared split
  whole and names the splits there are when asked for another."""
  want = {'cifar100_lt': [f'fine_{i}' for i in range(100)],
          'places_lt': fake_tfds.places_lt_categories(),  # in the OLTR lists' label order
          'imagenet_lt': fake_tfds.imagenet_synsets()}
  for dataset, names in want.items():
    info = pipeline.get_dataset_info(config_for(fake, dataset, imbalance_ratio=10.0).data)
    assert list(info.class_names) == names and info.num_classes == len(names), dataset
  inat = pipeline.get_dataset_info(config_for(fake, 'inat2018').data).class_names
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  base = pathlib.Path(tfds.core.tfds_path('image_classification/i_naturalist2018'))
  assert list(inat) == (base / 'inaturalist2018_labels.txt').read_text().splitlines()
  for name, split, records in (('cifar100', 'test', fake['cifar']['test']),
                               ('places365_small', 'validation', fake['places']['validation']),
                               ('imagenet2012', 'train', fake['imagenet']['train']),
                               ('i_naturalist2018', 'validation', fake['inat']['validation'])):
    assert len(sources.open_tfds(name, split, fake['data_dir'])) == len(records), name
  with pytest.raises(ValueError, match=r"has no split 'val' \(it has \['test', 'train'\]\)"):
    sources.open_tfds('cifar100', 'val', fake['data_dir'])


def test_cifar100_lt_selects_ldam_images_in_original_order(fake):
  c = config_for(fake, 'cifar100_lt', imbalance_ratio=10.0, seed=0)
  info = pipeline.get_dataset_info(c.data)
  counts = cifar_lt.cifar_lt_counts(10, max_count=20)  # n_max = len(train) / 100, as LDAM
  np.testing.assert_array_equal(info.class_counts, counts)
  assert (info.num_train, info.num_eval, info.num_classes) == (counts.sum(), 200, 100)
  src = sources.get_sources(c.data)
  labels = fake['cifar']['train']
  want = ldam_reference(labels.tolist(), 0.1, 0)
  assert colours(src.train) == want.tolist()  # train image i sits at position i of train.bin
  np.testing.assert_array_equal(src.train.labels, labels[want])
  assert colours(src.eval) == [100000 + i for i in range(200)]
  np.testing.assert_array_equal(src.eval.labels, fake['cifar']['test'])
  other = sources.get_sources(config_for(fake, 'cifar100_lt', imbalance_ratio=10.0, seed=1).data)
  assert colours(other.train) != colours(src.train)


@pytest.mark.parametrize('dataset,lists', [('places_lt', 'places_lists'),
                                           ('imagenet_lt', 'imagenet_lists')])
def test_split_file_datasets_select_the_listed_files(fake, dataset, lists):
  src = sources.get_sources(config_for(fake, dataset).data)
  entries, want = fake[lists]['train']
  assert colours(src.train) == want
  assert src.train.labels.tolist() == [lab for _, lab in entries]
  entries, want = fake[lists]['test']
  assert colours(src.eval) == want and src.eval_split.endswith('_test.txt')
  assert src.eval.labels.tolist() == [lab for _, lab in entries]
  assert [src.train[i]['id'] for i in range(len(src.train))] == list(range(len(src.train)))
  if dataset == 'places_lt':
    val = sources.get_sources(config_for(fake, dataset, eval_split='val').data)
    assert colours(val.eval) == fake[lists]['val'][1]
    info = pipeline.get_dataset_info(config_for(fake, dataset).data)
    assert info.num_classes == 365 and info.class_counts[[0, 1, 8, 9]].tolist() == [3, 1, 1, 1]


def test_inat2018_uses_official_splits(fake):
  info = pipeline.get_dataset_info(config_for(fake, 'inat2018').data)
  assert info.num_classes == 8142 and info.num_train == 10 and info.num_eval == 9
  assert info.class_counts[:4].tolist() == [5, 2, 3, 0] and info.class_counts.sum() == 10
  src = sources.get_sources(config_for(fake, 'inat2018').data)
  by_colour = {k: lab for _, lab, k in fake['inat']['validation']}
  assert [by_colour[k] for k in colours(src.eval)] == src.eval.labels.tolist()


def test_train_and_eval_pipelines_read_the_right_images(fake):
  c = config_for(fake, 'places_lt', batch_size=4, eval_batch_size=5)
  entries, want = fake['places_lists']['train']
  it = pipeline.make_train_iterator(c.data, seed=c.train.seed, process_index=0, process_count=1)
  for batch in (next(it), next(it)):
    assert batch['image'].shape == (4, 16, 16, 3)
    for r in range(4):
      assert np.all(batch['image'][r] == batch['image'][r, 0, 0])  # uniform colour survives
      assert fake_tfds.index_of_colour(batch['image'][r, 0, 0]) == want[batch['id'][r]]
      assert batch['label'][r] == entries[batch['id'][r]][1]
  _, want_test = fake['places_lists']['test']
  seen = {}
  for b in pipeline.make_eval_iterator(c.data, process_index=0, process_count=1):
    for r in np.flatnonzero(b['mask']):
      assert int(b['id'][r]) not in seen
      seen[int(b['id'][r])] = fake_tfds.index_of_colour(b['image'][r, 0, 0])
  assert seen == dict(enumerate(want_test))


def test_missing_tfds_dataset_error_says_what_where_and_how(tmp_path):
  c = config_for(None, 'cifar100_lt')
  c.data.data_dir = str(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError) as e:
    pipeline.get_dataset_info(c.data)
  msg = str(e.value)
  assert "'cifar100'" in msg and str(tmp_path / 'empty') in msg
  assert f'tfds build cifar100 --data_dir={tmp_path / "empty"} --file_format=array_record' in msg


def test_tfrecord_dataset_error(fake, tmp_path):
  src = next((pathlib.Path(fake['data_dir']) / 'i_naturalist2018').iterdir())
  dst = tmp_path / 'i_naturalist2018' / src.name
  shutil.copytree(src, dst)
  info_file = dst / 'dataset_info.json'
  info = json.loads(info_file.read_text())
  info['fileFormat'] = 'tfrecord'
  info_file.write_text(json.dumps(info))
  with pytest.raises(ValueError, match='stored as tfrecord.*convert_format'):
    sources.open_tfds('i_naturalist2018', 'train', str(tmp_path))


def test_split_file_errors(fake, tmp_path):
  c = config_for(fake, 'places_lt')
  c.data.split_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='Places_LT_train.txt not found'):
    pipeline.get_dataset_info(c.data)
  (tmp_path / 'Places_LT_train.txt').write_text('train/airfield/00000001.jpg 0\nbroken\n')
  (tmp_path / 'Places_LT_test.txt').write_text('val/airfield/Places365_val_00000003.jpg 0\n')
  with pytest.raises(ValueError, match=r'Places_LT_train\.txt:2: malformed'):
    pipeline.get_dataset_info(c.data)
  (tmp_path / 'Places_LT_train.txt').write_text('train/airfield/00000099.jpg 0\n')
  with pytest.raises(KeyError, match='00000099.jpg'):
    pipeline.get_dataset_info(c.data)
