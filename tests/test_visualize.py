"""Pictures of runs: `python -m ltdpt_jax.tools.visualize` (Figure 1 and foreground shares),
`python -m ltdpt_jax.tools.plot`, and the plots and attention shares a training run writes itself.

Each PNG is checked for what it shows: the data on the axes of the figure it was drawn as
(`plot.*_plot`) against the JSON records read here, and the decoded pixels of the file: equal
to that figure's, or (confusion cells, map panels) the colour map's colour of each cell's value,
found at the cell's centre through the axes' transform.
"""

from __future__ import annotations

import io
import json
import shutil
import sys

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.collections import PathCollection
from PIL import Image

from ltdpt_jax import maps as maps_lib
from ltdpt_jax import plot
from ltdpt_jax.tools import predict as predict_lib
from ltdpt_jax import train
from ltdpt_jax.tools import visualize

import cli_worker
import test_bad_inputs as bad_inputs
import train_utils

MAPS = ('gradcam_pred', 'gradcam_true', 'fr_attention', 'br_attention', 'cls_attention',
        'patch_scores', 'saliency', 'foreground_area')
MAGMA, GRAY = matplotlib.colormaps['magma'], matplotlib.colormaps['gray']
COLOUR_TOLERANCE = 4  # of 255: 8-bit colour tables and alpha blending round
OVERLAY_ALPHA = 0.75  # the maps over the image in grey


@pytest.fixture(autouse=True)
def close_figures():
  yield
  plt.close('all')


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


def _read_jsonl(path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def _png(path) -> np.ndarray:
  """The decoded RGB pixels of a PNG file (or bytes buffer), int (H, W, 3)."""
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB'), np.int64)


def _rendered(fig) -> np.ndarray:
  """The pixels of `fig` saved as `plot._save` saves it; the figure stays drawn for its axes'
  transforms."""
  buf = io.BytesIO()
  fig.savefig(buf, format='png')
  return _png(buf)


def _pixels_at(png: np.ndarray, ax, xy: np.ndarray) -> np.ndarray:
  """The PNG's colours (N, 3) at data points `xy` (N, 2) of `ax` (display origin bottom left)."""
  display = ax.transData.transform(np.asarray(xy, float))
  return png[(png.shape[0] - display[:, 1]).astype(int), display[:, 0].astype(int)]


def _lines(ax) -> dict[str, np.ndarray]:
  return {line.get_label(): line.get_xydata() for line in ax.get_lines()}


def _thresholds(workdir) -> tuple[int, int]:
  return tuple(json.loads((workdir / 'config.json').read_text())['data']['shot_thresholds'])


# ---------------------------------------------------------------------------------------------
# What each figure must show, from the records alone.
# ---------------------------------------------------------------------------------------------

GROUPS = ('tail', 'medium', 'head')


def check_per_class(fig, runs, thresholds) -> None:
  """Per run one dot per class with eval images at (training images, accuracy) (several runs:
  x jittered by at most 4%), and its group accuracies as lines over the groups' bands."""
  ax = fig.axes[0]
  dots = [c for c in ax.collections if isinstance(c, PathCollection)]
  lines = [c for c in ax.collections if isinstance(c, LineCollection)]
  counts = [c['train_count'] for _, r in runs for c in r['per_class']]
  lo, hi = max(min(counts), 1) / 1.5, max(counts) * 1.5
  bands = {'tail': (lo, thresholds[0]), 'medium': tuple(thresholds), 'head': (thresholds[1], hi)}
  bands = {g: (max(a, lo), min(b, hi)) for g, (a, b) in bands.items()}  # within the x axis
  assert len(dots) == len(runs)
  want_lines = []
  for (label, record), dot in zip(runs, dots):
    shown = [c for c in record['per_class'] if c['accuracy'] is not None]
    xy = np.asarray(dot.get_offsets())
    np.testing.assert_array_equal(xy[:, 1], [c['accuracy'] for c in shown])
    jitter = xy[:, 0] / [c['train_count'] for c in shown]
    if len(runs) == 1:
      np.testing.assert_array_equal(jitter, 1.0)
    else:
      assert np.all(np.abs(np.log(jitter)) <= 0.04), jitter
    assert dot.get_label().startswith(f'{label}: top-1 {100 * record["accuracy"]:.1f}%')
    want_lines += [[(a, record[f'{g}_accuracy']), (b, record[f'{g}_accuracy'])]
                   for g, (a, b) in bands.items() if record[f'{g}_accuracy'] is not None and a < b]
  got_lines = [segment for line in lines for segment in line.get_segments()]  # one per group
  np.testing.assert_allclose(np.asarray(got_lines), want_lines, rtol=1e-12)


TRAIN_LINES = {'loss': 'loss', 'GCL part': 'loss_lt', 'orthogonality part': 'loss_orth'}
EVAL_LINES = {'top-1': 'accuracy', 'head': 'head_accuracy', 'medium': 'medium_accuracy',
              'tail': 'tail_accuracy'}


def check_learning_curves(fig, runs) -> None:
  """Per run (prefix 'label: ' when several) the train loss and its parts, the learning rate
  and the eval accuracies, each at every step of the records that has it."""
  loss_ax, lr_ax, eval_ax = fig.axes
  want_loss, want_lr, want_eval = {}, [], {}
  for label, records in runs:
    prefix = f'{label}: ' if len(runs) > 1 else ''
    for ax_want, names, split in ((want_loss, TRAIN_LINES, 'train'),
                                  (want_eval, EVAL_LINES, 'eval')):
      for name, key in names.items():
        pts = [(r['step'], r[key]) for r in records if r.get('split') == split
               and r.get(key) is not None]
        if pts:
          ax_want[prefix + name] = pts
    want_lr.append([(r['step'], r['lr']) for r in records if r.get('split') == 'train'])
  for ax, want in ((loss_ax, want_loss), (eval_ax, want_eval)):
    got = _lines(ax)
    assert sorted(got) == sorted(want)
    for name, pts in want.items():
      np.testing.assert_array_equal(got[name], pts, err_msg=name)
  assert len(lr_ax.get_lines()) == len(runs)
  for line, pts in zip(lr_ax.get_lines(), want_lr):
    np.testing.assert_array_equal(line.get_xydata(), pts)


def expected_confusion(record) -> tuple[np.ndarray, list[str]]:
  """The row-normalised confusion matrix, classes by decreasing training images (ties: label
  order), and the tick labels 'name (training images)'."""
  counts = [c['train_count'] for c in record['per_class']]
  order = sorted(range(len(counts)), key=lambda c: -counts[c])
  m = np.asarray(record['confusion'], float)[np.ix_(order, order)]
  rows = m.sum(1, keepdims=True)
  m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
  return m, [f'{record["per_class"][c]["name"]} ({counts[c]})' for c in order]


def check_confusion(png: np.ndarray, record) -> None:
  """`png` shows `record`'s matrix: every cell's centre has the colour map's colour of its value,
  and the image, the ticks and the title say what was drawn."""
  want, ticks = expected_confusion(record)
  fig = plot.confusion_plot(record)  # where the cells are
  assert _rendered(fig).shape == png.shape
  ax = fig.axes[0]
  np.testing.assert_allclose(ax.images[0].get_array(), want, rtol=1e-12)
  assert [t.get_text() for t in ax.get_xticklabels()] == ticks
  assert [t.get_text() for t in ax.get_yticklabels()] == ticks
  assert ax.get_title() == f'Confusion matrix, step {record["step"]}'
  rows, cols = np.indices(want.shape)
  got = _pixels_at(png, ax, np.stack([cols.ravel(), rows.ravel()], 1))
  colours = 255 * MAGMA(want.ravel())[:, :3]
  np.testing.assert_allclose(got, colours, atol=COLOUR_TOLERANCE)


def _uniform_neighbourhood(mask: np.ndarray) -> np.ndarray:
  """Pixels whose 3 x 3 neighbourhood is all inside or all outside the mask (the outline drawn
  along the mask's edge passes away from their centres)."""
  pad = np.pad(mask, 1, mode='edge')
  h, w = mask.shape
  return np.all([pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == mask
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)


def check_map_panels(png: np.ndarray, fig, images, labels, maps, compare=None, masks=None):
  """Every panel of `visualize`'s grid in `png` shows at each image pixel's centre: the image
  (row 0), or the image in grey under the map in magma at alpha 0.75, scaled to its maximum:
  the saliency (row 1), Grad-CAM of the true (known labels) or predicted class (row 2), FR and
  BR attention (rows 3, 4) and the compared run's Grad-CAM (row 5); a patch map's value covers
  its patch (p x p pixels, row-major). `fig` (the same grid redrawn) gives the panels' places."""
  cam = 'gradcam_true' if (np.asarray(labels) >= 0).all() else 'gradcam_pred'
  rows = [('image', None), ('saliency', maps), (cam, maps), ('fr_attention', maps),
          ('br_attention', maps)] + ([(cam, compare)] if compare is not None else [])
  n, size = images.shape[0], images.shape[1]
  axes = np.asarray(fig.axes).reshape(len(rows), n)
  yy, xx = np.indices((size, size))
  for j in range(n):
    keep = np.ones((size, size), bool) if masks is None else _uniform_neighbourhood(masks[j])
    grey = GRAY(images[j].astype(np.float64).mean(-1) / 255)[..., :3]
    for i, (key, source) in enumerate(rows):
      got = _pixels_at(png, axes[i, j], np.stack([xx[keep], yy[keep]], 1))
      if key == 'image':
        want = images[j][keep]
      else:
        value = np.asarray(source[key][j], np.float64)
        if value.ndim == 1:  # a patch map: row-major over the grid of p x p patches
          g = int(round(np.sqrt(value.size)))
          value = value.reshape(g, g)[yy // (size // g), xx // (size // g)]
        assert value.max() > 0, (key, j)
        want = 255 * (OVERLAY_ALPHA * MAGMA(value / value.max())[..., :3]
                      + (1 - OVERLAY_ALPHA) * grey)[keep]
      np.testing.assert_allclose(got, want, atol=COLOUR_TOLERANCE, err_msg=f'{key}, image {j}')


def reference_maps(workdir, images, labels) -> tuple[visualize.Run, dict[str, np.ndarray]]:
  """The run rebuilt from its workdir and `maps.make_maps_fn`'s arrays for `images`."""
  run = visualize.Run(str(workdir)).load()
  fn = maps_lib.make_maps_fn(run.model, run.image_size)
  out = fn(run.params, jnp.asarray(images), jnp.asarray(np.maximum(labels, 0), jnp.int32),
           jnp.float32(run.config.loss.s))
  return run, {k: np.asarray(v) for k, v in jax.device_get(out).items()}


# ---------------------------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------------------------

def test_a_run_plots_its_records(runs):
  """The plots a training run writes after its evaluation (step 7) show its eval record and
  the metrics written until then (the train record of step 7 follows the plots)."""
  workdir = runs[0]
  record = json.loads((workdir / 'eval_7.json').read_text())
  per_class = plot.per_class_plot([('ltdpt', record)], thresholds=_thresholds(workdir))
  np.testing.assert_array_equal(_png(workdir / 'plots' / 'per_class_accuracy.png'),
                                _rendered(per_class))
  check_per_class(per_class, [('ltdpt', record)], _thresholds(workdir))
  records = _read_jsonl(workdir / 'metrics.jsonl')
  plotted = records[:max(i for i, r in enumerate(records) if r['split'] == 'eval') + 1]
  assert [r['step'] for r in records[len(plotted):] if r['split'] == 'train'] == [7]
  curves = plot.learning_curves_plot([('ltdpt', plotted)])
  np.testing.assert_array_equal(_png(workdir / 'plots' / 'learning_curves.png'),
                                _rendered(curves))
  check_learning_curves(curves, [('ltdpt', plotted)])
  assert set(_lines(curves.axes[0])) == set(TRAIN_LINES)  # fr_br: loss, GCL, orthogonality
  want, _ = expected_confusion(record)
  assert np.abs(want - want.T).max() > 0.1  # a transposed matrix would show
  check_confusion(_png(workdir / 'plots' / 'confusion.png'), record)


def test_a_run_writes_its_attention_shares(runs):
  workdir = runs[0]
  records = _read_jsonl(workdir / 'metrics.jsonl')
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


def test_visualize_compares_two_runs(runs, tmp_path):
  """The command's grid shows `make_maps_fn`'s maps of both runs on the seeded eval sample; its
  statistics are of the same maps."""
  ltdpt, vpt = runs
  out = tmp_path / 'figure1'
  proc = cli_worker.run_cli([sys.executable, '-m', 'ltdpt_jax.tools.visualize',
                             f'--workdir={ltdpt}', f'--compare_workdir={vpt}', '--num_images=4',
                             f'--out={out}'], timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
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
  batch = visualize.sample_eval_images(visualize.Run(str(ltdpt)), 4, 0)
  run, mine = reference_maps(ltdpt, batch['images'], batch['labels'])
  _, theirs = reference_maps(vpt, batch['images'], batch['labels'])
  for key, maps in (('run', mine), ('compare', theirs)):
    assert stats[key]['accuracy'] == pytest.approx(np.mean(maps['prediction'] == batch['labels']))
  fig = plot.maps_plot(batch['images'], batch['labels'], mine, run.class_names, compare=theirs,
                       names=('fr_br (ltdpt)', 'vpt (vpt)'), image_size=run.image_size,
                       masks=batch['masks'])
  png = _png(out / 'maps.png')
  assert png.shape == _rendered(fig).shape
  assert png.shape[1::-1] == plot.figure_pixels(plot.maps_size(4, 6))
  check_map_panels(png, fig, batch['images'], batch['labels'], mine, theirs, batch['masks'])


def test_visualize_on_image_files(runs, tmp_path):
  """Unlabelled files: Grad-CAM of the prediction, shares against the top-25% salient patches;
  the grid shows the files' images and their maps."""
  folder = tmp_path / 'photos'
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), np.uint8)).save(folder / f'{i}.png')
  stats = visualize.run_visualize(str(runs[0]), str(tmp_path / 'out'), images=[str(folder)])
  s = stats['run']
  assert stats['num_images'] == 3 and s['reference'] == 'top 25% salient patches'
  assert 'gradcam_true' not in s['overall'] and s['accuracy'] is None
  run = visualize.Run(str(runs[0]))
  batch = visualize.load_images([str(folder)], run)
  assert [p.rsplit('/', 1)[-1] for p in batch['paths']] == ['0.png', '1.png', '2.png']
  run, mine = reference_maps(runs[0], batch['images'], batch['labels'])
  fig = plot.maps_plot(batch['images'], batch['labels'], mine, run.class_names,
                       names=('fr_br (ltdpt)', None), image_size=run.image_size)
  png = _png(tmp_path / 'out' / 'maps.png')
  assert png.shape == _rendered(fig).shape
  assert png.shape[1::-1] == plot.figure_pixels(plot.maps_size(3, 5))
  check_map_panels(png, fig, batch['images'], batch['labels'], mine)


def test_visualize_bad_input_is_one_line(runs, tmp_path, monkeypatch):
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
  with pytest.raises(predict_lib.PredictError, match='holds no run'):
    visualize.run_visualize(str(tmp_path / 'none'), str(tmp_path / 'out'))
  # Through the command: one line, exit code 2 (the same PredictError path for every case).
  command = [sys.executable, '-m', 'ltdpt_jax.tools.visualize', f'--out={tmp_path / "o"}',
             f'--workdir={runs[0]}', f'--compare_workdir={renamed}']
  bad_inputs.only_error_line(cli_worker.run_cli(command, timeout=120),
                             'renamed is a run of other classes')
  assert not (tmp_path / 'o').exists()


def test_plot_command_overlays_runs(runs, tmp_path):
  """Two runs overlaid: each run's classes and curves, drawn from its own records."""
  out = tmp_path / 'compare'
  proc = cli_worker.run_cli([sys.executable, '-m', 'ltdpt_jax.tools.plot', f'--workdir={runs[0]}',
                             str(runs[1]), f'--out={out}'], timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  evals = [(w.name, json.loads((w / 'eval_7.json').read_text())) for w in runs]
  per_class = plot.per_class_plot(evals, thresholds=_thresholds(runs[0]))
  np.testing.assert_array_equal(_png(out / 'per_class_accuracy.png'), _rendered(per_class))
  check_per_class(per_class, evals, _thresholds(runs[0]))
  metrics = [(w.name, _read_jsonl(w / 'metrics.jsonl')) for w in runs]
  curves = plot.learning_curves_plot(metrics)
  np.testing.assert_array_equal(_png(out / 'learning_curves.png'), _rendered(curves))
  check_learning_curves(curves, metrics)
  assert 'vpt: loss' in _lines(curves.axes[0]) and 'vpt: GCL part' in _lines(curves.axes[0])
  assert not (out / 'confusion.png').exists()
  proc = cli_worker.run_cli([sys.executable, '-m', 'ltdpt_jax.tools.plot',
                             f'--workdir={tmp_path / "x"}'], timeout=120)
  cli_worker.one_error_line(proc, 2, 'is not a directory')


def test_plots_of_a_single_class_and_empty_groups(tmp_path):
  record = {'step': 3, 'accuracy': 0.5, 'head_accuracy': None, 'medium_accuracy': None,
            'tail_accuracy': 0.5, 'confusion': [[1, 1], [0, 0]],
            'per_class': [{'name': 'a', 'train_count': 5, 'eval_count': 2, 'accuracy': 0.5,
                           'group': 'tail'},
                          {'name': 'b', 'train_count': 3, 'eval_count': 0, 'accuracy': None,
                           'group': 'tail'}]}
  path = plot.per_class_figure([('run', record)], str(tmp_path / 'one.png'))
  fig = plot.per_class_plot([('run', record)])
  np.testing.assert_array_equal(_png(path), _rendered(fig))
  check_per_class(fig, [('run', record)], (20, 100))
  assert fig.axes[0].collections[0].get_label().endswith('(1 class(es) without eval images)')
  assert fig.axes[0].get_title().endswith('\nmedium, head: n/a (no class in the group)')
  check_confusion(_png(plot.confusion_figure(record, str(tmp_path / 'confusion.png'))), record)
  single = dict(record, per_class=record['per_class'][:1], confusion=[[2]])
  fig = plot.per_class_plot([('run', single)])
  np.testing.assert_array_equal(_png(plot.per_class_figure([('run', single)],
                                                          str(tmp_path / 'single.png'))),
                                _rendered(fig))
  check_per_class(fig, [('run', single)], (20, 100))
  records = [{'step': 1, 'split': 'train', 'loss': 1.0}]
  fig = plot.learning_curves_plot([('run', records)])
  np.testing.assert_array_equal(
      _png(plot.learning_curves_figure([('run', records)], str(tmp_path / 'curves.png'))),
      _rendered(fig))
  assert _lines(fig.axes[0]).keys() == {'loss'} and not fig.axes[1].get_lines()
  np.testing.assert_array_equal(_lines(fig.axes[0])['loss'], [(1, 1.0)])


def test_confusion_cells_show_the_row_normalised_matrix_most_frequent_first(tmp_path):
  """Classes reordered by training images (b 30, c 10, a 5), rows normalised (an empty row stays
  0): each cell's colour is magma of its own value, so a transposed, unordered or shifted
  matrix fails."""
  record = {'step': 9, 'confusion': [[5, 1, 0], [2, 2, 4], [0, 0, 0]],
            'per_class': [{'name': 'a', 'train_count': 5}, {'name': 'b', 'train_count': 30},
                          {'name': 'c', 'train_count': 10}]}
  want, ticks = expected_confusion(record)
  np.testing.assert_allclose(want, [[0.25, 0.5, 0.25], [0, 0, 0], [1 / 6, 0, 5 / 6]])
  assert ticks == ['b (30)', 'c (10)', 'a (5)']
  png = _png(plot.confusion_figure(record, str(tmp_path / 'confusion.png')))
  assert png.shape[1::-1] == plot.figure_pixels(plot.confusion_size(3))
  check_confusion(png, record)
