"""The jitted, data-parallel train and eval steps of LT-DPT.

`make_train_step` builds the train step (saliency, forward at the GNM-perturbed parameters,
loss of Eq. 7 from `make_loss_fn`, optimiser update); `make_predict_fn` is the same forward in
eval mode, for the evaluators; `TrainState` is what a checkpoint holds. Pretraining a backbone
uses `make_pretrain_step` and `make_pretrain_predict_fn`.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ltdpt_jax import losses
from ltdpt_jax import optim
from ltdpt_jax import saliency as saliency_lib
from ltdpt_jax import sharding
from ltdpt_jax.data import device_transforms


@flax.struct.dataclass
class TrainState:
  """What a checkpoint holds of a run: step, trainable parameters, optimiser (and GNM) state."""
  step: jax.Array
  params: Any
  opt_state: Any


def init_train_state(trainable: Any, tx: optim.GNM) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                    opt_state=tx.init(trainable))


def normalize_images(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1] (mean = std = 0.5, as the ViT checkpoints expect)."""
  return images.astype(jnp.float32) * (2.0 / 255.0) - 1.0


def train_images(batch, image_size: int | None) -> jax.Array:
  """The uint8 (B, S, S, 3) training images of a batch: batch['image'] as the host cropped
  it, or, where the batch has 'crop' (config.data.crop_on_device), the stored images cropped
  and flipped here to image_size (the same pixels as the host path)."""
  if 'crop' not in batch:
    return batch['image']
  if image_size is None:
    raise ValueError("A batch with 'crop' (config.data.crop_on_device) needs the train step's "
                     'image_size.')
  return device_transforms.resized_crop(batch['image'], batch['crop'], int(image_size))


def forward(model, params, images_uint8, *, train: bool, rng=None):
  """Saliency + normalisation + the model on a uint8 batch; returns the model's output dict."""
  sal = None
  if model.method not in ('vpt', 'linear'):  # the methods without a saliency bias
    ph, pw = model.arch.patch_size
    if ph != pw:
      raise ValueError(f'Saliency needs square patches; got {(ph, pw)}.')
    sal = saliency_lib.patch_saliency(images_uint8, patch_size=ph)
  rngs = {'dropout': rng} if train else None
  return model.apply({'params': params}, normalize_images(images_uint8), sal, train=train,
                     rngs=rngs)


def make_predict_fn(model):
  """predict(trainable, frozen, images_uint8) -> the model's output dict (eval mode): what the
  evaluators (and predictions) run, jitted by them."""

  def predict(trainable, frozen, images_uint8):
    return forward(model, optim.merge_params(trainable, frozen), images_uint8, train=False)

  return predict


def make_loss_fn(model, *, loss_config, class_counts):
  """loss_fn(trainable, frozen, batch, rng, drw_on) -> (loss, metrics): Eq. 7 on one batch.

  Reads the config's loss section: s, m, noise_mul (GCL), drw_beta (DRW weights), orth_lambda.
  """
  counts = jnp.asarray(np.asarray(class_counts, np.float32))
  lc = loss_config
  drw_w = jnp.asarray(losses.drw_weights(class_counts, lc.drw_beta))

  def loss_fn(trainable, frozen, batch, rng, drw_on):
    params = optim.merge_params(trainable, jax.lax.stop_gradient(frozen))
    k_drop, k_noise = jax.random.split(rng)
    out = forward(model, params, batch['image'], train=True, rng=k_drop)
    cosine = out['logits']
    noise = jax.random.normal(k_noise, cosine.shape, jnp.float32)
    weights = jnp.where(drw_on, drw_w, jnp.ones_like(drw_w))
    lt = losses.gcl_loss(cosine, batch['label'], counts, noise=noise, s=lc.s, m=lc.m,
                         noise_mul=lc.noise_mul, class_weights=weights)
    if 'br_prompts' in params:
      orth = losses.orthogonality_loss(params['br_prompts'])
    else:
      orth = jnp.zeros((), jnp.float32)
    loss = losses.total_loss(lt, orth, orth_lambda=lc.orth_lambda)
    accuracy = jnp.mean((jnp.argmax(cosine, -1) == batch['label']).astype(jnp.float32))
    return loss, {'loss': loss, 'loss_lt': lt, 'loss_orth': orth, 'train_accuracy': accuracy}

  return loss_fn


def make_train_step(model, tx: optim.GNM, *, loss_config, seed: int, class_counts,
                    drw_start_step: int, mesh: jax.sharding.Mesh, image_size: int | None = None):
  """The jitted train step: (state, frozen, batch) -> (state, metrics); `state` is donated.

  One `jax.jit` over the 1-D mesh ('data',): the batch is sharded over devices, everything else
  replicated, and XLA inserts the gradient all-reduce. (Not `jax.pmap`, which Orbax cannot save
  the per-device arrays of; `jit` with `NamedSharding` compiles to the same data parallelism.)
  The step: the crop on the device if the batch has 'crop' (`train_images`); saliency S of the
  augmented uint8 batch (`saliency.patch_saliency`, Eq. 8-12); images normalised with
  mean = std = 0.5; the forward at the GNM-perturbed trainable parameters, GCL (+ DRW weights
  once DRW is on) + lambda * orthogonality loss (Eq. 6-7); the gradient with respect to the
  trainable partition only (the frozen backbone is a separate, non-differentiated argument, so
  no backbone weight gradient is computed); the optimiser update on the unperturbed parameters.
  The per-step randomness (dropout, GCL's Gaussian cloud) comes from `fold_in(key(seed), step)`
  (seed = config.train.seed) and GNM's key lives in the optimiser state, so a resumed run draws
  exactly what an uninterrupted one draws, whatever the number of devices (threefry keys are
  partitionable).

  batch: {'image': uint8 (B, S, S, 3), 'label': int (B,)} sharded over 'data' (extra keys such
  as 'id' are ignored), or {'image': uint8 (B, H, W, 3) as stored, 'crop': int32 (B, 5),
  'label'} with the crop on the device, cropped to `image_size` (`train_images`). DRW (class
  weights, GNM c = 0.5) switches on at `drw_start_step`.
  """
  loss_fn = make_loss_fn(model, loss_config=loss_config, class_counts=class_counts)
  value_and_grad = tx.value_and_grad(loss_fn, has_aux=True)
  seed = int(seed)

  def train_step(state: TrainState, frozen, batch):
    batch = {'image': train_images(batch, image_size), 'label': batch['label']}
    drw_on = optim.drw_active(state.step, drw_start_step=drw_start_step)
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    (_, metrics), grads = value_and_grad(state.params, state.opt_state, frozen, batch, rng,
                                         drw_on, scale=optim.gnm_scale(drw_on))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics['grad_norm'] = optax.global_norm(grads)
    metrics['drw'] = drw_on.astype(jnp.float32)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  replicated = sharding.replicated(mesh)
  return jax.jit(train_step, in_shardings=(replicated, replicated, sharding.batch_sharded(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def check_finite(state, step: int, last_saved: int | None):
  """Raises FloatingPointError if the trainable parameters or optimiser state hold NaN/inf.

  Called before every checkpoint and evaluation, so no checkpoint of a diverged state is ever
  written. It waits for the step just dispatched, but only where the checkpoint's own
  device-to-host copy waits for it anyway (checkpoint and epoch-end steps).
  """
  if not bool(_all_finite((state.params, state.opt_state))):
    raise FloatingPointError(
        f'The trainable parameters are not finite (NaN/inf) after step {step}: training diverged. '
        f'The run stopped without checkpointing this state; {kept_checkpoint(last_saved)}. '
        'Lower --config.optim.lr (or check the data) and start again.')


def kept_checkpoint(last_saved: int | None) -> str:
  """What a run that stops on NaN/inf says of its checkpoints (`last_saved`: the newest step)."""
  return (f'the last checkpoint (step {last_saved}) is intact' if last_saved is not None
          else 'no checkpoint was written')


def compiled_flops(compiled) -> float | None:
  """FLOPs XLA counts for a compiled computation (None where the backend does not say)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


# ---------------------------------------------------------------------------------------------
# Pretraining a backbone (config.model.method = 'pretrain').
# ---------------------------------------------------------------------------------------------

def vit_logits(model, params, images_uint8) -> jax.Array:
  """The float32 logits of a `vit.VisionTransformer` with a head on a uint8 batch."""
  return model.apply({'params': params},
                     normalize_images(images_uint8))['logits'].astype(jnp.float32)


def make_pretrain_predict_fn(model):
  """predict(trainable, frozen, images_uint8) -> {'logits'}: the pretraining ViT in eval mode
  (every weight is trainable; `frozen` is empty)."""
  return lambda trainable, frozen, images_uint8: {'logits': vit_logits(model, trainable,
                                                                       images_uint8)}


def make_pretrain_step(model, tx: optax.GradientTransformation, *, label_smoothing: float,
                       num_classes: int, mesh: jax.sharding.Mesh, image_size: int | None = None):
  """The jitted pretraining step (state, frozen, batch) -> (state, metrics): softmax cross-entropy
  on label-smoothed targets, the gradient of every parameter, the optimiser update;
  data-parallel over `mesh` like `make_train_step`, cropping on the device the same way."""

  def train_step(state: TrainState, frozen, batch):
    del frozen  # every weight is trained
    images = train_images(batch, image_size)

    def loss_fn(params):
      logits = vit_logits(model, params, images)
      targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], num_classes), label_smoothing)
      loss = optax.softmax_cross_entropy(logits, targets).mean()
      accuracy = jnp.mean((jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32))
      return loss, accuracy

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'train_accuracy': accuracy, 'grad_norm': optax.global_norm(grads)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  replicated = sharding.replicated(mesh)
  return jax.jit(train_step, in_shardings=(replicated, replicated, sharding.batch_sharded(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))
