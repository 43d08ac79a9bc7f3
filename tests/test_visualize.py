"""Pictures of runs: `python -m ltdpt_jax.tools.visualize` (Figure 1 and foreground shares),
`python -m ltdpt_jax.tools.plot`, and the plots and attention shares a training run writes itself."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from ltdpt_jax import plot
from ltdpt_jax.tools import predict as predict_lib
from ltdpt_jax import train
from ltdpt_jax.tools import visualize

import cli_worker
import test_bad_inputs as bad_inputs
import train_utils

MAPS = ('gradcam_pred', 'gradcam_true', 'fr_attention', 'br_attention', 'cls_attention',
        'patch_scores', 'saliency', 'foreground_area')


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return cli_worker.cache_dir(tmp_path_factory)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """An LT-DPT run with plots and attention shares on, and a VPT run of the same task."""
  root = tmp_path_factory.mktemp('pictures')
  ltdpt = train_utils.tiny_config(epochs=1, drw_epochs=0)  # 7 steps, one evaluation
  ltdpt.train.plots = True
  ltdpt.train.attention_stats = True
  vpt = train_utils.tiny_config(method='vpt', epochs=1, drw_epochs=0)
  train.train_and_evaluate(ltdpt, str(root / 'ltdpt'))
  train.train_and_evaluate(vpt, str(root / 'vpt'))
  return root / 'ltdpt', root / 'vpt'


def _size(path) -> tuple[int, int]:
  with Image.open(path) as im:
    im.load()  # decodes the whole file
    return im.size


def test_a_run_writes_its_plots_and_attention_shares(runs):
  workdir = runs[0]
  assert _size(workdir / 'plots' / 'per_class_accuracy.png') == plot.figure_pixels(
      plot.PER_CLASS_SIZE)
  assert _size(workdir / 'plots' / 'learning_curves.png') == plot.figure_pixels(
      plot.CURVES_SIZE)
  assert _size(workdir / 'plots' / 'confusion.png') == plot.figure_pixels(plot.confusion_size(6))
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  shares = [r for r in records if r['split'] == 'attention']
  assert [r['step'] for r in shares] == [7]
  for r in shares:
    for key in ('fr_attention', 'br_attention', 'gradcam_true', 'saliency'):
      assert 0.0 <= r[key] <= 1.0, (key, r)
  stored = json.loads((workdir / 'attention_7.json').read_text())
  assert stored['reference'] == 'object mask' and stored['fr_attention'] == shares[0][
      'fr_attention']
  record = json.loads((workdir / 'eval_7.json').read_text())
  confusion = np.asarray(record['confusion'])
  np.testing.assert_array_equal(confusion.sum(1), [c['eval_count'] for c in record['per_class']])
  np.testing.assert_array_equal(np.diag(confusion),
                                [round(c['accuracy'] * c['eval_count'])
                                 for c in record['per_class']])


def test_visualize_compares_two_runs(runs, cache, tmp_path):
  ltdpt, vpt = runs
  out = tmp_path / 'figure1'
  proc = cli_worker.run_cli([sys.executable, '-m', 'ltdpt_jax.tools.visualize', f'--workdir={ltdpt}',
                             f'--compare_workdir={vpt}', '--num_images=4', f'--out={out}'],
                            cache, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _size(out / 'maps.png') == plot.figure_pixels(plot.maps_size(4, 6))
  stats = json.loads((out / 'attention_stats.json').read_text())
  assert stats['num_images'] == 4
  for key, method in (('run', 'fr_br'), ('compare', 'vpt')):
    s = stats[key]
    assert s['method'] == method and s['reference'] == 'object mask'
    assert s['overall']['num_images'] == 4
    for name in MAPS:
      value = s['overall'][name]
      if method == 'vpt' and name == 'br_attention':
        assert value is None  # no BR prompts: not applicable, not 0
      else:
        assert 0.0 <= value <= 1.0, (key, name, value)
    groups = [g for g in ('head', 'medium', 'tail') if s[g] is not None]
    assert sum(s[g]['num_images'] for g in groups) == 4 and len(groups) >= 2  # spread


def test_visualize_on_image_files(runs, tmp_path):
  """Unlabelled files: Grad-CAM of the prediction, shares against the top-25% salient patches."""
  folder = tmp_path / 'photos'
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), np.uint8)).save(folder / f'{i}.png')
  stats = visualize.run_visualize(str(runs[0]), str(tmp_path / 'out'), images=[str(folder)])
  s = stats['run']
  assert stats['num_images'] == 3 and s['reference'] == 'top 25% salient patches'
  assert 'gradcam_true' not in s['overall'] and s['accuracy'] is None
  assert _size(tmp_path / 'out' / 'maps.png') == plot.figure_pixels(plot.maps_size(3, 5))


def test_visualize_bad_input_is_one_line(runs, cache, tmp_path, monkeypatch):
  """Each problem is one line (exit code 2), found from the runs' records and the inputs before
  any model is built or checkpoint restored, with the library logs quiet."""
  other = tmp_path / 'other'  # the VPT run, rebuilt at another image size
  shutil.copytree(runs[1], other)
  config = json.loads((other / 'config.json').read_text())
  config['data']['image_size'] = 32
  (other / 'config.json').write_text(json.dumps(config))
  renamed = tmp_path / 'renamed'  # the VPT run, its checkpoints' classes renamed
  shutil.copytree(runs[1], renamed)
  for path in renamed.glob('checkpoints/*/meta/metadata'):
    meta = json.loads(path.read_text())
    meta['class_names'] = [f'other {name}' for name in meta['class_names']]
    path.write_text(json.dumps(meta))
  (tmp_path / 'no_images').mkdir()
  bad_inputs.no_model(monkeypatch)
  for kwargs, needle in (({'compare_workdir': str(other)}, 'other classes or image size'),
                         ({'compare_workdir': str(renamed)}, 'other classes or image size'),
                         ({'images': [str(tmp_path / 'no_images')]}, 'no image files in')):
    with pytest.raises(predict_lib.PredictError, match=needle):
      visualize.run_visualize(str(runs[0]), str(tmp_path / 'out'), **kwargs)
  command = [sys.executable, '-m', 'ltdpt_jax.tools.visualize', f'--out={tmp_path / "o"}']
  for args, needles in (([f'--workdir={tmp_path / "none"}'], ('holds no run',)),
                        ([f'--workdir={runs[0]}', f'--compare_workdir={renamed}'],
                         ('renamed is a run of other classes',)),
                        ([f'--workdir={runs[0]}', f'--images={tmp_path / "no_images"}'],
                         ('no image files in', 'no_images'))):
    bad_inputs.only_error_line(cli_worker.run_cli(command + args, cache, timeout=120), *needles)
  assert not (tmp_path / 'o').exists()


def test_plot_command_overlays_runs(runs, cache, tmp_path):
  out = tmp_path / 'compare'
  proc = cli_worker.run_cli([sys.executable, '-m', 'ltdpt_jax.tools.plot', f'--workdir={runs[0]}',
                             str(runs[1]), f'--out={out}'], cache, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _size(out / 'per_class_accuracy.png') == plot.figure_pixels(plot.PER_CLASS_SIZE)
  assert _size(out / 'learning_curves.png') == plot.figure_pixels(plot.CURVES_SIZE)
  proc = cli_worker.run_cli([sys.executable, '-m', 'ltdpt_jax.tools.plot', f'--workdir={tmp_path / "x"}'],
                            cache, timeout=120)
  cli_worker.one_error_line(proc, 2, 'is not a directory')


def test_plots_of_a_single_class_and_empty_groups(tmp_path):
  record = {'step': 3, 'accuracy': 0.5, 'head_accuracy': None, 'medium_accuracy': None,
            'tail_accuracy': 0.5, 'confusion': [[1, 1], [0, 0]],
            'per_class': [{'name': 'a', 'train_count': 5, 'eval_count': 2, 'accuracy': 0.5,
                           'group': 'tail'},
                          {'name': 'b', 'train_count': 3, 'eval_count': 0, 'accuracy': None,
                           'group': 'tail'}]}
  path = plot.per_class_figure([('run', record)], str(tmp_path / 'one.png'))
  assert _size(path) == plot.figure_pixels(plot.PER_CLASS_SIZE)
  path = plot.confusion_figure(record, str(tmp_path / 'confusion.png'))
  assert _size(path) == plot.figure_pixels(plot.confusion_size(2))
  single = dict(record, per_class=record['per_class'][:1], confusion=[[2]])
  path = plot.per_class_figure([('run', single)], str(tmp_path / 'single.png'))
  assert _size(path) == plot.figure_pixels(plot.PER_CLASS_SIZE)
  path = plot.learning_curves_figure([('run', [{'step': 1, 'split': 'train', 'loss': 1.0}])],
                                     str(tmp_path / 'curves.png'))
  assert _size(path) == plot.figure_pixels(plot.CURVES_SIZE)
