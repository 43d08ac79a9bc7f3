r"""Pictures of runs: per-class accuracy against training frequency, learning curves, confusion.

  python -m ltdpt_jax.tools.plot --workdir=runs/demo                    # -> runs/demo/plots/
  python -m ltdpt_jax.tools.plot --workdir=runs/ltdpt runs/vpt --out=plots_compare   # overlaid

`plot_run` draws the figures of one run, `plot_runs` overlays several; `figure_maps` is the
map grid of `tools.visualize`. Each `*_figure` saves the matplotlib Figure its `*_plot` returns
(what the tests read back). Everything uses matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging
from etils import epath

# Okabe-Ito (colour-blind safe), in order of decreasing contrast on white; with distinct markers
# and line styles, so that figures survive greyscale printing. Text is 10-11 pt at DPI.
COLORS = ('#000000', '#E69F00', '#0072B2', '#009E73', '#D55E00', '#CC79A7', '#56B4E9')
MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X')
LINESTYLES = ('-', '--', ':', '-.')
GROUP_SHADES = {'tail': '0.93', 'medium': '0.85', 'head': '0.77'}  # grey levels, print-safe
MAP_CMAP = 'magma'  # perceptually uniform; its lightness rises monotonically (greyscale-safe)
MAX_CONFUSION_CLASSES = 100
DPI = 100


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg', force=True)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.rcParams.update({'font.size': 10, 'axes.titlesize': 11, 'axes.labelsize': 10,
                       'legend.fontsize': 9, 'figure.dpi': DPI, 'savefig.dpi': DPI})
  return plt


def _save(fig, path: str) -> str:
  """Saves a figure (local or gs:// path) at exactly its size (`figure_pixels`) and closes it."""
  import io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  fig.savefig(buf, format='png')
  _pyplot().close(fig)
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_bytes(buf.getvalue())
  return str(target)


# Figure sizes in inches (at DPI pixels per inch): the PNGs are exactly these sizes.
PER_CLASS_SIZE = (7.5, 4.5)
CURVES_SIZE = (13.0, 3.8)


def confusion_size(num_classes: int) -> tuple[float, float]:
  side = min(12.0, max(4.5, 0.28 * num_classes + 2.5))
  return side + 1.2, side


def maps_size(num_images: int, num_rows: int) -> tuple[float, float]:
  return 1.75 * num_images + 1.3, 1.75 * num_rows + 0.9


def figure_pixels(size_inches: tuple[float, float]) -> tuple[int, int]:
  """(width, height) in pixels of a figure of `size_inches`."""
  return int(round(size_inches[0] * DPI)), int(round(size_inches[1] * DPI))


# ---------------------------------------------------------------------------------------------
# What a run left: eval records and metrics.
# ---------------------------------------------------------------------------------------------

def latest_eval(workdir: str, name: str = 'eval') -> dict[str, Any] | None:
  """The `<name>_<step>.json` record of the highest step in `workdir` (None if none)."""
  pattern = re.compile(rf'^{re.escape(name)}_(\d+)\.json$')
  steps = []
  for p in epath.Path(workdir).iterdir() if epath.Path(workdir).is_dir() else []:
    m = pattern.match(p.name)
    if m:
      steps.append((int(m.group(1)), p))
  if not steps:
    return None
  return json.loads(max(steps)[1].read_text())


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of `<workdir>/metrics.jsonl` (lines that do not parse are skipped)."""
  path = epath.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      out.append(json.loads(line))
    except ValueError:
      continue
  return out


def _thresholds(workdir: str) -> tuple[int, int]:
  config = epath.Path(workdir) / 'config.json'
  if config.exists():
    data = json.loads(config.read_text()).get('data', {})
    if data.get('shot_thresholds'):
      return tuple(int(t) for t in data['shot_thresholds'])
  return 20, 100


def _label(workdir: str) -> str:
  return os.path.basename(os.path.normpath(str(workdir))) or str(workdir)


# ---------------------------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------------------------

def per_class_figure(runs: Sequence[tuple[str, dict[str, Any]]], path: str, *,
                     thresholds: tuple[int, int] = (20, 100)) -> str:
  """`per_class_plot` saved to `path` (a PNG of PER_CLASS_SIZE); returns the path."""
  return _save(per_class_plot(runs, thresholds=thresholds), path)


def per_class_plot(runs: Sequence[tuple[str, dict[str, Any]]], *,
                   thresholds: tuple[int, int] = (20, 100)):
  """Accuracy per class against training images; runs = [(label, eval record with 'per_class')].

  One dot per class against its training images (log x axis), the head / medium / tail bands
  shaded (`thresholds` = (tail_max, head_min)), and each run's sample-weighted group accuracy as
  a line over its band. Classes without evaluation images (accuracy n/a) are left out and counted
  in the legend; empty groups are labelled n/a.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=PER_CLASS_SIZE)
  tail_max, head_min = thresholds
  counts_all = [c['train_count'] for _, r in runs for c in r['per_class']]
  lo, hi = max(min(counts_all), 1) / 1.5, max(counts_all) * 1.5
  bands = {'tail': (lo, tail_max), 'medium': (tail_max, head_min), 'head': (head_min, hi)}
  for group, (a, b) in bands.items():
    a, b = max(a, lo), min(b, hi)
    if a < b:
      ax.axvspan(a, b, color=GROUP_SHADES[group], zorder=0, lw=0)
      ax.text(math.sqrt(a * b), 0.985, group, ha='center', va='top', fontsize=9,
              transform=ax.get_xaxis_transform(), color='0.25')
  for i, (label, record) in enumerate(runs):
    color, marker = COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)]
    rows = [c for c in record['per_class'] if c['accuracy'] is not None]
    missing = len(record['per_class']) - len(rows)
    x = np.array([c['train_count'] for c in rows], float)
    y = np.array([c['accuracy'] for c in rows], float)
    jitter = np.exp(np.random.default_rng(i).uniform(-0.04, 0.04, len(x))) if len(runs) > 1 else 1
    ax.scatter(x * jitter, y, s=22, color=color, marker=marker, edgecolor='white', lw=0.5,
               zorder=3, label=f'{label}: top-1 {100 * record["accuracy"]:.1f}%'
               + (f' ({missing} class(es) without eval images)' if missing else ''))
    for group, (a, b) in bands.items():
      acc = record.get(f'{group}_accuracy')
      a, b = max(a, lo), min(b, hi)
      if acc is None or a >= b:  # an empty group: n/a, in the title
        continue
      ax.hlines(acc, a, b, color=color, linestyle=LINESTYLES[i % len(LINESTYLES)], lw=2,
                zorder=2)
  ax.set_xscale('log')
  ax.set_xlim(lo, hi)
  ax.set_ylim(-0.03, 1.03)
  ax.set_xlabel('training images of the class (log scale)')
  ax.set_ylabel('accuracy')
  empty = [g for g in bands if all(r.get(f'{g}_accuracy') is None for _, r in runs)]
  ax.set_title('Per-class accuracy against training frequency (lines: group accuracy)'
               + (f'\n{", ".join(empty)}: n/a (no class in the group)' if empty else ''))
  ax.legend(loc='lower right', frameon=True)
  ax.grid(True, which='major', axis='y', color='0.6', lw=0.5, alpha=0.6)
  fig.tight_layout()
  return fig


_TRAIN_CURVES = (('loss', 'loss'), ('loss_lt', 'GCL part'), ('loss_orth', 'orthogonality part'))
_EVAL_CURVES = (('accuracy', 'top-1'), ('head_accuracy', 'head'),
                ('medium_accuracy', 'medium'), ('tail_accuracy', 'tail'))


def learning_curves_figure(runs: Sequence[tuple[str, list[dict[str, Any]]]], path: str) -> str:
  """`learning_curves_plot` saved to `path` (a PNG of CURVES_SIZE); returns the path."""
  return _save(learning_curves_plot(runs), path)


def learning_curves_plot(runs: Sequence[tuple[str, list[dict[str, Any]]]]):
  """Train loss (+ GCL and orthogonality parts), learning rate, eval accuracies: runs = [(label,
  metrics.jsonl records)]."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 3, figsize=CURVES_SIZE)
  for i, (label, records) in enumerate(runs):
    color = COLORS[i % len(COLORS)]
    train = [r for r in records if r.get('split') == 'train']
    evals = [r for r in records if r.get('split') == 'eval']
    prefix = f'{label}: ' if len(runs) > 1 else ''
    for j, (key, name) in enumerate(_TRAIN_CURVES):
      pts = [(r['step'], r[key]) for r in train if r.get(key) is not None]
      if pts:
        axes[0].plot(*zip(*pts), color=color if len(runs) > 1 else COLORS[j],
                     linestyle=LINESTYLES[j], lw=1.5, label=prefix + name)
    pts = [(r['step'], r['lr']) for r in train if r.get('lr') is not None]
    if pts:
      axes[1].plot(*zip(*pts), color=color, lw=1.5, label=label if len(runs) > 1 else None)
    for j, (key, name) in enumerate(_EVAL_CURVES):
      pts = [(r['step'], r[key]) for r in evals if r.get(key) is not None]
      if pts:
        axes[2].plot(*zip(*pts), color=color if len(runs) > 1 else COLORS[j],
                     linestyle=LINESTYLES[j], marker=MARKERS[j], ms=4, lw=1.5,
                     label=prefix + name)
  axes[0].set(title='training loss', xlabel='step', ylabel='loss')
  axes[1].set(title='learning rate', xlabel='step', ylabel='lr')
  axes[2].set(title='evaluation accuracy', xlabel='step', ylabel='accuracy', ylim=(-0.03, 1.03))
  for ax in axes:
    ax.grid(True, color='0.6', lw=0.5, alpha=0.6)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(frameon=True)
  fig.tight_layout()
  return fig


def confusion_figure(record: dict[str, Any], path: str) -> str:
  """`confusion_plot` saved to `path` (a PNG of `confusion_size`); returns the path."""
  return _save(confusion_plot(record), path)


def confusion_plot(record: dict[str, Any]):
  """The record's confusion matrix, classes ordered by training frequency, row-normalised."""
  plt = _pyplot()
  confusion = np.asarray(record['confusion'], float)
  counts = np.asarray([c['train_count'] for c in record['per_class']])
  names = [c['name'] for c in record['per_class']]
  order = np.argsort(-counts, kind='stable')
  m = confusion[np.ix_(order, order)]
  with np.errstate(invalid='ignore', divide='ignore'):
    m = np.where(m.sum(1, keepdims=True) > 0, m / m.sum(1, keepdims=True), 0.0)
  n = len(order)
  fig, ax = plt.subplots(figsize=confusion_size(n))
  im = ax.imshow(m, cmap=MAP_CMAP, vmin=0, vmax=1, interpolation='nearest')
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label='fraction of the true class')
  if n <= 40:
    ticks = [f'{names[c]} ({counts[c]})' for c in order]
    ax.set_xticks(range(n), ticks, rotation=90, fontsize=8)
    ax.set_yticks(range(n), ticks, fontsize=8)
  ax.set_xlabel('predicted class (most frequent first)')
  ax.set_ylabel('true class (training images)')
  ax.set_title(f'Confusion matrix, step {record.get("step", "?")}')
  fig.tight_layout()
  return fig


def figure_maps(path: str, images: np.ndarray, labels: np.ndarray, maps: Mapping[str, Any],
                class_names: Sequence[str], **kwargs) -> str:
  """`maps_plot` (same arguments) saved to `path` (a PNG of `maps_size`); returns the path."""
  return _save(maps_plot(images, labels, maps, class_names, **kwargs), path)


def maps_plot(images: np.ndarray, labels: np.ndarray, maps: Mapping[str, Any],
              class_names: Sequence[str], *, compare: Mapping[str, Any] | None = None,
              names: tuple[str, str | None] = ('run', None), image_size: int,
              masks: np.ndarray | None = None):
  """`visualize`'s grid: a column per image; rows image, saliency, Grad-CAM, FR and BR
  attention (+ the compared run's Grad-CAM). Each map (scaled to its maximum) is drawn in
  `MAP_CMAP` over the image in grey; with `masks`, the object's outline in white."""
  plt = _pyplot()
  labels = np.asarray(labels)
  known = (labels >= 0).all()
  cam = 'gradcam_true' if known else 'gradcam_pred'
  cam_name = 'Grad-CAM (true class)' if known else 'Grad-CAM (predicted)'
  rows = [('image', None), ('saliency', 'saliency (spectral residual)'),
          (cam, f'{cam_name}\n{names[0]}'), ('fr_attention', 'FR-prompt attention'),
          ('br_attention', 'BR-prompt attention')]
  if compare is not None:
    rows.append(('compare', f'{cam_name}\n{names[1]}'))
  n = len(images)
  fig, axes = plt.subplots(len(rows), n, figsize=maps_size(n, len(rows)), squeeze=False)

  def upsample(patch_map):
    g = int(round(math.sqrt(len(patch_map))))
    grid = np.asarray(patch_map, float).reshape(g, g)
    return np.kron(grid, np.ones((image_size // g, image_size // g)))

  for j in range(n):
    for i, (key, title) in enumerate(rows):
      ax = axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      if key == 'image':
        ax.imshow(images[j])
      else:
        ax.imshow(images[j].astype(np.float32).mean(-1), cmap='gray', vmin=0, vmax=255)
      if key != 'image':
        source = compare if key == 'compare' else maps
        value = source[cam if key == 'compare' else key][j]
        if key != 'saliency':
          value = upsample(value)
        top = float(np.max(value))
        if key == 'br_attention' and top == 0.0:
          ax.text(0.5, 0.5, 'no BR\nprompts', ha='center', va='center', fontsize=9,
                  color='white', transform=ax.transAxes,
                  bbox={'facecolor': 'black', 'alpha': 0.6, 'lw': 0})
        else:
          ax.imshow(value / top if top > 0 else value, cmap=MAP_CMAP, alpha=0.75, vmin=0,
                    vmax=1)
      if masks is not None:
        ax.contour(masks[j].astype(float), levels=[0.5], colors='white', linewidths=1.0)
      if j == 0:
        ax.set_ylabel(title or 'image', fontsize=9)
    truth = class_names[labels[j]] if labels[j] >= 0 else '?'
    pred = int(maps['prediction'][j])
    title = f'true: {truth}\n{names[0].split(" ")[0]}: {class_names[pred]} ' \
            f'{maps["probabilities"][j][pred]:.2f}'
    if compare is not None:
      other = int(compare['prediction'][j])
      title += f'\n{names[1].split(" ")[0]}: {class_names[other]} ' \
               f'{compare["probabilities"][j][other]:.2f}'
    axes[0, j].set_title(title, fontsize=8)
  fig.tight_layout()
  return fig


# ---------------------------------------------------------------------------------------------
# A run, several runs.
# ---------------------------------------------------------------------------------------------

def plot_run(workdir: str, out: str | None = None) -> list[str]:
  """Every figure of one run into `out` (default `<workdir>/plots/`); returns the paths.

  What a training run calls after each evaluation (`config.train.plots`, on by default):
  `per_class_accuracy.png` (latest `eval_<step>.json`, `per_class_figure`),
  `learning_curves.png` (`metrics.jsonl`, `learning_curves_figure`) and, for runs of up to
  MAX_CONFUSION_CLASSES classes, `confusion.png` (`confusion_figure`).
  """
  out = out or str(epath.Path(workdir) / 'plots')
  written = []
  record = latest_eval(workdir)
  if record is not None and record.get('per_class'):
    written.append(per_class_figure([(_label(workdir), record)],
                                    os.path.join(out, 'per_class_accuracy.png'),
                                    thresholds=_thresholds(workdir)))
    if record.get('confusion') is not None and len(record['per_class']) <= MAX_CONFUSION_CLASSES:
      written.append(confusion_figure(record, os.path.join(out, 'confusion.png')))
  records = read_metrics(workdir)
  if records:
    written.append(learning_curves_figure([(_label(workdir), records)],
                                          os.path.join(out, 'learning_curves.png')))
  return written


def plot_runs(workdirs: Sequence[str], out: str) -> list[str]:
  """Several runs overlaid in one figure of each kind (per-class accuracy, learning curves; no
  confusion matrix); returns the paths."""
  if len(workdirs) == 1:
    return plot_run(workdirs[0], out)
  evals = [(_label(w), latest_eval(w)) for w in workdirs]
  missing = [w for w, (_, r) in zip(workdirs, evals) if r is None or not r.get('per_class')]
  if missing:
    raise ValueError(f'no eval_<step>.json with per-class records in {missing}: evaluate the '
                     'run first (python -m ltdpt_jax.main --mode=eval --workdir=...).')
  written = [per_class_figure(evals, os.path.join(out, 'per_class_accuracy.png'),
                              thresholds=_thresholds(workdirs[0])),
             learning_curves_figure([(_label(w), read_metrics(w)) for w in workdirs],
                                    os.path.join(out, 'learning_curves.png'))]
  return written


def plot_run_or_warn(workdir: str) -> None:
  """`plot_run` for the train loop: a figure that cannot be drawn is a warning, never the end of
  a run."""
  try:
    plot_run(workdir)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('Plots of %s not drawn: %s: %s', workdir, type(e).__name__, e)
