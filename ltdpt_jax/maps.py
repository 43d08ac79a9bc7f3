"""What a trained LT-DPT model looks at: saliency, Grad-CAM and prompt-attention maps, and how
much of each falls on the object (the paper's Figure 1 as a picture and as a number).

`make_maps_fn` (and `compute` over a host batch) gives the maps of a batch; `shares` and
`share_stats` measure each map's foreground share; `sample_eval_images` picks the images.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltdpt_jax import data as data_lib
from ltdpt_jax import saliency as saliency_lib
from ltdpt_jax.data import transforms
from ltdpt_jax.models import common
from ltdpt_jax.models import ltdpt
from ltdpt_jax.train_step import normalize_images

# The patch maps `make_maps_fn` returns, and the name of each in tables and titles.
PATCH_MAPS = {
    'patch_scores': 'saliency S',
    'gradcam_pred': 'Grad-CAM (predicted)',
    'gradcam_true': 'Grad-CAM (true class)',
    'fr_attention': 'FR attention',
    'br_attention': 'BR attention',
    'cls_attention': 'CLS attention',
}
TOP_SALIENT_FRACTION = 0.25


def straightforward(model: ltdpt.LTDPT) -> ltdpt.LTDPT:
  """The same model (same parameters and outputs) computing every row of every block.

  On this straightforward path (`skip_dead_prompt_work=False`, tested to match training's
  outputs) the prompt rows of the last block exist whatever the feature, and XLA's attention
  sows its probabilities.
  """
  return model.clone(skip_dead_prompt_work=False, attention='xla')  # only XLA's sows the maps


def gradcam(activations: jax.Array, gradients: jax.Array) -> jax.Array:
  """Grad-CAM (Selvaraju et al. 2017, Eq. 1-2) on tokens: activations and gradients (B, m, D)
  -> (B, m) = ReLU(sum_d alpha_d A_:,d), alpha = the mean of the gradient over the m patches.

  Adapted to a ViT the usual way: A = the patch tokens entering the last block, and the gradient
  that of a class's cosine logit with respect to A."""
  alpha = gradients.mean(axis=1)  # Eq. 1: global average pooling of the gradients
  return jax.nn.relu(jnp.einsum('bd,bmd->bm', alpha, activations))  # Eq. 2


def attention_over_patches(probs: jax.Array, rows: np.ndarray, patch_cols: slice) -> jax.Array:
  """Mean over heads and over the query `rows` of the attention probabilities (B, h, Nq, Nk)
  on the patch key columns -> (B, m); zeros when `rows` is empty."""
  if len(rows) == 0:
    return jnp.zeros(probs.shape[:1] + (patch_cols.stop - patch_cols.start,), probs.dtype)
  return probs[:, :, rows, patch_cols].mean(axis=(1, 2))


def make_maps_fn(model: ltdpt.LTDPT, image_size: int):
  """maps(params, images_uint8, labels, scale) -> dict of maps, jitted.

  Per image (m patches on a gh x gw grid, row-major like the patch tokens):
  * 'saliency' (B, S, S): the spectral-residual map (`saliency.spectral_residual`, Eq. 8-12) at
    the image's resolution; 'patch_scores' (B, m): the scores S the model's biases use;
  * 'gradcam_pred', 'gradcam_true' (B, m): `gradcam` for the predicted and the true class;
  * 'fr_attention', 'br_attention', 'cls_attention' (B, m): the last block's attention
    probabilities over the patch keys, exactly the softmax the model computed with its saliency
    biases (sown by `MultiHeadAttention`), averaged over heads and over the FR prompts (the
    general prompts for method 'vpt'), the BR prompts ('fr_br' only; zeros otherwise) and the
    CLS query.
  The model runs `straightforward`; the activations' gradient comes from Flax's `perturb`
  (`common.LAST_BLOCK_TOKENS`), which the train step never passes, so training pays nothing.

  `params`: the full parameter tree (trainable and frozen merged); images (B, S, S, 3) uint8 as
  the evaluation transform gives them; labels (B,) int (the true classes, for Grad-CAM).
  Also returns 'logits' (B, C), 'prediction' (B,) and 'probabilities' (B, C) (softmax of
  `scale` times the cosine logits, as predictions report them; scale given at call time).
  """
  full = straightforward(model)
  gh, gw = model.arch.grid(image_size)
  m = gh * gw
  last = model.num_layers - 1
  layout = full.block_layout(last)
  sizes = full.segment_sizes(m)
  q_types = common.BlockLayout.types(layout.queries, sizes)
  k_types = common.BlockLayout.types(layout.keys, sizes)
  patch_idx = np.flatnonzero(k_types == common.PATCH)
  patch_cols = slice(int(patch_idx[0]), int(patch_idx[-1]) + 1)
  rows = {'fr_attention': np.flatnonzero(q_types == common.FR),
          'br_attention': np.flatnonzero(q_types == common.BR),
          'cls_attention': np.flatnonzero(q_types == common.CLS)}
  ph = model.arch.patch_size[0]

  def maps(params, images_uint8, labels, scale):
    sal_map = saliency_lib.spectral_residual(images_uint8)  # at the image's resolution
    scores = saliency_lib.patch_saliency(images_uint8, patch_size=ph)
    x = normalize_images(images_uint8)
    sal_in = None if model.method == 'vpt' else scores
    zeros = jnp.zeros((images_uint8.shape[0], 1 + m, model.hidden_size), jnp.float32)

    def logits_of(perturbation):
      out, inter = full.apply(
          {'params': params, 'perturbations': {common.LAST_BLOCK_TOKENS: perturbation}},
          x, sal_in, train=False, mutable=['intermediates'])
      return out['logits'], (out, inter['intermediates'])

    logits, vjp, (out, inter) = jax.vjp(logits_of, zeros, has_aux=True)
    tokens = inter[common.LAST_BLOCK_TOKENS][0][:, 1:].astype(jnp.float32)
    prediction = jnp.argmax(logits, axis=-1)
    num_classes = logits.shape[-1]
    grad_pred = vjp(jax.nn.one_hot(prediction, num_classes, dtype=logits.dtype))[0][:, 1:]
    grad_true = vjp(jax.nn.one_hot(labels, num_classes, dtype=logits.dtype))[0][:, 1:]
    block = inter['backbone']['Transformer'][f'encoderblock_{last}']
    probs = block['MultiHeadDotProductAttention_1']['attention_probs'][0]
    result = {
        'saliency': sal_map, 'patch_scores': scores,
        'gradcam_pred': gradcam(tokens, grad_pred), 'gradcam_true': gradcam(tokens, grad_true),
        'logits': logits, 'prediction': prediction,
        'probabilities': jax.nn.softmax(scale * logits, axis=-1),
        'feature': out['feature'],
    }
    for name, r in rows.items():
      result[name] = attention_over_patches(probs, r, patch_cols)
    return result

  # Small models on a CPU: XLA's unoptimised backend compiles several times faster and runs
  # fast enough for a few batches (the policy of `ltdpt.init_params`).
  quick = (jax.default_backend() == 'cpu'
           and model.hidden_size * model.hidden_size * model.num_layers * 12 <= 5_000_000)
  if quick:
    try:
      return jax.jit(maps, compiler_options={'xla_backend_optimization_level': 0})
    except Exception:  # pylint: disable=broad-except  # an XLA without that option
      pass
  return jax.jit(maps)


# ---------------------------------------------------------------------------------------------
# Foreground shares (host side, numpy).
# ---------------------------------------------------------------------------------------------

def patch_fraction(masks: np.ndarray, patch_size: int) -> np.ndarray:
  """(B, S, S) bool pixel masks -> (B, m) fraction of each patch the mask covers (row-major)."""
  masks = np.asarray(masks, np.float64)
  b, h, w = masks.shape
  p = int(patch_size)
  return masks.reshape(b, h // p, p, w // p, p).mean(axis=(2, 4)).reshape(b, -1)


def top_salient_patches(scores: np.ndarray, fraction: float = TOP_SALIENT_FRACTION) -> np.ndarray:
  """(B, m) -> (B, m) 0/1: each image's ceil(fraction * m) patches of highest saliency S.

  The reference for data without object masks: it says where the saliency prior points rather
  than where the object is (S's own share is then high by construction).
  """
  scores = np.asarray(scores, np.float64)
  k = max(1, int(np.ceil(fraction * scores.shape[1])))
  order = np.argsort(-scores, axis=1, kind='stable')[:, :k]
  out = np.zeros_like(scores)
  np.put_along_axis(out, order, 1.0, axis=1)
  return out


def foreground_share(maps: np.ndarray, foreground: np.ndarray) -> np.ndarray:
  """Per image, the fraction of a non-negative map's mass on the foreground: sum(M F) / sum(M)
  over the last axes; NaN for an all-zero map (nothing to share). Shapes (B, ...) alike."""
  maps = np.asarray(maps, np.float64).reshape(len(maps), -1)
  fg = np.asarray(foreground, np.float64).reshape(len(foreground), -1)
  total = maps.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(total > 0, (maps * fg).sum(axis=1) / total, np.nan)


def shares(maps: Mapping[str, np.ndarray], *, patch_size: int,
           masks: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], str]:
  """Per image, the foreground share of every map (`PATCH_MAPS` and the full saliency), and the
  reference used: 'object mask' (pixel `masks` given, e.g. `SyntheticLT.object_mask`; patch maps
  are scored against the fraction of each patch it covers, `patch_fraction`) or 'top 25% salient
  patches' (`top_salient_patches`). Also 'foreground_area': the reference's own share of the
  image (a map spread evenly scores it)."""
  if masks is not None:
    fg_patch = patch_fraction(masks, patch_size)
    reference = 'object mask'
  else:
    fg_patch = top_salient_patches(maps['patch_scores'])
    reference = f'top {int(100 * TOP_SALIENT_FRACTION)}% salient patches'
  out = {name: foreground_share(maps[name], fg_patch) for name in PATCH_MAPS if name in maps}
  if masks is not None:
    out['saliency'] = foreground_share(maps['saliency'], masks)
  out['foreground_area'] = fg_patch.mean(axis=1)
  return out, reference


def share_stats(per_image: Mapping[str, np.ndarray], labels: np.ndarray,
                groups: Mapping[str, Sequence[int]]) -> dict[str, Any]:
  """Means of the per-image shares over all images and per group ({'head': class indices, ...});
  None for an empty group or an all-NaN map (e.g. BR attention of a model without BR prompts)."""
  labels = np.asarray(labels)

  def means(select):
    out = {}
    for name, values in per_image.items():
      v = np.asarray(values, np.float64)[select]
      v = v[~np.isnan(v)]
      out[name] = float(v.mean()) if v.size else None
    out['num_images'] = int(np.sum(select))
    return out

  stats = {'overall': means(np.ones(len(labels), bool))}
  for group, classes in groups.items():
    select = np.isin(labels, np.asarray(list(classes), np.int64))
    stats[group] = means(select) if select.any() else None
  return stats


def _mask_view(mask: np.ndarray, size: int) -> np.ndarray:
  """A pixel mask through the evaluation transform its image went through (resize + crop)."""
  rgb = np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=-1)
  return transforms.eval_transform(rgb, size)[..., 0] >= 128


def sample_eval_images(data_config, groups: Mapping[str, Sequence[int]], num: int, seed: int, *,
                       image_size: int) -> dict[str, Any]:
  """A seeded sample of `num` images of the eval split, spread over the groups in turn (head,
  medium, tail; a random class of the group, a random image of it, no image twice):
  {'images' (N, S, S, 3) uint8 after the evaluation transform, 'labels' (N,), 'masks' (N, S, S)
  bool object masks (the synthetic dataset) or None, 'ids' (N,) eval indices}."""
  source = data_lib.get_sources(data_config).eval
  labels = np.asarray(source.labels)
  rng = np.random.default_rng(seed)
  pools = [np.asarray(g) for g in groups.values() if len(g)] or [np.unique(labels)]
  by_class = {int(c): list(rng.permutation(np.flatnonzero(labels == c)))
              for c in np.unique(labels)}
  chosen = []
  for turn in range(4 * num + 4 * len(by_class)):
    if len(chosen) == num or not any(by_class.values()):
      break
    pool = [int(c) for c in pools[turn % len(pools)] if by_class.get(int(c))]
    if pool:
      chosen.append(int(by_class[pool[rng.integers(len(pool))]].pop()))
  images = np.stack([transforms.eval_transform(source[i]['image'], image_size) for i in chosen])
  masks = None
  if hasattr(source, 'object_mask'):
    masks = np.stack([_mask_view(source.object_mask(i), image_size) for i in chosen])
  return {'images': images, 'labels': labels[chosen], 'masks': masks, 'ids': np.asarray(chosen)}


@functools.lru_cache(maxsize=8)
def _cached_maps_fn(model: ltdpt.LTDPT, image_size: int):
  return make_maps_fn(model, image_size)


def compute(model: ltdpt.LTDPT, params: Any, images: np.ndarray, labels: np.ndarray, *,
            image_size: int, scale: float, batch_size: int = 64) -> dict[str, np.ndarray]:
  """`make_maps_fn` over a host batch of any length (padded to `batch_size` chunks so one
  program serves every chunk); numpy outputs."""
  fn = _cached_maps_fn(model, int(image_size))
  images = np.asarray(images, np.uint8)
  labels = np.asarray(labels, np.int32)
  n = len(images)
  size = min(batch_size, n)
  chunks = []
  for start in range(0, n, size):
    imgs, labs = images[start:start + size], labels[start:start + size]
    pad = size - len(imgs)
    if pad:
      imgs = np.concatenate([imgs, np.repeat(imgs[-1:], pad, 0)])
      labs = np.concatenate([labs, np.repeat(labs[-1:], pad, 0)])
    out = jax.device_get(fn(params, imgs, labs, jnp.float32(scale)))
    chunks.append({k: np.asarray(v)[:size - pad] for k, v in out.items()})
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
