r"""Supervised pretraining of a ViT backbone, written as an official vision_transformer `.npz`.

  python -m ltdpt_jax.tools.pretrain --config=configs/pretrain_synthetic.py \
      --workdir=runs/pretrain --out=ltdpt_jax/assets/vit_demo.npz

How the released ViT checkpoints were made, at a size a CPU trains in minutes: every weight of a
`vit.VisionTransformer` (patch embedding, CLS, position embedding, every block, final LayerNorm
and a linear `head` with bias) is trained from a seeded random init on a balanced classification
task with softmax cross-entropy on label-smoothed targets (`config.loss.label_smoothing`) and
optax AdamW (`config.optim`: `b1`, `b2`, decoupled `weight_decay` on the kernels only, not on
biases, LayerNorm, CLS or position embedding; gradients clipped to global norm
`grad_clip_norm`) with a linear warm-up over `warmup_epochs` and a cosine decay to 0 (per step).
The images come from the project's own input pipeline (`ltdpt_jax.data`: the same
RandomResizedCrop + flip code as LT-DPT training, `data.crop_min_scale`), so any source the data
module has works: the synthetic upstream task of the demo (`configs/pretrain_synthetic.py`),
tfds datasets, or your own image folder or list (`data.dataset='folder'`, `data.train_dir`,
`data.eval_dir`).

The run is an ordinary training run of the project (`train.train_and_evaluate` with
`PretrainSetup`): the same loop, progress lines, `metrics.jsonl` and TensorBoard records, the
evaluators of `config.evals` (top-1 on the eval split every `train.eval_every_epochs`), Orbax
checkpoints in `--workdir` (params, AdamW state, data-iterator state) written every
`train.checkpoint_every_steps` and at epoch ends, SIGTERM/Ctrl-C handling, the workdir lock and
the config-drift check on resume: rerunning the same command continues a stopped run and ends
with the same weights as an uninterrupted one. Deterministic for `train.seed` (init, data order
and augmentation all come from it; nothing else draws random numbers).

At the end the trained parameters are written to `--out` (atomically) under the keys of the
google-research/vision_transformer files (`embedding/kernel`, `cls`,
`Transformer/posembed_input/pos_embedding`, `Transformer/encoderblock_{i}/...`,
`Transformer/encoder_norm/...`, `head/kernel`, `head/bias`), so `vit_checkpoint.from_npz` and
every config (`config.model.checkpoint`) load it like a released checkpoint. Next to it,
`<out stem>.json` records the file's SHA-256, the command, the config, the final evaluation and
reference logits of the first `REFERENCE_IMAGES` eval images computed from the written file
(`tests/test_pretrain.py` checks that the file still reproduces them).

`--workdir` defaults to `<out without .npz>_pretrain/`. Exit codes as `ltdpt_jax.main` (0, 2 bad
input, 3 diverged, 75 stopped: rerun to resume, 130).
"""

from __future__ import annotations

import copy
import io
import json
import os
import shlex
import sys
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ltdpt_jax import checkpoint as ckpt_lib
from ltdpt_jax import cli
from ltdpt_jax import config_lib
from ltdpt_jax import data as data_lib
from ltdpt_jax import fetch
from ltdpt_jax import metrics as metrics_lib
from ltdpt_jax import sharding
from ltdpt_jax import train
from ltdpt_jax import train_step as step_lib
from ltdpt_jax.data import transforms
from ltdpt_jax.models import ltdpt
from ltdpt_jax.models import vit as vit_lib
from ltdpt_jax.models import vit_checkpoint

# Eval images whose logits the `.json` next to the `.npz` keeps (the first ones of the eval split).
REFERENCE_IMAGES = 8


def base_config() -> ml_collections.ConfigDict:
  """The defaults of a pretraining config (`configs/pretrain_*.py` set what they change).

  Sections: `model` (the ViT: `backbone` preset or 'custom' with `vit.*` sizes, `dtype`), `data`
  (exactly LT-DPT's data section, so every source works), `loss` (`label_smoothing`), `optim`
  (AdamW), `evals` and `train` (as LT-DPT's: epochs, periods, seed).
  """
  lt = config_lib.base_config()
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict()
  c.model.backbone = 'custom'        # 'ti16' | 's16' | 'b16' | 'l16' | 'custom' (sizes in model.vit)
  c.model.vit = copy.deepcopy(lt.model.vit)
  c.model.dtype = 'float32'          # compute dtype: 'float32' | 'bfloat16' (params stay float32)

  c.data = copy.deepcopy(lt.data)
  c.data.dataset = 'synthetic'
  c.data.class_set = 'upstream'
  c.data.imbalance_ratio = 1.0       # balanced

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.1

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3                  # peak learning rate (for the global batch as configured)
  c.optim.warmup_epochs = 2.0        # linear warm-up from 0, then cosine decay to 0
  c.optim.weight_decay = 0.05        # AdamW's decoupled decay, on kernels only
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.grad_clip_norm = 1.0       # 0 = no clipping

  c.evals = copy.deepcopy(lt.evals)
  c.train = ml_collections.ConfigDict()
  c.train.epochs = 30
  c.train.eval_every_epochs = 5
  c.train.checkpoint_every_steps = 500
  c.train.keep_checkpoints = 3
  c.train.log_every_steps = 50
  c.train.best_metric = 'eval/accuracy'
  c.train.seed = 0
  return c


def validate(config, *, num_devices: int | None = None,
             num_processes: int | None = None) -> None:
  """Raises ValueError naming the first invalid value of a pretraining config."""
  m, d, o, t = config.model, config.data, config.optim, config.train
  choices = {'model.backbone': vit_lib.BACKBONES, 'model.dtype': tuple(ltdpt.DTYPES),
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
  config_lib._validate_evals(config)  # pylint: disable=protected-access  # the same rules
  for count, what in ((num_devices, 'devices'), (num_processes, 'processes')):
    for key in ('batch_size', 'eval_batch_size') if count else ():
      if d[key] % count:
        raise ValueError(f'config.data.{key}={d[key]} must be a multiple of the number of '
                         f'{what} ({count}).')


def build_model(config, num_classes: int) -> vit_lib.VisionTransformer:
  """The ViT of `config.model` with a linear head of `num_classes` (zero-initialised)."""
  a = vit_lib.arch_from_config(config.model)
  return vit_lib.VisionTransformer(a.patch_size, a.hidden_size, a.num_layers, a.num_heads,
                                   a.mlp_dim, num_classes=int(num_classes),
                                   dtype=ltdpt.DTYPES[config.model.dtype])


def learning_rate_schedule(optim_config, total_steps: int, steps_per_epoch: int):
  """Linear warm-up from 0 over `warmup_epochs`, then cosine decay to 0 at `total_steps`."""
  warmup = int(round(float(optim_config.warmup_epochs) * steps_per_epoch))
  warmup = min(warmup, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(optim_config.lr), warmup_steps=warmup,
      decay_steps=max(total_steps, 1), end_value=0.0)


def _decay_mask(params):
  """Weight decay on the kernels only (not biases, LayerNorm, CLS or position embedding)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def make_optimizer(optim_config, total_steps: int, steps_per_epoch: int
                   ) -> optax.GradientTransformation:
  """optax AdamW with warm-up + cosine, kernel-only decay and global-norm clipping."""
  o = optim_config
  adamw = optax.adamw(learning_rate_schedule(o, total_steps, steps_per_epoch), b1=float(o.b1),
                      b2=float(o.b2), weight_decay=float(o.weight_decay), mask=_decay_mask)
  if float(o.grad_clip_norm) > 0:
    return optax.chain(optax.clip_by_global_norm(float(o.grad_clip_norm)), adamw)
  return adamw


def _logits(model, params, images_uint8):
  return model.apply({'params': params},
                     step_lib.normalize_images(images_uint8))['logits'].astype(jnp.float32)


def make_train_step(model, tx, *, label_smoothing: float, num_classes: int, mesh,
                    image_size: int | None = None):
  """The jitted step (state, frozen, batch) -> (state, metrics): cross-entropy on smoothed
  labels, the gradient of every parameter, the AdamW update; data-parallel over `mesh`. A batch
  with 'crop' (config.data.crop_on_device) is cropped to `image_size` first
  (`train_step.train_images`)."""

  def train_step(state: step_lib.TrainState, frozen, batch):
    del frozen  # every weight is trained
    images = step_lib.train_images(batch, image_size)

    def loss_fn(params):
      logits = _logits(model, params, images)
      targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], num_classes), label_smoothing)
      loss = optax.softmax_cross_entropy(logits, targets).mean()
      accuracy = jnp.mean((jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32))
      return loss, accuracy

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'train_accuracy': accuracy, 'grad_norm': optax.global_norm(grads)}
    return step_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  replicated = sharding.replicated(mesh)
  return jax.jit(train_step, in_shardings=(replicated, replicated, sharding.batch_sharded(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


class PretrainSetup(train.Setup):
  """`train.Setup` for pretraining: the ViT with its head is the whole (trainable) model, the
  frozen partition is empty, the optimiser AdamW; the train loop, evaluators, checkpoints and
  resume are LT-DPT training's (`train.train_and_evaluate(..., setup_cls=PretrainSetup)`)."""

  def __init__(self, config, *, info: data_lib.DatasetInfo | None = None,
               for_training: bool = True):  # pylint: disable=super-init-not-called
    self._init_mesh_and_data(config, info, for_training)
    self.drw_start_step = self.total_steps  # no DRW here
    self.model = build_model(config, self.num_classes)
    self.backbone_sha256 = None  # trained from a random init (train.seed)
    images = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
    params = jax.jit(lambda key: self.model.init(key, images)['params'])(
        jax.random.key(int(config.train.seed)))
    self.frozen = {}
    self.schedule = learning_rate_schedule(config.optim, self.total_steps, self.steps_per_epoch)
    self.tx = make_optimizer(config.optim, self.total_steps, self.steps_per_epoch)
    self.state = jax.device_put(step_lib.init_train_state(params, self.tx), self.replicated)
    self.train_step = make_train_step(
        self.model, self.tx, label_smoothing=float(config.loss.label_smoothing),
        num_classes=self.num_classes, mesh=self.mesh, image_size=self.image_size)
    model = self.model
    self.predict_fn = lambda trainable, frozen, images: {'logits': _logits(model, trainable,
                                                                           images)}

  def learning_rate(self, step: int) -> float:
    return float(self.schedule(step))

  def log_start(self, compiled) -> dict[str, Any]:
    config = self.config
    logging.info('Config:\n%s', config)
    logging.info('JAX %s: %d process(es), %d device(s) [%s], %d local.', jax.__version__,
                 jax.process_count(), jax.device_count(), jax.devices()[0].device_kind,
                 jax.local_device_count())
    count = vit_lib.count_params(self.state.params)
    flops = step_lib.compiled_flops(compiled)
    logging.info('Pretraining %s with a %d-class head: %s parameters, all trained. Dataset %s: '
                 '%d train images, %d eval images; %d steps/epoch, %d steps. Train step: %s '
                 'FLOPs.', self.model.arch.describe(), self.num_classes, f'{count:,}',
                 self.info.name, self.info.num_train, self.info.num_eval, self.steps_per_epoch,
                 self.total_steps, 'n/a' if flops is None else f'{flops:.3g}')
    return {'parameters': {'trainable': count, 'frozen': 0}, 'step_flops': flops,
            'architecture': self.model.arch.describe(), 'dataset': self.info.name,
            'class_names': list(self.info.class_names),
            'class_counts': np.asarray(self.info.class_counts).tolist()}


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
  {'out', 'sha256', 'results', 'sidecar'} or {'stopped_at': step} (see the module docstring).
  Raises train.SetupError for bad input and FloatingPointError when training diverges."""
  built = []

  def setup_cls(cfg, **kwargs):
    built.append(PretrainSetup(cfg, **kwargs))
    return built[-1]

  results = train.train_and_evaluate(config, workdir, allow_config_change=allow_config_change,
                                     setup_cls=setup_cls)
  if 'stopped_at' in results:
    return results
  setup = built[-1]
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
  """The CLI's flags (defined only when run as a program: configs import this module)."""
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
  command = ' '.join(['python -m ltdpt_jax.tools.pretrain'] + [shlex.quote(a) for a in sys.argv[1:]])
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
