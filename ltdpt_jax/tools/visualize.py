r"""Figure 1 as a command: where a trained run looks, as pictures and as numbers.

  python -m ltdpt_jax.tools.visualize --workdir=runs/demo --out=runs/demo/maps
  python -m ltdpt_jax.tools.visualize --workdir=runs/ltdpt --compare_workdir=runs/vpt --out=fig1
  python -m ltdpt_jax.tools.visualize --workdir=RUN --images=photos/ a.jpg list.txt --out=DIR

`run_visualize` writes `<out>/maps.png` (`plot.figure_maps`) and `<out>/attention_stats.json`
(the foreground shares of the maps, `statistics`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app
from absl import flags
from absl import logging

from ltdpt_jax import cli
from ltdpt_jax import maps as maps_lib
from ltdpt_jax import metrics as metrics_lib
from ltdpt_jax import optim
from ltdpt_jax import plot as plot_lib
from ltdpt_jax.data import files
from ltdpt_jax.data import transforms
from ltdpt_jax.evaluators import longtail
from ltdpt_jax.tools import predict as predict_lib

def define_flags() -> None:
  """The command's flags (defined when it runs: this module imports `predict` and `plot`)."""
  flags.DEFINE_string('workdir', None, 'The trained run to look inside.')
  flags.DEFINE_string('compare_workdir', None, 'Another run of the same classes and image size '
                      '(e.g. method=vpt): its Grad-CAM row and statistics are added.')
  flags.DEFINE_integer('checkpoint_step', None, 'The checkpoint (default: the latest).')
  flags.DEFINE_multi_string('images', None, 'Images, directories or list files (default: a '
                            'sample of the eval split).')
  flags.DEFINE_integer('num_images', 8, 'How many eval images (without --images).')
  flags.DEFINE_integer('seed', 0, 'Seed of the eval-image sample.')
  flags.DEFINE_string('out', None, 'The output directory.')


class Run:
  """A trained run: its records (`predict.read_run`: config, classes, image size) at once, its
  model and checkpoint on `load` (`predict.Predictor`), and its maps (`maps.make_maps_fn`)."""

  def __init__(self, workdir: str, step: int | None = None):
    self.workdir = workdir
    self.record = predict_lib.read_run(workdir, step)
    self.config, self.step = self.record.config, self.record.step
    self.class_names, self.image_size = self.record.class_names, self.record.image_size
    self.predictor = self.params = self.model = None

  def load(self) -> 'Run':
    """Builds the model and restores the checkpoint (seconds; once the inputs are known)."""
    self.predictor = predict_lib.Predictor.from_record(self.record)
    setup = self.predictor.setup
    self.params = optim.merge_params(self.predictor.params, setup.frozen)
    self.model = setup.model
    return self

  @property
  def patch_size(self) -> int:
    return self.model.arch.patch_size[0]

  def maps(self, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    return maps_lib.compute(self.model, self.params, images, np.maximum(labels, 0),
                            image_size=self.image_size, scale=float(self.config.loss.s),
                            batch_size=int(self.config.data.eval_batch_size))

  def groups(self) -> dict[str, np.ndarray]:
    tail_max, head_min = self.config.data.get('shot_thresholds',
                                              (longtail.TAIL_MAX, longtail.HEAD_MIN))
    return longtail.shot_groups(self.record.info.class_counts, tail_max=int(tail_max),
                                head_min=int(head_min))


def sample_eval_images(run: Run, num: int, seed: int) -> dict[str, Any]:
  """`maps.sample_eval_images` of the run's eval split and groups."""
  return maps_lib.sample_eval_images(run.config.data, run.groups(), num, seed,
                                     image_size=run.image_size)


def load_images(paths: Sequence[str], run: Run) -> dict[str, Any]:
  """Images given by PATHs (labelled when in class folders or labelled lists; else -1)."""
  image_paths, labels = predict_lib.resolve_inputs(paths, run.class_names)
  predict_lib.check_files(image_paths)
  images = np.stack([transforms.eval_transform_image(files.open_image(p)[0], run.image_size)
                     for p in image_paths])
  labels = np.full(len(images), -1) if labels is None else np.asarray(labels)
  return {'images': images, 'labels': labels, 'masks': None, 'paths': image_paths}


def statistics(run: Run, maps: dict[str, np.ndarray], labels: np.ndarray,
               masks: np.ndarray | None) -> dict[str, Any]:
  """The foreground shares of `run`'s maps: per group means (see `maps.share_stats`).

  The mean share of each map's mass on the object (`maps.shares`) of Grad-CAM, FR / BR / CLS
  attention and S, overall and per head / medium / tail group, with the reference used (object
  masks of the synthetic data, else the top 25% most salient patches) and the reference's own
  area (what a map spread evenly would score).
  """
  per_image, reference = maps_lib.shares(maps, patch_size=run.patch_size, masks=masks)
  if (labels < 0).all():  # no true classes: the true-class Grad-CAM is the predicted one's
    per_image.pop('gradcam_true', None)
  known = labels >= 0
  groups = run.groups() if known.all() else {}
  return {'workdir': run.workdir, 'step': run.step,
          'method': run.config.model.method, 'reference': reference,
          'accuracy': float(np.mean(maps['prediction'][known] == labels[known]))
          if known.any() else None,
          **maps_lib.share_stats(per_image, labels, groups)}


def run_visualize(workdir: str, out: str, *, compare_workdir: str | None = None,
                  images: Sequence[str] | None = None, num_images: int = 8, seed: int = 0,
                  step: int | None = None) -> dict[str, Any]:
  """What the command does; returns the attention statistics it writes.

  `<out>/maps.png`: one column per image; rows = the image, its spectral-residual saliency,
  Grad-CAM (of the true class when known, else of the predicted one), the FR and the BR prompts'
  attention, and with `compare_workdir` the other run's Grad-CAM (as in the paper's Figure 1,
  e.g. a `method=vpt` run against an LT-DPT run); column titles give the true class and each
  run's prediction and probability; the object's outline is drawn where it is known (synthetic
  data). `<out>/attention_stats.json`: `statistics` of this run and of the compared one.
  Without `images` the images are a fixed, seeded sample of the run's evaluation split, spread
  over its head, medium and tail classes (the run's dataset must be readable here); with
  `images`, PATHs as `tools.predict` takes them. The runs are rebuilt from their workdirs alone
  (`predict.Predictor.from_record`), once the runs' records and the images have been checked;
  all maps come from one jitted program per run.
  """
  run = Run(workdir, step)
  other = Run(compare_workdir) if compare_workdir else None
  if other is not None and (other.image_size != run.image_size
                            or other.class_names != run.class_names):
    raise predict_lib.PredictError(
        f'--compare_workdir={compare_workdir} is a run of other classes or image size '
        f'({len(other.class_names)} classes, {other.image_size} px) than --workdir={workdir} '
        f'({len(run.class_names)} classes, {run.image_size} px): compare runs of one dataset.')
  batch = load_images(images, run) if images else sample_eval_images(run, num_images, seed)
  run.load()
  if other is not None:
    other.load()
  mine = run.maps(batch['images'], batch['labels'])
  theirs = other.maps(batch['images'], batch['labels']) if other is not None else None
  os.makedirs(out, exist_ok=True)
  stats = {'num_images': int(len(batch['images'])),
           'maps': {k: v for k, v in maps_lib.PATCH_MAPS.items()},
           'run': statistics(run, mine, batch['labels'], batch['masks'])}
  if theirs is not None:
    stats['compare'] = statistics(other, theirs, batch['labels'], batch['masks'])
  metrics_lib.write_json(os.path.join(out, 'attention_stats.json'), stats)
  plot_lib.figure_maps(os.path.join(out, 'maps.png'), batch['images'], batch['labels'], mine,
                       run.class_names, compare=theirs,
                       names=(_run_name(run), _run_name(other) if other else None),
                       image_size=run.image_size, masks=batch['masks'])
  _log_stats(stats)
  return stats


def _run_name(run: Run) -> str:
  return f'{run.config.model.method} ({os.path.basename(os.path.normpath(run.workdir))})'


def _log_stats(stats: dict[str, Any]) -> None:
  for key in ('run', 'compare'):
    if key not in stats:
      continue
    s = stats[key]['overall']
    shown = ', '.join(f'{name} {s[name]:.2f}' for name in
                      ('gradcam_pred', 'fr_attention', 'br_attention', 'cls_attention',
                       'patch_scores', 'foreground_area') if s.get(name) is not None)
    logging.info('%s (%s): foreground share (%s) %s', stats[key]['workdir'],
                 stats[key]['method'], stats[key]['reference'], shown)


def main(argv: Sequence[str]) -> None:
  predict_lib.start(argv)
  f = flags.FLAGS
  paths = list(f.images or []) + list(argv[1:])
  try:
    if not f.workdir or not f.out:
      raise predict_lib.PredictError('pass --workdir=RUN and --out=DIR.')
    run_visualize(f.workdir, f.out, compare_workdir=f.compare_workdir, images=paths or None,
                  num_images=f.num_images, seed=f.seed, step=f.checkpoint_step)
  except (predict_lib.PredictError, files.DataError, ValueError, FileNotFoundError) as e:
    cli.fail(str(e), cli.EXIT_BAD_INPUT)
  logging.info('Wrote %s and %s.', os.path.join(f.out, 'maps.png'),
               os.path.join(f.out, 'attention_stats.json'))


def run() -> None:
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
