r"""Pretraining a ViT backbone, written as an official vision_transformer `.npz`.

  python -m ltdpt_jax.tools.pretrain --config=configs/pretrain_synthetic.py \
      --workdir=runs/pretrain --out=ltdpt_jax/assets/vit_demo.npz

An ordinary training run (`train.train_and_evaluate`, config.model.method 'pretrain'), then
`export_npz` writes the weights under the official keys and `run` a `.json` beside them (SHA-256,
command, config, final evaluation, reference logits). `--workdir` defaults to
`<out without .npz>_pretrain/`.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import sys
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ltdpt_jax import checkpoint as ckpt_lib
from ltdpt_jax import cli
from ltdpt_jax import data as data_lib
from ltdpt_jax import fetch
from ltdpt_jax import metrics as metrics_lib
from ltdpt_jax import models
from ltdpt_jax import train
from ltdpt_jax import train_step as step_lib
from ltdpt_jax.data import transforms
from ltdpt_jax.models import common
from ltdpt_jax.models import vit as vit_lib
from ltdpt_jax.models import vit_checkpoint

# Eval images whose logits the `.json` next to the `.npz` keeps (the first ones of the eval split).
REFERENCE_IMAGES = 8


def validate(config, *, num_devices: int | None = None,
             num_processes: int | None = None) -> None:
  """Raises ValueError naming the first invalid value of a pretraining config."""
  m, d, o, t = config.model, config.data, config.optim, config.train
  choices = {'model.method': (models.PRETRAIN,), 'model.backbone': vit_lib.BACKBONES,
             'model.dtype': tuple(common.DTYPES),
             'data.dataset': data_lib.DATASETS, 'data.eval_split': data_lib.EVAL_SPLITS,
             'data.on_bad_image': data_lib.ON_BAD_IMAGE, 'data.class_set': data_lib.CLASS_SETS}
  for key, allowed in choices.items():
    section, field = key.split('.')
    if config[section][field] not in allowed:
      raise ValueError(f'config.{key}={config[section][field]!r} is not valid; choose one of '
                       f'{allowed}.')
  positive = {'data.image_size': d.image_size, 'data.batch_size': d.batch_size,
              'data.eval_batch_size': d.eval_batch_size, 'optim.lr': o.lr,
              'train.epochs': t.epochs, 'train.eval_every_epochs': t.eval_every_epochs,
              'train.checkpoint_every_steps': t.checkpoint_every_steps,
              'train.keep_checkpoints': t.keep_checkpoints,
              'train.log_every_steps': t.log_every_steps}
  non_negative = {'optim.warmup_epochs': o.warmup_epochs, 'optim.weight_decay': o.weight_decay,
                  'optim.grad_clip_norm': o.grad_clip_norm}
  for key, value in positive.items():
    if not value > 0:
      raise ValueError(f'config.{key}={value!r} must be > 0.')
  for key, value in non_negative.items():
    if not value >= 0:
      raise ValueError(f'config.{key}={value!r} must be >= 0.')
  for key, value in (('optim.b1', o.b1), ('optim.b2', o.b2),
                     ('loss.label_smoothing', config.loss.label_smoothing)):
    if not 0.0 <= value < 1.0:
      raise ValueError(f'config.{key}={value!r} must be in [0, 1).')
  if not o.warmup_epochs < t.epochs:
    raise ValueError(f'config.optim.warmup_epochs={o.warmup_epochs} must be less than '
                     f'config.train.epochs={t.epochs}.')
  if not 0.0 < d.crop_min_scale <= 1.0:
    raise ValueError(f'config.data.crop_min_scale={d.crop_min_scale} must be in (0, 1].')
  for key, needed in (('folder', ('train_dir', 'eval_dir')), ('list', ('train_list', 'eval_list'))):
    for field in needed if d.dataset == key else ():
      if not d[field]:
        raise ValueError(f'config.data.dataset={key!r} needs config.data.{field}.')
  try:
    vit_lib.arch_from_config(m).grid(d.image_size)
  except ValueError as e:
    raise ValueError(f'config.model / config.data.image_size={d.image_size}: {e}') from None
  cli.validate_evals(config)  # the same rules as LT-DPT configs
  for count, what in ((num_devices, 'devices'), (num_processes, 'processes')):
    for key in ('batch_size', 'eval_batch_size') if count else ():
      if d[key] % count:
        raise ValueError(f'config.data.{key}={d[key]} must be a multiple of the number of '
                         f'{what} ({count}).')


def default_workdir(out: str) -> str:
  """`<out without .npz>_pretrain`: where a run without --workdir keeps its checkpoints."""
  stem = out[:-4] if out.endswith('.npz') else out
  return stem + '_pretrain'


def sidecar_path(out: str) -> str:
  """The JSON written next to the `.npz` (`<out without .npz>.json`)."""
  return (out[:-4] if out.endswith('.npz') else out) + '.json'


def reference_images(data_config, count: int = REFERENCE_IMAGES) -> tuple[list[int], np.ndarray]:
  """(indices, uint8 images) of the first `count` eval images after the eval transform."""
  src = data_lib.get_sources(data_config).eval
  indices = list(range(min(count, len(src))))
  size = int(data_config.image_size)
  images = np.stack([transforms.eval_transform(src[i]['image'], size) for i in indices])
  return indices, images


def reference_logits(npz_path: str, images_uint8: np.ndarray) -> np.ndarray:
  """The logits of a `.npz` ViT (loaded with `from_npz`, its head included) on uint8 images."""
  model, params = vit_checkpoint.from_npz(npz_path)
  x = step_lib.normalize_images(jnp.asarray(images_uint8))
  return np.asarray(jax.jit(model.apply)({'params': params}, x)['logits'], np.float32)


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  """`np.savez` with reproducible bytes: members in key order, fixed timestamps (np.savez
  stamps the current time), written to a temporary file and renamed."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_STORED) as zf:
    for key in sorted(arrays):
      buffer = io.BytesIO()
      np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[key]), allow_pickle=False)
      zf.writestr(zipfile.ZipInfo(f'{key}.npy', date_time=(1980, 1, 1, 0, 0, 0)),
                  buffer.getvalue())
  os.replace(tmp, path)


def export_npz(params: Any, out: str) -> str:
  """Writes `params` (a VisionTransformer tree) as an official-naming `.npz` (float32, keys
  '/'-joined); returns its SHA-256, the same for the same weights."""
  flat = {k: np.asarray(jax.device_get(v), np.float32)
          for k, v in vit_checkpoint.flatten(params).items()}
  write_npz(out, flat)
  return fetch.sha256_of(out)


def run(config, workdir: str, out: str, *, allow_config_change: bool = False,
        command: str | None = None) -> dict[str, Any]:
  """Pretrains (resuming from `workdir`) and writes `out` and its `.json`; returns
  {'out', 'sha256', 'results', 'sidecar'} or {'stopped_at': step}. Deterministic for
  `train.seed`: a resumed run writes the same bytes as an uninterrupted one. Raises
  run_dir.SetupError for bad input and FloatingPointError when training diverges."""
  results = train.train_and_evaluate(config, workdir, allow_config_change=allow_config_change)
  if 'stopped_at' in results:
    return results
  setup = train.Setup(config)
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    state, _ = checkpointer.restore(setup.total_steps, setup.abstract_state())
  finally:
    checkpointer.close()
  if jax.process_index() != 0:
    return {'out': out, 'results': results}
  sha = export_npz(state.params, out)
  indices, images = reference_images(config.data)
  logits = reference_logits(out, images)
  last = results.get('last') or {}
  sidecar = {
      'file': os.path.basename(out), 'sha256': sha, 'bytes': os.path.getsize(out),
      'command': command, 'architecture': setup.model.arch.describe(),
      'num_classes': setup.num_classes, 'class_names': list(setup.info.class_names),
      'dataset': setup.info.name, 'steps': setup.total_steps,
      'eval': {k: last.get(k) for k in ('step', 'epoch', 'accuracy', 'num_examples')},
      'reference': {'split': 'eval', 'indices': indices,
                    'logits': np.round(logits, 6).tolist(),
                    'predictions': logits.argmax(-1).tolist(),
                    'labels': [int(data_lib.get_sources(config.data).eval[i]['label'])
                               for i in indices]},
      'config': config.to_dict(),
  }
  metrics_lib.write_json(sidecar_path(out), sidecar)
  logging.info('Wrote %s (%d bytes, SHA-256 %s; upstream eval top-1 %s) and %s.', out,
               sidecar['bytes'], sha, last.get('accuracy'), sidecar_path(out))
  return {'out': out, 'sha256': sha, 'results': results, 'sidecar': sidecar_path(out)}


# ---------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------

def define_flags():
  """The command's flags, defined only when it runs (the tools import each other's modules)."""
  config_flags.DEFINE_config_file(
      'config', None, 'Pretraining config file (configs/pretrain_*.py).', lock_config=True)
  flags.DEFINE_string('out', None, 'The .npz to write (official vision_transformer naming).')
  flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and results of the run (default: '
                      '<out without .npz>_pretrain).')
  flags.DEFINE_bool('allow_config_change', False, 'Resume although the config differs from the '
                    'one stored with the checkpoint; the change is recorded in the workdir.')
  flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  cli.start(argv)
  f = flags.FLAGS
  config = cli.load_config(f['config'])
  try:
    validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  except ValueError as e:
    cli.fail(f'invalid config: {e}', cli.EXIT_BAD_INPUT)
  out = f.out
  if not out.endswith('.npz'):
    cli.fail(f'--out={out} must name a .npz file.', cli.EXIT_BAD_INPUT)
  workdir = f.workdir or default_workdir(out)
  command = ' '.join(['python -m ltdpt_jax.tools.pretrain'] +
                     [shlex.quote(a) for a in sys.argv[1:]])
  result = cli.run_guarded(lambda: run(config, workdir, out,
                                       allow_config_change=f.allow_config_change,
                                       command=command), workdir)
  if 'stopped_at' in result:
    sys.exit(cli.EXIT_STOPPED)
  if 'sha256' in result:
    print(json.dumps({'out': out, 'sha256': result['sha256'],
                      'eval_accuracy': (result['results'].get('last') or {}).get('accuracy'),
                      'sidecar': result['sidecar'], 'workdir': workdir}))


def run_cli():
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run_cli()
