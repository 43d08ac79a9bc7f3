"""Tests of the LT-DPT model (ltdpt_jax/models/ltdpt.py) on tiny ViTs, against a float64 numpy
reference written from the paper's equations (straightforward path: all tokens through every
block, explicit bias loops)."""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import skimage.transform

import npz_utils
from ltdpt_jax import cli
from ltdpt_jax import config_lib
from ltdpt_jax import models
from ltdpt_jax.models import ltdpt
from ltdpt_jax.models import vit_checkpoint

TINY = dict(patch=4, width=32, depth=3, heads=2, mlp=64, grid=4)
NUM_CLASSES = 5


@functools.lru_cache(maxsize=None)
def photos(size: int = 16) -> np.ndarray:
  imgs = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
  out = [skimage.transform.resize(im, (size, size), anti_aliasing=True) for im in imgs]
  return ((np.stack(out) - 0.5) / 0.5).astype(np.float32)


def saliency(binary: bool = False, seed: int = 0) -> np.ndarray:
  s = np.random.default_rng(seed).uniform(size=(3, 16)).astype(np.float32)
  return (s > 0.5).astype(np.float32) if binary else s


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
  path = tmp_path_factory.mktemp('ckpt') / 'tiny.npz'
  arrays = npz_utils.write_random_checkpoint(path, num_classes=None, seed=7, **TINY)
  return str(path), arrays


def tiny_config(checkpoint: str = '', **model):
  c = config_lib.base_config()
  c.model.backbone = 'custom'
  c.model.vit.update(patch_size=TINY['patch'], hidden_size=TINY['width'],
                     num_layers=TINY['depth'], num_heads=TINY['heads'], mlp_dim=TINY['mlp'])
  c.model.checkpoint = checkpoint
  c.model.update(num_fr_prompts=3, num_br_prompts=2, num_groups=4, top_k=2, num_br_blocks=2,
                 dropout=0.1)
  c.model.update(model)
  c.data.image_size = 16
  return c


def build(c, num_classes=NUM_CLASSES, **overrides):
  return models.build_model(c.model, num_classes, c.data.image_size, **overrides)


def shapes_of(c, num_classes=NUM_CLASSES):
  return ltdpt.abstract_params(build(c, num_classes), c.data.image_size)


def report(c, num_classes=NUM_CLASSES):
  return ltdpt.parameter_report(build(c, num_classes), c.data.image_size,
                                frozen_patterns=c.optim.frozen_patterns)


def init(c, rng, num_classes=NUM_CLASSES):
  """What train.Setup does: the backbone of config.model.checkpoint, the rest from rng."""
  size = c.data.image_size
  return ltdpt.init_params(build(c, num_classes), rng, size,
                           backbone=vit_checkpoint.load_backbone(c.model, size).params)


def random_trainable(params, seed=0, alpha=1.3, beta=0.7):
  """Prompts/keys/head at a scale comparable to the tokens, so every part affects the output."""
  rng = np.random.default_rng(seed)
  out = dict(params)
  for k in ('fr_prompts', 'br_prompts', 'br_keys'):
    if k in out:
      out[k] = jnp.asarray(rng.standard_normal(out[k].shape), jnp.float32)
  if 'alpha' in out:
    out['alpha'] = jnp.asarray(alpha + 0.5 * rng.standard_normal(out['alpha'].shape), jnp.float32)
  if 'beta' in out:
    out['beta'] = jnp.asarray(beta + 0.5 * rng.standard_normal(out['beta'].shape), jnp.float32)
  out['head'] = {'kernel': jnp.asarray(rng.standard_normal(out['head']['kernel'].shape),
                                       jnp.float32)}
  return out


@functools.lru_cache(maxsize=None)
def _backbone(ckpt_path):
  return vit_checkpoint.unflatten({k: jnp.asarray(v) for k, v in np.load(ckpt_path).items()})


def setup_model(ckpt_path, seed=0, **model):
  """Config and params (backbone from the checkpoint, random trainable parts), no init compile."""
  c = tiny_config(ckpt_path, **model)
  shapes = shapes_of(c)
  params = {k: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), v)
            for k, v in shapes.items() if k != 'backbone'}
  params['backbone'] = _backbone(ckpt_path)
  return c, random_trainable(params, seed=seed)


# ---------------------------------------------------------------------------------------------
# Independent numpy reference.
# ---------------------------------------------------------------------------------------------

def np_group_similarity(z, keys):
  """Eq. 4 with explicit loops: s[b, g] = mean_j cos(z[b, j], k_g)."""
  b_, m, _ = z.shape
  s = np.zeros((b_, keys.shape[0]))
  for b in range(b_):
    for g in range(keys.shape[0]):
      s[b, g] = np.mean([z[b, j] @ keys[g] / (np.linalg.norm(z[b, j]) * np.linalg.norm(keys[g]))
                         for j in range(m)])
  return s


def np_ltdpt(a, p, images, sal, c):
  """Straightforward LT-DPT forward in float64: returns logits, feature, BR weights/indices."""
  mc = c.model
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), p)
  n_layers = npz_utils.np_depth(a)
  fr_br = mc.method == 'fr_br'
  b0 = n_layers - mc.num_br_blocks if fr_br else n_layers
  x = npz_utils.np_embed(a, images)
  bsz, n_img = x.shape[:2]
  m = n_img - 1
  res = {}
  prev = None
  for l in range(n_layers):
    prompts = [np.broadcast_to(p['fr_prompts'][l], (bsz,) + p['fr_prompts'][l].shape)]
    if l >= b0:
      if l == b0:
        s = np_group_similarity(x[:, 1:], p['br_keys'])
        idx = np.argsort(-s, axis=1)[:, :mc.top_k]
        vals = np.take_along_axis(s, idx, axis=1)
        w = np.exp(vals) / np.exp(vals).sum(1, keepdims=True)
        pb = np.zeros((bsz,) + p['br_prompts'].shape[1:])
        for b in range(bsz):
          for j in range(mc.top_k):
            pb[b] += w[b, j] * p['br_prompts'][idx[b, j]]
        res.update(br_weights=w, br_indices=idx, br_similarity=s)
      prompts.append(pb[:, l - b0])
    pr = np.concatenate(prompts, axis=1)
    if prev is not None:
      pr = pr.copy()
      pr[:, :prev.shape[1]] += prev
    tokens = np.concatenate([x, pr], axis=1)
    n = tokens.shape[1]
    bias = np.zeros((bsz, 1, n, n))
    if mc.method != 'vpt':
      alpha = p['alpha'][l] if mc.per_block_scales else p['alpha']
      for q in range(n_img, n_img + mc.num_fr_prompts):
        for j in range(m):
          bias[:, 0, q, 1 + j] = alpha * sal[:, j]
      if l >= b0:
        beta = p['beta'][l - b0] if mc.per_block_scales else p['beta']
        for q in range(n_img + mc.num_fr_prompts, n):
          for j in range(m):
            bias[:, 0, q, 1 + j] = beta * (1 - sal[:, j])
    y = npz_utils.np_block(a, l, tokens, bias)
    x, out_prompts = y[:, :n_img], y[:, n_img:]
    prev = out_prompts if mc.prompt_mode == 'carry' else None
  cls = npz_utils.np_final_norm(a, x[:, 0])
  feature = cls if mc.feature == 'cls' else (cls + out_prompts.mean(1)) / 2
  w = p['head']['kernel']
  logits = (feature / np.linalg.norm(feature, axis=1, keepdims=True)) @ (
      w / np.linalg.norm(w, axis=0, keepdims=True))
  res.update(feature=feature, logits=logits)
  return res


# XLA's cheap CPU compile settings: these tiny programs run a few times, so compile time wins.
QUICK = {'xla_backend_optimization_level': 0}


@functools.lru_cache(maxsize=None)
def _jitted_apply(model, train):
  def f(params, images, sal, rng):
    return model.apply({'params': params}, images, sal, train=train, rngs={'dropout': rng},
                       mutable=['intermediates'])
  return jax.jit(f, compiler_options=QUICK)


def run(model, params, images, sal, *, train=False, rng=None):
  """(outputs, sown intermediates) of model.apply, jitted once per model."""
  rng = jax.random.key(0) if rng is None else rng
  out, v = _jitted_apply(model, train)(params, images, sal, rng)
  return out, v['intermediates']


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


CASES = [
    dict(method='fr_br'),
    dict(method='fr_br', prompt_mode='carry', per_block_scales=True),
    dict(method='fr', feature='cls'),
    dict(method='vpt'),
]


@pytest.mark.parametrize('model_kw', CASES)
def test_matches_numpy_reference(ckpt, model_kw):
  path, arrays = ckpt
  c, params = setup_model(path, **model_kw)
  images, sal = photos(), saliency()
  out, _ = run(build(c), params, images, sal)
  ref = np_ltdpt(arrays, params, images, sal, c)
  assert rel_err(out['feature'], ref['feature']) < 1e-4
  assert rel_err(out['logits'], ref['logits']) < 1e-4
  if model_kw['method'] == 'fr_br':
    np.testing.assert_array_equal(out['br_indices'], ref['br_indices'])
    np.testing.assert_allclose(out['br_weights'], ref['br_weights'], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out['br_similarity'], ref['br_similarity'], rtol=1e-5, atol=1e-6)
  else:
    assert 'br_weights' not in out


def _logit_shapes(inter):
  blocks = inter['backbone']['Transformer']
  return [blocks[f'encoderblock_{i}']['MultiHeadDotProductAttention_1']['attention_logits'][0].shape
          for i in range(TINY['depth'])]


@pytest.mark.parametrize('model_kw', [
    dict(method='fr_br'), dict(method='fr', feature='cls'), dict(method='vpt'),
    dict(method='fr_br', prompt_mode='carry', per_block_scales=True),
])
def test_skipping_dead_work_equals_straightforward_path(ckpt, model_kw):
  c, params = setup_model(ckpt[0], **model_kw)
  images, sal = photos(), saliency()
  fast = build(c)
  slow = build(c, skip_dead_prompt_work=False)
  of, vf = run(fast, params, images, sal)
  os_, vs = run(slow, params, images, sal)
  for k in os_:
    np.testing.assert_allclose(of[k], os_[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # The fast path really computes fewer query rows.
  n_img, b0 = 17, 1 if model_kw['method'] == 'fr_br' else 3
  n_tok = lambda l: n_img + 3 + (2 if l >= b0 else 0)
  slow_shapes = _logit_shapes(vs)
  assert [s[2:] for s in slow_shapes] == [(n_tok(l), n_tok(l)) for l in range(3)]
  fast_q = [s[2] for s in _logit_shapes(vf)]
  last_q = 1 + (n_tok(2) - n_img if model_kw.get('feature') != 'cls' else 0)
  if model_kw.get('prompt_mode') == 'carry':
    assert fast_q == [n_tok(0), n_tok(1), last_q]
  else:
    assert fast_q == [n_img, n_img, last_q]


def _expected_bias(c, params, sal, q_types, n_keys_img, l):
  """Bias matrix (B, Nq, Nk) by explicit indexing from the token types (numpy)."""
  mc = c.model
  b0 = TINY['depth'] - mc.num_br_blocks
  alpha = float(params['alpha'])
  beta = float(params['beta'])
  n_fr, n_br = mc.num_fr_prompts, (mc.num_br_prompts if l >= b0 else 0)
  nk = n_keys_img + n_fr + n_br
  out = np.zeros((3, len(q_types), nk))
  for qi, t in enumerate(q_types):
    for kj in range(1, n_keys_img):
      if t == 'fr':
        out[:, qi, kj] = alpha * sal[:, kj - 1]
      elif t == 'br':
        out[:, qi, kj] = beta * (1 - sal[:, kj - 1])
  return out


@pytest.mark.parametrize('skip', [False, True])
def test_bias_lands_only_on_intended_entries(ckpt, skip):
  c, params = setup_model(ckpt[0], method='fr_br')
  params = dict(params, alpha=jnp.float32(2.5), beta=jnp.float32(-1.7))
  zero = dict(params, alpha=jnp.float32(0.0), beta=jnp.float32(0.0))
  model = build(c, skip_dead_prompt_work=skip)
  images, sal = photos(), saliency()
  _, v1 = run(model, params, images, sal)
  _, v0 = run(model, zero, images, sal)
  blocks1 = v1['backbone']['Transformer']
  blocks0 = v0['backbone']['Transformer']
  for l in range(3):
    name = f'encoderblock_{l}'
    d = (blocks1[name]['MultiHeadDotProductAttention_1']['attention_logits'][0]
         - blocks0[name]['MultiHeadDotProductAttention_1']['attention_logits'][0])
    n_br = 2 if l >= 1 else 0
    if not skip:
      q_types = ['cls'] + ['patch'] * 16 + ['fr'] * 3 + ['br'] * n_br
    elif l < 2:
      q_types = ['cls'] + ['patch'] * 16
    else:
      q_types = ['cls'] + ['fr'] * 3 + ['br'] * n_br
    expect = _expected_bias(c, params, sal, q_types, 17, l)
    for h in range(TINY['heads']):  # same bias on every head
      np.testing.assert_allclose(d[:, h], expect, atol=2e-5)
    if skip and l < 2:
      assert not np.asarray(expect).any()  # early blocks of the fast path have no bias at all


def _mass(v, b, rows, cols):
  """Mean over heads and the given query rows of image b of the attention mass on key cols."""
  logits = np.asarray(
      v['backbone']['Transformer']['encoderblock_2'][
          'MultiHeadDotProductAttention_1']['attention_logits'][0], np.float64)[b]
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return float(probs[:, rows][..., cols].sum(-1).mean())


def test_larger_alpha_beta_raise_mass_on_salient_background_patches(ckpt):
  c, params = setup_model(ckpt[0], method='fr_br')
  model = build(c)
  images, sal = photos(), saliency(binary=True)
  fr_mass, br_mass = [], []
  for scale in (0.0, 1.0, 4.0):
    p = dict(params, alpha=jnp.float32(scale), beta=jnp.float32(scale))
    _, v = run(model, p, images, sal)
    # Last block rows: [CLS | 3 FR | 2 BR]; keys: [CLS | 16 patches | prompts]. Per image b:
    # FR rows' mass on salient patches, BR rows' mass on non-salient ones.
    fr_mass.append(np.mean([_mass(v, b, slice(1, 4), 1 + np.flatnonzero(sal[b]))
                            for b in range(3)]))
    br_mass.append(np.mean([_mass(v, b, slice(4, 6), 1 + np.flatnonzero(1 - sal[b]))
                            for b in range(3)]))
  assert fr_mass[0] < fr_mass[1] < fr_mass[2], fr_mass
  assert br_mass[0] < br_mass[1] < br_mass[2], br_mass
  assert fr_mass[2] > fr_mass[0] + 0.1 and br_mass[2] > br_mass[0] + 0.1


def test_br_weights_equal_numpy_eq4_on_embedding(ckpt):
  """With H = L the first BR block's input patch tokens are the embeddings, computed in numpy."""
  path, arrays = ckpt
  c, params = setup_model(path, method='fr_br', num_br_blocks=3, top_k=3)
  out, v = run(build(c), params, photos(), saliency())
  z = npz_utils.np_embed(arrays, photos())[:, 1:]
  np.testing.assert_allclose(v['br_patch_tokens'][0], z, rtol=1e-5, atol=1e-5)
  s = np_group_similarity(z, np.asarray(params['br_keys'], np.float64))
  order = np.argsort(-s, axis=1)[:, :3]
  vals = np.take_along_axis(s, order, axis=1)
  w = np.exp(vals) / np.exp(vals).sum(1, keepdims=True)
  np.testing.assert_array_equal(out['br_indices'], order)
  np.testing.assert_allclose(out['br_weights'], w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['br_weights'].sum(-1), 1.0, rtol=1e-6)


def test_gradients_reach_keys_selected_groups_and_the_right_scales(ckpt):
  images, sal = photos()[:2], saliency()[:2]
  grads = {}
  for mode in ('replace', 'carry'):
    c, params = setup_model(ckpt[0], method='fr_br', top_k=2, per_block_scales=True,
                            prompt_mode=mode)
    model = build(c)
    trainable = {k: v for k, v in params.items() if k != 'backbone'}

    def loss(t, model=model, params=params):
      out = model.apply({'params': dict(t, backbone=params['backbone'])}, images, sal)
      return out['logits'][0, 1], out['br_indices'][0]

    g, sel = jax.jit(jax.grad(loss, has_aux=True), compiler_options=QUICK)(trainable)
    grads[mode] = jax.tree.map(lambda x: np.abs(np.asarray(x)), g)
    grads[mode + '_sel'] = np.asarray(sel)
    grads[mode + '_report'] = report(c)
  g, sel = grads['replace'], grads['replace_sel']
  gp = g['br_prompts'].sum(axis=(1, 2, 3))
  assert (gp[sel] > 0).all() and (gp[np.setdiff1d(np.arange(4), sel)] == 0).all()
  assert g['br_keys'].sum() > 0                                  # through the softmax weights
  assert g['alpha'][2] > 0 and (g['alpha'][:2] == 0).all()       # replace: only the last block
  assert g['beta'][1] > 0 and g['beta'][0] == 0
  assert (g['fr_prompts'].sum(axis=(1, 2)) > 0).all()            # every block's, as keys/values
  assert grads['replace_report']['bias_scales_with_gradient'] == 2
  g = grads['carry']
  assert (g['alpha'] > 0).all() and (g['beta'] > 0).all()        # carry: every block's scale
  assert grads['carry_report']['bias_scales'] == 5
  assert grads['carry_report']['bias_scales_with_gradient'] == 5


@pytest.mark.parametrize('h,expected', [(3, 552_960), (6, 1_013_760), (12, 1_935_360)])
def test_parameter_report_table7(h, expected):
  c = config_lib.base_config()  # ViT-B/16 with the paper's defaults
  c.model.num_br_blocks = h
  r = report(c, 100)
  assert r['fr_prompts'] + r['br_prompts'] == expected
  assert r['fr_prompts'] == 12 * 10 * 768 and r['br_prompts'] == 20 * h * 10 * 768
  assert r['br_keys'] == 20 * 768 and r['bias_scales'] == 2 and r['head'] == 768 * 100
  assert r['backbone'] == 86_567_656 - 769_000 and r['frozen'] == r['backbone']
  assert r['trainable'] == expected + 20 * 768 + 2 + 768 * 100
  assert r['bias_scales_with_gradient'] == 2


def test_random_init_tree_matches_report_and_prompt_init(ckpt):
  c = tiny_config(method='fr_br', per_block_scales=True, num_fr_prompts=20, num_groups=8,
                  num_br_prompts=8)
  params = init(c, jax.random.key(0))
  r = report(c)
  count = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))
  trainable = {k: v for k, v in params.items() if k != 'backbone'}
  assert set(trainable) == {'fr_prompts', 'br_prompts', 'br_keys', 'alpha', 'beta', 'head'}
  assert r['trainable'] == count(trainable)
  assert r['frozen'] == r['backbone'] == count(params['backbone'])
  assert sum(r[k] for k in ('fr_prompts', 'br_prompts', 'br_keys', 'bias_scales', 'head')) == \
      r['trainable']
  assert params['alpha'].shape == (3,) and params['beta'].shape == (2,)
  np.testing.assert_array_equal(params['alpha'], 1.0)
  assert r['bias_scales_with_gradient'] == 2  # the last block's alpha and beta only
  # Truncated normal std 0.02 (cut at 2 sigma of the base normal).
  for k in ('fr_prompts', 'br_prompts', 'br_keys', 'head'):
    v = np.asarray(params[k]['kernel'] if k == 'head' else params[k])
    if v.size > 1000:
      assert abs(v.std() - 0.02) < 0.0015, (k, v.std())
    assert np.abs(v).max() <= 2 * 0.02 / 0.8796 + 1e-6
  assert np.asarray(params['backbone']['Transformer']['posembed_input']['pos_embedding']).std() > 0
  # The same rng with a checkpoint gives the same trainable init and the checkpoint's backbone.
  path, arrays = ckpt
  c.model.checkpoint = path
  loaded = init(c, jax.random.key(0))
  for k in trainable:
    jax.tree.map(np.testing.assert_array_equal, loaded[k], trainable[k])
  flat = vit_checkpoint.flatten(loaded['backbone'])
  assert flat.keys() == arrays.keys()
  for k in flat:
    np.testing.assert_array_equal(flat[k], arrays[k])
  other = init(c, jax.random.key(1))
  assert not np.allclose(other['fr_prompts'], loaded['fr_prompts'])
  # Other methods' trees.
  for method, keys in (('fr', {'fr_prompts', 'alpha', 'head'}), ('vpt', {'fr_prompts', 'head'})):
    c.model.method = method
    shapes = shapes_of(c)
    assert set(shapes) - {'backbone'} == keys
    assert report(c)['trainable'] == count(
        {k: shapes[k] for k in keys})


def test_init_params_rejects_wrong_architecture(ckpt, tmp_path):
  path, _ = ckpt
  other = tmp_path / 'wide.npz'
  npz_utils.write_random_checkpoint(other, **dict(TINY, width=48, heads=3), num_classes=None)
  with pytest.raises(ValueError) as e:
    init(tiny_config(str(other)), jax.random.key(0))
  msg = str(e.value)
  assert 'width 32' in msg and 'width 48' in msg and "backbone='custom'" in msg
  c = tiny_config(path)
  c.model.backbone = 'b16'  # a preset name with a custom-size file
  with pytest.raises(ValueError, match=r'\[b16\].*width 32'):
    init(c, jax.random.key(0))


def test_dropout_and_errors(ckpt):
  c, params = setup_model(ckpt[0], method='fr_br')  # dropout 0.1
  model = build(c)
  images, sal = photos(), saliency()
  ev1, _ = run(model, params, images, sal)
  ev2, _ = run(model, params, images, sal, rng=jax.random.key(5))
  np.testing.assert_array_equal(ev1['logits'], ev2['logits'])
  tr, _ = run(model, params, images, sal, train=True)
  np.testing.assert_allclose(tr['feature'], ev1['feature'], rtol=1e-6)  # feature before dropout
  assert not np.allclose(tr['logits'], ev1['logits'], atol=1e-4)
  with pytest.raises(ValueError, match=r'saliency must have shape .*\(3, 16\)'):
    jax.eval_shape(lambda: model.apply({'params': params}, images, sal[:, :15]))
  with pytest.raises(ValueError, match='top_k'):
    build(tiny_config(top_k=5))
  # 'vpt' ignores the saliency.
  cv, pv = setup_model(ckpt[0], method='vpt')
  mv = build(cv)
  np.testing.assert_array_equal(run(mv, pv, images, None)[0]['logits'],
                                run(mv, pv, images, sal)[0]['logits'])


# ---------------------------------------------------------------------------------------------
# Attention implementation and masked padding (config.model.attention, pad_attention_to).
# ---------------------------------------------------------------------------------------------

def _outputs_maps_grads(model, params, images, sal):
  """(outputs, sown intermediates, gradients of the trainable parameters) in one program."""
  trainable = {k: v for k, v in params.items() if k != 'backbone'}

  def loss(t):
    out, v = model.apply({'params': dict(t, backbone=params['backbone'])}, images, sal,
                         mutable=['intermediates'])
    return (out['logits'] ** 2).sum() + out['feature'].sum(), (out, v['intermediates'])

  (_, (out, inter)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True),
                                     compiler_options=QUICK)(trainable)
  return out, inter, grads


@pytest.mark.parametrize('model_kw', [
    dict(method='fr_br'), dict(method='fr_br', prompt_mode='carry', per_block_scales=True),
])
def test_padded_attention_equals_unpadded(ckpt, model_kw):
  """Queries and keys padded to a multiple of 8 with masked keys (the layout the cuDNN path
  needs), on the XLA path: the same outputs, gradients and sown (unpadded) attention maps.
  Sequences here: 17 image tokens + 3 FR (+ 2 BR) prompts = 20 or 22 keys, queries 17, 20-22 or
  6 rows: every one gets padded rows and masked keys."""
  c, params = setup_model(ckpt[0], **model_kw)
  images, sal = photos(), saliency()
  plain, padded = build(c), build(c, pad_attention_to=8)
  assert plain.pad_attention_to == 0 and padded.pad_attention_to == 8
  o1, v1, g1 = _outputs_maps_grads(plain, params, images, sal)
  o2, v2, g2 = _outputs_maps_grads(padded, params, images, sal)
  for k in o1:
    np.testing.assert_allclose(o2[k], o1[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for name in ('attention_logits', 'attention_probs'):
    for l in range(TINY['depth']):
      a = v1['backbone']['Transformer'][f'encoderblock_{l}']['MultiHeadDotProductAttention_1']
      b = v2['backbone']['Transformer'][f'encoderblock_{l}']['MultiHeadDotProductAttention_1']
      assert a[name][0].shape == b[name][0].shape, (name, l)
      np.testing.assert_allclose(b[name][0], a[name][0], rtol=1e-5, atol=1e-5)
  for path, a, b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g1),
                        jax.tree.leaves(g2)):
    scale = float(np.abs(np.asarray(a)).max()) + 1e-12
    np.testing.assert_allclose(np.asarray(b) / scale, np.asarray(a) / scale, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path[0]))
  assert float(np.abs(np.asarray(g1['alpha'])).max()) > 0  # the bias gradient flows through it


def test_attend_pads_and_masks():
  """`vit.attend` with padding: padded keys get exp(MASK_VALUE - max) = 0 probability, the
  output rows and the sown maps are the unpadded ones."""
  from ltdpt_jax.models import vit as vit_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32)
             for s in ((2, 5, 3, 4), (2, 7, 3, 4), (2, 7, 3, 4)))
  bias = jnp.asarray(rng.standard_normal((2, 1, 5, 7)), jnp.float32)
  sown, sown_padded = {}, {}
  want = vit_lib.attend(q, k, v, bias, sow=sown.__setitem__)
  got = vit_lib.attend(q, k, v, bias, pad_to=8, sow=sown_padded.__setitem__)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert got.shape == (2, 5, 3, 4)
  for name in ('attention_logits', 'attention_probs'):
    assert sown_padded[name].shape == sown[name].shape == (2, 3, 5, 7)
    np.testing.assert_allclose(sown_padded[name], sown[name], rtol=1e-6, atol=1e-6)
  pq, pk, _, pb = vit_lib.pad_attention(q, k, v, bias, 8)
  assert pq.shape[1] == pk.shape[1] == 8 and pb.shape == (2, 1, 8, 8)
  assert (np.asarray(pb[..., 7:]) == vit_lib.MASK_VALUE).all()
  np.testing.assert_array_equal(pb[:, :, :5, :7], bias)
  assert vit_lib.pad_attention(q, k, v, None, 1)[3] is None  # nothing padded, no bias
  assert vit_lib.pad_attention(q, q, q, None, 5)[3] is None  # 5 already a multiple
  assert vit_lib.padded_length(217, 8) == 224 and vit_lib.padded_length(21, 8) == 24


def test_attention_options_on_cpu(ckpt, caplog):
  """'auto' (the default) on a CPU is the XLA path, bit for bit, and says so once in the log;
  'cudnn' there is a clear error; invalid values are refused when the model is built."""
  from ltdpt_jax.models import vit as vit_lib  # pylint: disable=g-import-not-at-top
  c, params = setup_model(ckpt[0], method='fr_br')
  assert c.model.attention == 'auto' and build(c).attention == 'auto'
  images, sal = photos(), saliency()
  vit_lib._LOGGED.clear()  # pylint: disable=protected-access
  with caplog.at_level('INFO'):
    auto, _ = run(build(c), params, images, sal)
    other = build(c, dropout=0.2)  # a second model, traced: no second line
    jax.eval_shape(lambda: other.apply({'params': params}, images, sal))
  xla, _ = run(build(c, attention='xla'), params, images, sal)
  np.testing.assert_array_equal(auto['logits'], xla['logits'])
  lines = [r.getMessage() for r in caplog.records if "attention='auto'" in r.getMessage()]
  assert len(lines) == 1 and 'XLA attention path' in lines[0] and "'cpu'" in lines[0]
  bf16 = tiny_config(ckpt[0], method='fr_br', dtype='bfloat16', attention='cudnn')
  with pytest.raises(ValueError, match="attention='cudnn' cannot run"):
    jax.eval_shape(lambda: build(bf16).apply({'params': params}, images, sal))
  with pytest.raises(ValueError, match="needs dtype='bfloat16'"):
    build(tiny_config(attention='cudnn'))
  for bad, match in ((dict(attention='flash'), 'attention'),
                     (dict(remat_policy='everything'), 'remat_policy'),
                     (dict(pad_attention_to=-8), 'pad_attention_to'),
                     (dict(pad_attention_to=7), 'odd')):
    with pytest.raises(ValueError, match=match):
      build(tiny_config(**bad))
    with pytest.raises(ValueError, match=match):
      cli.validate_config(tiny_config(**bad))


def test_cudnn_branch_pads_to_what_cudnn_accepts(ckpt, monkeypatch):
  """The cuDNN branch on a CPU, with `jax.nn.dot_product_attention` replaced by a stand-in that
  checks what cuDNN requires (bf16 q/k/v, a 4-D bf16 bias of the full padded (T, S), even T and
  S: multiples of 8 here) and computes with XLA: the model's outputs equal the XLA path's."""
  from ltdpt_jax.models import vit as vit_lib  # pylint: disable=g-import-not-at-top
  seen = []
  xla_attention = jax.nn.dot_product_attention

  def stand_in(q, k, v, bias=None, *, implementation=None):
    assert implementation == 'cudnn'
    assert q.dtype == k.dtype == v.dtype == jnp.bfloat16
    assert q.shape[1] % 8 == 0 and k.shape[1] % 8 == 0, (q.shape, k.shape)
    if bias is not None:
      assert bias.ndim == 4 and bias.dtype == jnp.bfloat16
      assert bias.shape[2:] == (q.shape[1], k.shape[1]), (bias.shape, q.shape, k.shape)
    seen.append((q.shape[1], k.shape[1], None if bias is None else bias.shape))
    return xla_attention(q, k, v, bias=bias, implementation='xla')

  c, params = setup_model(ckpt[0], method='fr_br', dtype='bfloat16')
  images, sal = photos(), saliency()
  want, _ = run(build(c, attention='xla'), params, images, sal)
  monkeypatch.setattr(vit_lib, '_cudnn_unavailable', lambda dtype: None)
  monkeypatch.setattr(jax.nn, 'dot_product_attention', stand_in)
  model = build(c, attention='cudnn')
  got = jax.jit(lambda p: model.apply({'params': p}, images, sal))(params)
  # 17 image rows, 20 / 22 keys: padded to 24; the last block's 6 query rows to 8.
  assert [s[:2] for s in seen] == [(24, 24), (24, 24), (8, 24)]
  assert seen[0][2] == (1, 2, 24, 24) and seen[2][2] == (3, 2, 8, 24)  # mask only; saliency
  for k in ('logits', 'feature'):
    np.testing.assert_allclose(np.asarray(got[k], np.float32), np.asarray(want[k], np.float32),
                               atol=2e-2, err_msg=k)


def test_linear_probe_is_head_only_and_matches_the_straightforward_path():
  import train_utils  # pylint: disable=g-import-not-at-top
  from ltdpt_jax.models import vit  # pylint: disable=g-import-not-at-top
  c = train_utils.tiny_config(epochs=1, drw_epochs=0, batch_size=32)
  c.model.method = 'linear'
  model = models.build_model(c.model, 6, 16)
  report = ltdpt.parameter_report(model, 16, frozen_patterns=('^backbone/',))
  assert report['trainable'] == report['head'] == 32 * 6 and report['fr_prompts'] == 0
  params = ltdpt.init_params(model, jax.random.key(0), 16)
  assert sorted(params) == ['backbone', 'head']
  full = models.build_model(c.model, 6, 16, skip_dead_prompt_work=False)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  a = model.apply({'params': params}, x)
  b = full.apply({'params': params}, x)
  np.testing.assert_allclose(a['logits'], b['logits'], atol=1e-6)
  # The feature is the plain ViT's final-LayerNorm CLS: the backbone as pretrained.
  plain = vit.VisionTransformer(4, 32, 2, 2, 64)
  np.testing.assert_allclose(a['feature'], plain.apply({'params': params['backbone']}, x)['cls'],
                             atol=1e-6)
