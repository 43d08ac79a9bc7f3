"""Maps of what a model looks at (ltdpt_jax/maps.py), against independent computations.

Grad-CAM and the prompt attention are recomputed from the tokens entering the last block with a
hand-written jnp version of that block (npz naming, the paper's bias loops) and `jax.grad`; the
sown intermediates must leave the train step's program (FLOPs) unchanged; the synthetic object
masks must be the pixels the object was painted on.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltdpt_jax import maps
from ltdpt_jax import saliency as saliency_lib
from ltdpt_jax.data import synthetic
from ltdpt_jax.models import common

import npz_utils
import test_ltdpt as lt

LN_EPS = 1e-6


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
  path = tmp_path_factory.mktemp('ckpt') / 'tiny.npz'
  arrays = npz_utils.write_random_checkpoint(path, num_classes=None, seed=7, **lt.TINY)
  return str(path), arrays


def _ln(x, scale, bias):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / jnp.sqrt(var + LN_EPS) * scale + bias


def _last_block(a, l, tokens, bias):
  """Block l on all `tokens` (B, N, D) with an additive logit bias (B, 1, N, N), in jnp from the
  npz arrays; returns (outputs, attention probabilities (B, h, N, N))."""
  f = lambda k: jnp.asarray(a[f'Transformer/encoderblock_{l}/{k}'], jnp.float32)
  att = 'MultiHeadDotProductAttention_1/'
  y = _ln(tokens, f('LayerNorm_0/scale'), f('LayerNorm_0/bias'))
  q = jnp.einsum('bnd,dhk->bnhk', y, f(att + 'query/kernel')) + f(att + 'query/bias')
  k = jnp.einsum('bnd,dhk->bnhk', y, f(att + 'key/kernel')) + f(att + 'key/bias')
  v = jnp.einsum('bnd,dhk->bnhk', y, f(att + 'value/kernel')) + f(att + 'value/bias')
  logits = jnp.einsum('bqhk,bshk->bhqs', q, k) / math.sqrt(q.shape[-1]) + bias
  probs = jax.nn.softmax(logits, axis=-1)
  o = jnp.einsum('bhqs,bshk->bqhk', probs, v)
  x = tokens + jnp.einsum('bqhk,hkd->bqd', o, f(att + 'out/kernel')) + f(att + 'out/bias')
  y = _ln(x, f('LayerNorm_2/scale'), f('LayerNorm_2/bias'))
  y = jax.nn.gelu(y @ f('MlpBlock_3/Dense_0/kernel') + f('MlpBlock_3/Dense_0/bias'),
                  approximate=False)
  return x + y @ f('MlpBlock_3/Dense_1/kernel') + f('MlpBlock_3/Dense_1/bias'), probs


def _reference(a, params, c, x_in, sal, out):
  """logits(A) for the patch tokens A entering the last block (CLS and prompts fixed), and the
  last block's attention probabilities, written from the paper's equations."""
  mc = c.model
  L = npz_utils.np_depth(a)
  b0 = L - mc.num_br_blocks if mc.method == 'fr_br' else L
  bsz, n_img = x_in.shape[:2]
  m = n_img - 1
  prompts = [jnp.broadcast_to(params['fr_prompts'][L - 1], (bsz,) + params['fr_prompts'].shape[1:])]
  if mc.method == 'fr_br':
    dense = jnp.einsum('bk,bkg->bg', out['br_weights'],
                       jax.nn.one_hot(out['br_indices'], params['br_prompts'].shape[0]))
    prompts.append(jnp.einsum('bg,gnd->bnd', dense, params['br_prompts'][:, L - 1 - b0]))
  p = jnp.concatenate(prompts, axis=1)
  n = n_img + p.shape[1]
  bias = np.zeros((bsz, 1, n, n), np.float32)
  if mc.method != 'vpt':
    alpha = float(params['alpha'])
    for q in range(n_img, n_img + mc.num_fr_prompts):
      bias[:, 0, q, 1:n_img] = alpha * sal
    if mc.method == 'fr_br':
      beta = float(params['beta'])
      for q in range(n_img + mc.num_fr_prompts, n):
        bias[:, 0, q, 1:n_img] = beta * (1 - sal)

  def run(patches):
    tokens = jnp.concatenate([x_in[:, :1], patches, p], axis=1)
    y, probs = _last_block(a, L - 1, tokens, jnp.asarray(bias))
    cls = _ln(y[:, 0], jnp.asarray(a['Transformer/encoder_norm/scale']),
              jnp.asarray(a['Transformer/encoder_norm/bias']))
    feature = cls if mc.feature == 'cls' else (cls + y[:, n_img:].mean(1)) / 2
    w = params['head']['kernel']
    logits = (feature / jnp.linalg.norm(feature, axis=1, keepdims=True)) @ (
        w / jnp.linalg.norm(w, axis=0, keepdims=True))
    return logits, probs

  return run, m, n_img


CASES = [dict(method='fr_br'), dict(method='fr', feature='cls'), dict(method='vpt')]


@pytest.mark.parametrize('model_kw', CASES)
def test_gradcam_and_attention_equal_an_independent_computation(ckpt, model_kw):
  path, arrays = ckpt
  c, params = lt.setup_model(path, **model_kw)
  model = lt.build(c)
  images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), np.uint8)
  labels = np.array([0, 3, 1])
  got = maps.compute(model, params, images, labels, image_size=16, scale=25.0)

  # The model's own forward on the straightforward path, for the tokens entering the last block.
  sal = np.asarray(saliency_lib.patch_saliency(images, patch_size=4))
  np.testing.assert_allclose(got['patch_scores'], sal, atol=1e-6)
  x = images.astype(np.float32) * (2 / 255) - 1
  apply = jax.jit(lambda p_, x_, s_: maps.straightforward(model).apply(
      {'params': p_}, x_, s_, mutable=['intermediates']), compiler_options=lt.QUICK)
  out, inter = apply(params, x, None if model.method == 'vpt' else sal)
  x_in = inter['intermediates'][common.LAST_BLOCK_TOKENS][0]
  run, m, n_img = _reference(arrays, params, c, np.asarray(x_in), sal, out)
  logits, probs = jax.jit(run, compiler_options=lt.QUICK)(x_in[:, 1:])
  np.testing.assert_allclose(logits, got['logits'], rtol=2e-4, atol=2e-5)

  for key, classes in (('gradcam_pred', np.argmax(logits, -1)), ('gradcam_true', labels)):
    grad = jax.jit(jax.grad(lambda a_: jnp.sum(run(a_)[0][jnp.arange(3), classes])),
                   compiler_options=lt.QUICK)(x_in[:, 1:])
    weights = grad.mean(axis=1)                               # Selvaraju et al., Eq. 1
    want = jax.nn.relu(jnp.einsum('bd,bmd->bm', weights, x_in[:, 1:]))  # Eq. 2
    np.testing.assert_allclose(got[key], want, rtol=2e-3, atol=1e-6 * float(jnp.max(want)))
    assert (got[key] >= 0).all() and got[key].max() > 0

  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)
  sown = inter['intermediates']['backbone']['Transformer'][
      f'encoderblock_{lt.TINY["depth"] - 1}']['MultiHeadDotProductAttention_1']['attention_probs'][0]
  np.testing.assert_allclose(np.asarray(sown).sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(sown, probs, rtol=2e-4, atol=2e-6)
  fr = slice(n_img, n_img + c.model.num_fr_prompts)
  np.testing.assert_allclose(got['fr_attention'], probs[:, :, fr, 1:n_img].mean((1, 2)),
                             rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(got['cls_attention'], probs[:, :, 0, 1:n_img].mean(1),
                             rtol=2e-4, atol=1e-6)
  if model_kw['method'] == 'fr_br':
    br = slice(n_img + c.model.num_fr_prompts, None)
    np.testing.assert_allclose(got['br_attention'], probs[:, :, br, 1:n_img].mean((1, 2)),
                               rtol=2e-4, atol=1e-6)
  else:
    assert not got['br_attention'].any()


def test_sown_maps_leave_the_train_step_unchanged(monkeypatch):
  """The train step with the model's sow/perturb calls and with both replaced by no-ops
  compiles to the same FLOPs: looking inside costs training nothing."""
  import train_utils  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import train  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import train_step as step_lib  # pylint: disable=g-import-not-at-top
  setup = train.Setup(train_utils.tiny_config(), for_training=True)
  batch = {'image': jnp.zeros((16, 16, 16, 3), jnp.uint8), 'label': jnp.zeros((16,), jnp.int32)}

  def flops():
    fn = step_lib.make_train_step(setup.model, setup.tx, loss_config=setup.config.loss, seed=0,
                                  class_counts=setup.info.class_counts, drw_start_step=7,
                                  mesh=setup.mesh)
    return step_lib.compiled_flops(fn.lower(setup.state, setup.frozen, batch))

  with_maps = flops()
  monkeypatch.setattr(nn.Module, 'sow', lambda self, *a, **k: False)
  monkeypatch.setattr(nn.Module, 'perturb', lambda self, name, value, *a, **k: value)
  without = flops()
  assert with_maps is not None and with_maps == without


def test_object_masks_are_the_painted_pixels():
  """With the background and the noise zeroed, the painted pixels are exactly the mask."""
  src = synthetic.SyntheticLT('test', num_classes=20, num_test_per_class=3, image_size=32)
  src._bg = np.zeros_like(src.backgrounds)  # pylint: disable=protected-access
  src._noise = np.zeros_like(src.noise)  # pylint: disable=protected-access
  for i in range(len(src)):
    painted = src[i]['image'].astype(int).sum(-1) > 0
    np.testing.assert_array_equal(painted, src.object_mask(i), err_msg=str(i))


def test_saliency_falls_on_the_objects_more_than_their_area():
  """On the synthetic dataset at 64 px, the spectral residual's patch scores S put more of their
  mass on the object than its share of the image (1.3x on average, above it on most images)."""
  src = synthetic.SyntheticLT('test', num_classes=20, num_test_per_class=4, image_size=64)
  images = np.stack([src[i]['image'] for i in range(len(src))])
  masks = np.stack([src.object_mask(i) for i in range(len(src))])
  scores = np.asarray(saliency_lib.patch_saliency(images, patch_size=8))
  fg = maps.patch_fraction(masks, 8)
  share, area = maps.foreground_share(scores, fg), fg.mean(axis=1)
  assert np.mean(share / area) > 1.3, (share.mean(), area.mean())
  assert np.mean(share > area) > 0.6
  full = maps.foreground_share(np.asarray(saliency_lib.spectral_residual(images)), masks)
  assert full.mean() > masks.reshape(len(masks), -1).mean()


def test_shares_and_group_statistics():
  masks = np.zeros((2, 8, 8), bool)
  masks[:, :4, :4] = True  # the top-left patch of a 2 x 2 grid of 4-px patches
  fg = maps.patch_fraction(masks, 4)
  np.testing.assert_array_equal(fg, [[1, 0, 0, 0], [1, 0, 0, 0]])
  on = np.array([[3.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  share = maps.foreground_share(on, fg)
  assert share[0] == 0.75 and math.isnan(share[1])  # an all-zero map has no share
  top = maps.top_salient_patches(np.array([[0.1, 0.9, 0.5, 0.2]]))
  np.testing.assert_array_equal(top, [[0, 1, 0, 0]])  # ceil(25% of 4) = 1 patch
  stats = maps.share_stats({'fr_attention': share, 'br_attention': np.array([np.nan, np.nan])},
                           np.array([0, 1]), {'head': [0], 'medium': [1], 'tail': []})
  assert stats['overall']['fr_attention'] == 0.75 and stats['overall']['br_attention'] is None
  assert stats['head']['fr_attention'] == 0.75 and stats['medium']['fr_attention'] is None
  assert stats['tail'] is None and stats['overall']['num_images'] == 2
