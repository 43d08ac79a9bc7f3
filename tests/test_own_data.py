"""Your own data: image folders and list files as sources, their decoding, bad data, and
predictions from a checkpoint (ltdpt_jax/data/files.py, ltdpt_jax/tools/predict.py)."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import shutil
import sys

import numpy as np
import pytest
from PIL import Image
from PIL import ImageOps

import cli_worker
import image_folders
import test_bad_inputs as bad_inputs
import train_utils
from ltdpt_jax.tools import predict as predict_lib
from ltdpt_jax import train
from ltdpt_jax.data import files
from ltdpt_jax.data import pipeline
from ltdpt_jax.data import transforms

COUNTS = [120, 60, 30, 12, 6]   # head, medium, medium, tail, tail (> 100 / 20-100 / < 20)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """train/ (long-tailed, nested sub-folders, every file kind, a hidden file, a text file, a
  corrupt image, a decompression bomb, two symbolic link loops) and val/ (8 per class, class_04
  missing)."""
  root = tmp_path_factory.mktemp('own') / 'data'
  image_folders.write_folder(root / 'train', COUNTS, size=32, seed=0, nested=True)
  image_folders.write_folder(root / 'val', [8, 8, 8, 8], size=32, seed=1)
  (root / 'train' / 'class_00' / '.DS_Store').write_bytes(b'\0\1')
  (root / 'train' / 'class_00' / 'README.txt').write_text('not an image')
  (root / 'train' / 'class_01' / 'corrupt.jpg').write_bytes(b'not an image at all')
  bad_inputs.write_bomb(root / 'train' / 'class_02' / 'huge.png')
  bad_inputs.add_loops(root / 'train' / 'class_03')
  return root


def _bad_entries(root) -> list[str]:
  """What the scan of `folder`'s train/ finds bad, sorted."""
  train = root / 'train'
  return [str(train / 'class_01' / 'corrupt.jpg'), str(train / 'class_02' / 'huge.png'),
          str(train / 'class_03' / 'loop'), str(train / 'class_03' / 'sub' / 'up')]


def _folder_config(root, **data):
  c = train_utils.tiny_config(image_size=32, batch_size=32)
  c.data.dataset = 'folder'
  c.data.train_dir, c.data.eval_dir = str(root / 'train'), str(root / 'val')
  c.data.eval_batch_size = 32
  c.data.on_bad_image = 'skip'
  c.data.update(data)
  return c


# ---------------------------------------------------------------------------------------------
# Scanning and decoding.
# ---------------------------------------------------------------------------------------------

def test_scan_class_order_counts_and_what_it_ignores(folder):
  scan = files.scan_folder(str(folder / 'train'))
  assert scan.class_names == tuple(f'class_{c:02d}' for c in range(5))
  counts = np.bincount(scan.labels)
  assert counts.tolist() == [120, 61, 31, 12, 6]  # the corrupt .jpg and the bomb: checked later
  assert scan.ignored == {'hidden': 1, 'not an image': 1}
  assert sorted(scan.problems) == _bad_entries(folder)[2:]  # the loops: found by the listing
  assert any('/more/' in p for p in scan.paths)  # nested folders belong to their class
  assert any(p.endswith('.PNG') for p in scan.paths) and any(p.endswith('.JPEG')
                                                              for p in scan.paths)
  named = files.scan_folder(str(folder / 'train'), class_names=[f'class_{c:02d}' for c in
                                                                (4, 3, 2, 1, 0)])
  assert np.bincount(named.labels).tolist() == [6, 12, 31, 61, 120]


def test_sources_counts_groups_and_the_skip_policy(folder, tmp_path):
  info = pipeline.get_dataset_info(_folder_config(folder).data)
  assert info.class_counts.tolist() == COUNTS and info.num_eval == 32
  assert info.class_names == tuple(f'class_{c:02d}' for c in range(5))
  assert [p for p, _ in info.bad_images] == _bad_entries(folder)
  from ltdpt_jax.evaluators import longtail  # pylint: disable=g-import-not-at-top
  g = longtail.shot_groups(info.class_counts)
  assert (g['head'].tolist(), g['medium'].tolist(), g['tail'].tolist()) == ([0], [1, 2], [3, 4])
  with pytest.raises(files.DataError, match=r'4 file\(s\) under .*train cannot be read: '
                                            r'.*on_bad_image=.skip.') as e:
    pipeline.get_dataset_info(_folder_config(folder, on_bad_image='error').data)
  assert all(p in str(e.value) for p in _bad_entries(folder)), e.value


def _by_hand(path: pathlib.Path) -> np.ndarray:
  """Pillow by hand, the way the docs say each mode is converted."""
  im = Image.open(path)
  im = ImageOps.exif_transpose(im)
  if im.mode in ('RGBA', 'LA') or (im.mode == 'P' and 'transparency' in im.info):
    rgba = np.asarray(im.convert('RGBA'), np.float64)
    alpha = rgba[..., 3:] / 255.0
    return np.round(rgba[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
  if im.mode == 'I;16':
    g = np.round(np.asarray(im, np.float64) / 257.0).astype(np.uint8)
    return np.repeat(g[..., None], 3, -1)
  return np.asarray(im.convert('RGB'))


def test_decoding_every_mode_against_pillow_by_hand(folder):
  scan = files.scan_folder(str(folder / 'train'))
  seen, sizes = set(), set()
  for path in scan.paths[:40]:
    if path.endswith('corrupt.jpg'):
      continue
    mode = Image.open(path).mode
    seen.add(mode)
    got = files.decode_image(path)
    want = _by_hand(pathlib.Path(path))
    assert got.dtype == np.uint8 and got.shape == want.shape and want.shape[2] == 3, path
    np.testing.assert_allclose(got.astype(int), want.astype(int), atol=1, err_msg=path)
    sizes.add(got.shape[:2])
  assert {'RGB', 'RGBA', 'L', 'P', 'CMYK', 'I;16', 'LA'} <= seen, seen
  assert {(32, 32), (36, 48), (41, 27)} <= sizes, sizes


def test_the_pipelines_pillow_path_gives_the_array_paths_pixels(folder):
  """What the input pipeline does to image files (`ImageFiles.open`, the transforms on the Pillow
  image) equals decoding to an array and transforming that, bit for bit, for every mode and
  size, train (crops drawn from the same generator) and eval."""
  source = files.ImageFiles(*(lambda s: (s.paths, s.labels))(
      files.scan_folder(str(folder / 'train'))))
  for i, path in enumerate(source.paths[:40]):
    if path.endswith('corrupt.jpg'):
      continue
    image, drawn_on = source.open(i)
    array = files.decode_image(path)
    assert drawn_on == image.size == (array.shape[1], array.shape[0])
    for seed in range(4):
      np.testing.assert_array_equal(
          transforms.train_transform_image(image, 24, np.random.default_rng(seed)),
          transforms.train_transform(array, 24, np.random.default_rng(seed)), err_msg=path)
    np.testing.assert_array_equal(transforms.eval_transform_image(image, 24),
                                  transforms.eval_transform(array, 24), err_msg=path)


def test_exif_orientation_and_transparency(tmp_path):
  img = np.zeros((20, 30, 3), np.uint8)
  img[:, :10] = (255, 0, 0)  # a red band on the left
  image_folders.save(img, tmp_path / 'rot.jpg', 'exif_rotated')
  stored = np.asarray(Image.open(tmp_path / 'rot.jpg'))
  assert stored.shape == (30, 20, 3)  # stored rotated; the EXIF tag turns it back
  got = files.decode_image(str(tmp_path / 'rot.jpg'))
  assert got.shape == (20, 30, 3) and got[10, 2, 0] > 200 and got[10, 25, 0] < 60
  image_folders.save(img, tmp_path / 'a.png', 'rgba')  # the top quarter transparent
  got = files.decode_image(str(tmp_path / 'a.png'))
  np.testing.assert_array_equal(got[:5], 255)   # composited on white
  np.testing.assert_array_equal(got[10, :10], [[255, 0, 0]] * 10)


def test_header_check_finds_truncated_files_and_is_cached(tmp_path, monkeypatch):
  monkeypatch.setenv('LTDPT_CACHE_DIR', str(tmp_path / 'cache'))
  good = tmp_path / 'good.jpg'
  noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
  good.write_bytes(image_folders.jpeg_bytes(noise))
  cut = tmp_path / 'cut.jpg'
  cut.write_bytes(good.read_bytes()[:-2000])  # the header is intact, the end is not
  png = tmp_path / 'cut.png'
  Image.fromarray(noise).save(png)
  png.write_bytes(png.read_bytes()[:-2000])  # into its image data
  no_end = tmp_path / 'no_end.png'  # only the IEND chunk missing: every pixel is still there
  Image.fromarray(noise).save(no_end)
  no_end.write_bytes(no_end.read_bytes()[:-12])
  paths = [str(good), str(cut), str(png), str(no_end)]
  bad = files.check_images(paths)
  assert set(bad) == {str(cut), str(png)}, bad
  assert 'JPEG cut short' in bad[str(cut)]
  with Image.open(cut) as im:
    assert im.size == (128, 128)  # Pillow reads its header happily
  calls = []
  monkeypatch.setattr(files, '_header_problem', lambda p: calls.append(p))
  assert files.check_images(paths) == bad and not calls   # the same listing: from the cache
  os.utime(good, (1, 1))
  files.check_images(paths)
  assert len(calls) == 4  # the listing changed: checked again


# ---------------------------------------------------------------------------------------------
# Bad layouts, each one error naming the path and the fix.
# ---------------------------------------------------------------------------------------------

def test_bad_folders_and_lists(folder, tmp_path):
  with pytest.raises(files.DataError, match=r'train_dir=.*nope.*is not a directory'):
    files.scan_folder(str(tmp_path / 'nope'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(files.DataError, match=r'has no class folders'):
    files.scan_folder(str(tmp_path / 'empty'))
  (tmp_path / 'one' / 'cat').mkdir(parents=True)
  (tmp_path / 'one' / 'cat' / 'notes.txt').write_text('x')
  with pytest.raises(files.DataError, match=r'Class folder .*one/cat has no images'):
    files.scan_folder(str(tmp_path / 'one'))
  extra = tmp_path / 'val_extra'
  shutil.copytree(folder / 'val', extra)
  (extra / 'zebra').mkdir()
  with pytest.raises(files.DataError, match=r"class folder\(s\) \['zebra'\] that the classes do "
                                            r'not have'):
    pipeline.get_dataset_info(_folder_config(folder, eval_dir=str(extra)).data)
  lst = tmp_path / 'train.txt'
  lst.write_text('class_00/img_0000.jpg 0\nclass_00/img_0001.png zero\n')
  with pytest.raises(files.DataError, match=r'train\.txt:2: malformed line'):
    files.read_list(str(lst), image_root=str(folder / 'train'))
  lst.write_text('class_00/img_0000.jpg 0\nclass_00/missing.jpg 1\n')
  with pytest.raises(files.DataError, match=r"train\.txt:2: 'class_00/missing.jpg' is not a file "
                                            r'under config.data.image_root'):
    files.read_list(str(lst), image_root=str(folder / 'train'))
  csv_file = tmp_path / 'val.csv'
  csv_file.write_text('path,label\nclass_00/img_0000.jpg,class_00\nclass_01/img_0000.jpg,\n')
  with pytest.raises(files.DataError, match=r'val\.csv:3: malformed CSV row'):
    files.read_list(str(csv_file), image_root=str(folder / 'val'))


def test_list_files_oltr_and_csv(folder, tmp_path):
  train_scan = files.scan_folder(str(folder / 'train'))
  lines = [f'{os.path.relpath(p, folder / "train")} {l}' for p, l in
           zip(train_scan.paths, train_scan.labels) if 'corrupt' not in p]
  (tmp_path / 'train.txt').write_text('\n'.join(lines) + '\n')
  rows = ['path,label'] + [f'{os.path.relpath(p, folder)},class_{l:02d}' for p, l in
                           zip(*(lambda s: (s.paths, s.labels))(
                               files.scan_folder(str(folder / 'val'))))]
  (tmp_path / 'val.csv').write_text('\n'.join(rows) + '\n')
  c = _folder_config(folder)
  c.data.dataset = 'list'
  c.data.train_list = str(tmp_path / 'train.txt')
  c.data.eval_list = str(tmp_path / 'val.csv')
  c.data.image_root = str(folder / 'train')
  c.data.class_names = tuple(f'class_{i:02d}' for i in range(5))
  with pytest.raises(files.DataError, match=r"val\.csv:2: 'val/class_00/img_0000.jpg' is not "
                                            r'a file'):
    pipeline.get_dataset_info(c.data)  # the CSV's paths are under data/, not data/train/
  rows = ['path,label'] + [f'../{r}' for r in rows[1:]]
  (tmp_path / 'val.csv').write_text('\n'.join(rows) + '\n')
  info = pipeline.get_dataset_info(c.data)
  assert info.class_counts.tolist() == COUNTS and info.num_eval == 32
  assert info.class_names[0] == 'class_00'


# ---------------------------------------------------------------------------------------------
# The pipeline over files: shards and resume.
# ---------------------------------------------------------------------------------------------

def test_file_shards_are_disjoint_and_complete_and_resume_exactly(folder):
  c = _folder_config(folder, batch_size=24)
  data = c.data

  def take(it, n):
    out = [next(it) for _ in range(n)]
    it.close()
    return out

  single = take(pipeline.make_train_iterator(data, seed=0, process_index=0, process_count=1), 3)
  hosts = [take(pipeline.make_train_iterator(data, seed=0, process_index=h, process_count=3), 3)
           for h in range(3)]
  for step in range(3):
    joined = np.concatenate([hosts[h][step]['id'] for h in range(3)])
    np.testing.assert_array_equal(joined, single[step]['id'])
    np.testing.assert_array_equal(np.concatenate([hosts[h][step]['image'] for h in range(3)]),
                                  single[step]['image'])
  it = pipeline.make_train_iterator(data, seed=0, process_index=0, process_count=1)
  next(it)
  state = it.get_state()
  it.close()
  resumed = pipeline.make_train_iterator(data, seed=0, process_index=0, process_count=1)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)['image'], single[1]['image'])
  resumed.close()


# ---------------------------------------------------------------------------------------------
# Training from a folder, then predictions.
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def trained(folder, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('own_run') / 'run'
  config = _folder_config(folder)
  config.train.epochs, config.train.drw_epochs = 2, 1
  config.train.keep_checkpoints = 10  # the first evaluation's checkpoint too
  results = train.train_and_evaluate(config, str(workdir))
  return workdir, results, config


def test_training_from_a_folder_records_classes_and_per_class_results(trained, folder):
  workdir, results, _ = trained
  last = results['last']
  assert [r['name'] for r in last['per_class']] == [f'class_{c:02d}' for c in range(5)]
  assert [r['train_count'] for r in last['per_class']] == COUNTS
  assert [r['eval_count'] for r in last['per_class']] == [8, 8, 8, 8, 0]
  assert [r['group'] for r in last['per_class']] == ['head', 'medium', 'medium', 'tail', 'tail']
  assert last['per_class'][4]['accuracy'] is None  # no eval image: n/a, not 0
  assert last['per_class_accuracy'][4] is None and last['num_examples'] == 32
  run_info = json.loads((workdir / 'run_info.json').read_text())
  assert run_info['class_names'][0] == 'class_00' and run_info['class_counts'] == COUNTS
  meta = json.loads(sorted((workdir / 'checkpoints').glob('*/meta/metadata'))[-1].read_text())
  assert meta['class_names'] == run_info['class_names']
  recorded = dict(line.split('\t') for line in
                  (workdir / 'bad_images.txt').read_text().splitlines())
  assert sorted(recorded) == _bad_entries(folder)
  assert recorded[str(folder / 'train' / 'class_02' / 'huge.png')].startswith(
      'too large (30000 x 30000 pixels')
  assert recorded[str(folder / 'train' / 'class_03' / 'loop')].startswith('a symbolic link loop')


def test_predict_cli_agrees_with_eval_and_writes_the_csv(trained, folder, tmp_path):
  workdir, results, _ = trained
  out = tmp_path / 'pred' / 'predictions.csv'
  proc = cli_worker.run_cli([sys.executable, '-m', 'ltdpt_jax.tools.predict', f'--workdir={workdir}',
                             f'--images={folder / "val"}', f'--out={out}', '--top_k=3'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / 'pred' / 'predictions_summary.json').read_text())
  assert summary == results['last']  # the same accuracy, groups and per-class counts
  with open(out) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ['path', 'label', 'prediction', 'probability', 'top1',
                           'top1_probability', 'top2', 'top2_probability', 'top3',
                           'top3_probability']
  assert len(rows) == 32 and rows[0]['label'] == 'class_00'
  for r in rows:
    assert r['prediction'] == r['top1'] and r['probability'] == r['top1_probability']
    probs = [float(r[f'top{i}_probability']) for i in (1, 2, 3)]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
  correct = sum(r['prediction'] == r['label'] for r in rows)
  assert correct / 32 == pytest.approx(results['last']['accuracy'])


def test_predict_a_labelled_list_at_an_earlier_step_equals_that_evaluation(trained, folder,
                                                                          tmp_path):
  """A labelled list file (OLTR lines and a CSV of class names) of the eval images, predicted
  with --checkpoint_step of the first evaluation: predictions_summary.json is that
  evaluation's eval_<step>.json (the same accuracy, groups and per-class counts)."""
  workdir, _, _ = trained
  steps = sorted(int(p.stem.split('_')[1]) for p in workdir.glob('eval_*.json'))
  assert len(steps) == 2, steps
  first = json.loads((workdir / f'eval_{steps[0]}.json').read_text())
  images = sorted(p for p in (folder / 'val').rglob('*') if files.is_image_name(p.name))
  # Lists beside the images (paths relative to the list's folder), in a copy of the folder.
  root = tmp_path / 'data'
  shutil.copytree(folder / 'val', root / 'val')
  (root / 'val.txt').write_text(''.join(
      f'{p.relative_to(folder)} {int(p.parent.name[-2:])}\n' for p in images))
  (root / 'val.csv').write_text('path,label\n' + ''.join(
      f'{p.relative_to(folder)},{p.parent.name}\n' for p in images))
  for listing in ('val.txt', 'val.csv'):
    out = tmp_path / listing / 'predictions.csv'
    proc = cli_worker.run_cli([sys.executable, '-m', 'ltdpt_jax.tools.predict',
                               f'--workdir={workdir}', f'--images={root / listing}',
                               f'--checkpoint_step={steps[0]}', f'--out={out}'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out.parent / 'predictions_summary.json').read_text())
    assert summary['step'] == first['step'] and summary == first, listing
  # From Python: step=N restores that checkpoint, not the latest.
  predictor = predict_lib.Predictor.from_workdir(str(workdir), step=steps[0])
  assert predictor.step == steps[0]


def test_predictor_api_arrays_equal_files(trained, folder):
  workdir, _, _ = trained
  predictor = predict_lib.Predictor.from_workdir(str(workdir))
  paths = sorted(str(p) for p in (folder / 'val' / 'class_02').iterdir())[:5]
  rows = predictor.predict_files(paths, top_k=2)
  arrays = [files.decode_image(p) for p in paths]  # of their own sizes: transformed like files
  out = predictor.predict(arrays)
  np.testing.assert_array_equal(out['prediction'], [r['prediction'] for r in rows])
  np.testing.assert_allclose(out['probabilities'].max(-1), [r['probability'] for r in rows],
                             rtol=1e-6)
  np.testing.assert_allclose(out['probabilities'].sum(-1), 1.0, rtol=1e-5)
  assert rows[0]['label'] is None and len(rows[0]['top_k']) == 2


def test_predict_files_in_worker_processes_is_the_same_and_reports_its_rate(trained, folder,
                                                                           caplog):
  """predict_files with the run's input workers as processes (config.data.num_workers=2, grain
  workers decoding and transforming ahead of the model) gives the rows of the in-process path,
  in the order of the files, and logs the images/s it kept."""
  workdir, _, _ = trained
  predictor = predict_lib.Predictor.from_workdir(str(workdir))
  paths = sorted(str(p) for p in (folder / 'val').rglob('*') if files.is_image_name(p.name))
  paths += paths[:7]  # 39 files: two batches of 32, the second padded
  assert predictor.batch_size < len(paths) < 2 * predictor.batch_size
  predictor.setup.config.data.num_workers = 0
  want = predictor.predict_files(paths, top_k=3)
  predictor.setup.config.data.num_workers = 2
  with caplog.at_level('INFO'):
    got = predictor.predict_files(paths, top_k=3)
  assert [r['path'] for r in got] == paths
  for a, b in zip(got, want):
    assert (a['prediction'], a['top_k']) == (b['prediction'], b['top_k'])
  assert predictor.images_per_s > 0
  assert (f'Predicted {len(paths)} images in' in caplog.text
          and 'images/s (2 input worker processes)' in caplog.text)


def test_predict_checks_inputs_before_building_or_restoring(trained, tmp_path, monkeypatch):
  workdir, _, _ = trained
  bad_inputs.no_model(monkeypatch)
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'looped').mkdir()
  bad_inputs.add_loops(tmp_path / 'looped')
  (tmp_path / 'notes.jpg').write_text('hello')
  cases = {tmp_path / 'nope': 'nope is not an image, a directory or a list file',
           tmp_path / 'empty': 'no image files in', tmp_path / 'notes.jpg': 'not an image',
           bad_inputs.write_bomb(tmp_path / 'bomb.png'): 'bomb.png: too large',
           tmp_path / 'looped': 'looped/loop: a symbolic link loop'}
  for path, needle in cases.items():
    with pytest.raises(predict_lib.PredictError, match=re.escape(needle)):
      predict_lib.predict_paths(str(workdir), [str(path)])


def test_predict_bad_input_is_one_line(trained, folder, tmp_path):
  """Each problem is one PredictError naming it; through the CLI, one line and exit code 2, the
  library logs quiet unless --verbosity=1 asks for them."""
  workdir, _, _ = trained
  with pytest.raises(predict_lib.PredictError, match='holds no run'):
    predict_lib.Predictor.from_workdir(str(tmp_path / 'none'))
  empty = tmp_path / 'empty_run'
  empty.mkdir()
  shutil.copy(workdir / 'config.json', empty / 'config.json')
  with pytest.raises(predict_lib.PredictError, match='No checkpoint in'):
    predict_lib.Predictor.from_workdir(str(empty))
  other = tmp_path / 'other_run'
  shutil.copytree(workdir, other)
  config = json.loads((other / 'config.json').read_text())
  config['model']['num_fr_prompts'] = 3  # the checkpoint holds 2 per block
  (other / 'config.json').write_text(json.dumps(config))
  with pytest.raises(predict_lib.PredictError, match='holds other arrays.*fr_prompts'):
    predict_lib.Predictor.from_workdir(str(other))
  text = tmp_path / 'not_an_image.jpg'
  text.write_text('hello')
  (tmp_path / 'no_images').mkdir()
  with pytest.raises(predict_lib.PredictError, match='no image files in .*no_images'):
    predict_lib.predict_paths(str(workdir), [str(tmp_path / 'no_images')])
  # Through the command: each kind of error (the inputs', the run's) is one line, exit code 2.
  predict = [sys.executable, '-m', 'ltdpt_jax.tools.predict', f'--out={tmp_path / "p.csv"}']
  for args, needles in (([f'--workdir={workdir}', f'--images={text}'],
                         ('not_an_image.jpg', 'not an image')),
                        ([f'--workdir={empty}', f'--images={folder / "val"}'],
                         ('No checkpoint in', 'empty_run'))):
    bad_inputs.only_error_line(cli_worker.run_cli(predict + args, timeout=180), *needles)
  out = cli_worker.run_cli(predict + [f'--workdir={empty}', f'--images={text}', '--verbosity=1'], timeout=180)
  assert out.returncode == 2 and 'Error: No checkpoint in' in out.stderr, out.stderr[-3000:]
  assert 'checkpoint_manager.py' in out.stderr  # Orbax's own log lines (and a debug traceback)
  assert not (tmp_path / 'p.csv').exists()
