"""Where the prompts look, measured during training: foreground shares of the model's maps.

`Evaluator` computes the maps of `ltdpt_jax.maps` (Grad-CAM, FR / BR / CLS attention, saliency S)
on a fixed sample of eval images and the mean share of each map's mass on the object, overall and
per head / medium / tail group, so where the prompts look is plotted with the learning curves.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from absl import logging

from ltdpt_jax import maps as maps_lib
from ltdpt_jax import metrics as metrics_lib
from ltdpt_jax import optim
from ltdpt_jax.evaluators import longtail


class Evaluator:
  """Foreground shares of the maps on a fixed sample of eval images.

  Added by `--config.train.attention_stats=True` (name 'attention', at every evaluation, its
  defaults), or listed in `config.evals`, e.g. `c.evals.attention = ml_collections.ConfigDict(
  dict(type='attention', every_epochs=5, num_images=128))`. The sample is seeded and spread over
  head, medium and tail classes (`maps.sample_eval_images`). The foreground share is the fraction
  of each map's mass on the object: the synthetic dataset's object masks, otherwise the top 25%
  most salient patches. The record goes to `<workdir>/<name>_<step>.json`; its scalars (`<map>`
  overall, `<group>_<map>` per group) to `metrics.jsonl` and TensorBoard.

  Args (as every evaluator, `evaluators.common`): predict_fn (unused: the maps need the model
  itself), name, frozen, mesh, data, info, workdir; and `model` (the LTDPT module), `scale`
  (config.loss.s, for the probabilities), `num_images` (64), `seed` (0).
  """

  needs_model = True

  def __init__(self, predict_fn: Callable[..., Any] | None = None, *, name: str, frozen: Any,
               mesh, data, info, workdir: str | None = None, model=None, scale: float = 25.0,
               num_images: int = 64, seed: int = 0):
    del predict_fn, mesh
    if model is None:
      raise ValueError(f"config.evals.{name} (type 'attention') needs the model.")
    self.name, self.frozen, self.data, self.info, self.workdir = name, frozen, data, info, workdir
    self.model, self.scale = model, float(scale)
    tail_max, head_min = data.get('shot_thresholds', (longtail.TAIL_MAX, longtail.HEAD_MIN))
    self.groups = longtail.shot_groups(info.class_counts, tail_max=int(tail_max),
                                       head_min=int(head_min))
    self.sample = maps_lib.sample_eval_images(data, self.groups, int(num_images), int(seed),
                                              image_size=int(data.image_size))

  def run(self, trainable: Any, *, step: int, epoch: int) -> dict[str, Any]:
    params = optim.merge_params(trainable, self.frozen)
    maps = maps_lib.compute(self.model, params, self.sample['images'], self.sample['labels'],
                            image_size=int(self.data.image_size), scale=self.scale,
                            batch_size=int(self.data.eval_batch_size))
    per_image, reference = maps_lib.shares(maps, patch_size=self.model.arch.patch_size[0],
                                           masks=self.sample['masks'])
    stats = maps_lib.share_stats(per_image, self.sample['labels'], self.groups)
    record: dict[str, Any] = {'step': int(step), 'epoch': int(epoch), 'reference': reference,
                              'num_images': int(len(self.sample['labels']))}
    for key, value in stats['overall'].items():
      if key != 'num_images':
        record[key] = value
    for group in longtail.GROUPS:
      for key, value in (stats.get(group) or {}).items():
        if key != 'num_images':
          record[f'{group}_{key}'] = value
    if self.workdir is not None:
      metrics_lib.write_json(os.path.join(self.workdir, f'{self.name}_{step}.json'), record)
    shown = ', '.join(f'{k} {record[k]:.2f}' for k in
                      ('fr_attention', 'br_attention', 'gradcam_true', 'foreground_area')
                      if record.get(k) is not None)
    logging.info('[%s step %d] foreground share (%s): %s', self.name, step, reference, shown)
    return record
