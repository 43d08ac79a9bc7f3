"""Partition labels, PyTorch-semantics SGD with coupled weight decay, cosine schedule, and GNM."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ltdpt_jax import config_lib
from ltdpt_jax import optim


def _params():
  r = np.random.default_rng(0)
  f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  return {
      'backbone': {'Transformer': {'encoderblock_0': {'kernel': f(4, 4)},
                                  'encoder_norm': {'scale': f(4)}},
                   'embedding': {'kernel': f(2, 2, 3, 4)}},
      'prompts': {'fr': f(2, 3, 4)},
      'head': {'kernel': f(4, 5)},
  }


def _config(**optim_overrides):
  c = config_lib.base_config()
  for k, v in optim_overrides.items():
    c.optim[k] = v
  return c


def _make(cfg, total_steps):
  """The optimiser of a whole config, as train.Setup builds it."""
  return optim.make_optimizer(cfg.optim, total_steps=total_steps,
                              global_batch=cfg.data.batch_size, seed=cfg.train.seed)


def test_param_labels_from_regexes():
  p = _params()
  labels = optim.param_labels(p)
  assert labels['backbone']['Transformer']['encoderblock_0']['kernel'] == 'frozen'
  assert labels['backbone']['embedding']['kernel'] == 'frozen'
  assert labels['prompts']['fr'] == 'trainable' and labels['head']['kernel'] == 'trainable'
  # Move the final LayerNorm into the trainable partition; freeze the head by a non-anchored match.
  labels = optim.param_labels(p, (r'^backbone/(?!Transformer/encoder_norm/)', 'head/'))
  assert labels['backbone']['Transformer']['encoder_norm']['scale'] == 'trainable'
  assert labels['backbone']['Transformer']['encoderblock_0']['kernel'] == 'frozen'
  assert labels['head']['kernel'] == 'frozen'
  assert set(jax.tree.leaves(optim.param_labels(p, ()))) == {'trainable'}
  with pytest.raises(ValueError, match='Invalid regex'):
    optim.param_labels(p, ('(',))


def test_split_and_merge_round_trip():
  p = _params()
  trainable, frozen = optim.split_params(p, optim.param_labels(p))
  assert set(trainable) == {'prompts', 'head'} and set(frozen) == {'backbone'}
  merged = optim.merge_params(trainable, frozen)
  assert jax.tree.structure(merged) == jax.tree.structure(p)
  for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(p)):
    assert a is b
  with pytest.raises(ValueError, match='both partitions'):
    optim.merge_params(trainable, trainable)
  with pytest.raises(ValueError, match='same structure'):
    optim.split_params(p, {'head': 'trainable'})


def test_sgd_coupled_weight_decay_and_momentum_match_pytorch():
  """Two steps by hand with torch.optim.SGD(lr_t, momentum=0.9, weight_decay=wd) semantics."""
  cfg = _config(gnm_rho=0.0, lr=0.1, weight_decay=0.05, momentum=0.9)
  cfg.data.batch_size = 128
  total = 10
  tx = _make(cfg, total)
  theta = {'w': jnp.array([1.0, -2.0, 3.0]), 'b': jnp.array([0.5])}
  grads = [{'w': jnp.array([0.1, 0.2, -0.3]), 'b': jnp.array([1.0])},
           {'w': jnp.array([-0.4, 0.0, 0.6]), 'b': jnp.array([-2.0])}]
  state = tx.init(theta)
  cur = {k: np.asarray(v, np.float64) for k, v in theta.items()}
  buf = None
  for t, g in enumerate(grads):
    updates, state = tx.update(g, state, theta)
    theta = optax.apply_updates(theta, updates)
    lr_t = 0.1 * 0.5 * (1 + math.cos(math.pi * t / total))
    gp = {k: np.asarray(g[k], np.float64) + 0.05 * cur[k] for k in cur}
    buf = gp if buf is None else {k: 0.9 * buf[k] + gp[k] for k in cur}
    cur = {k: cur[k] - lr_t * buf[k] for k in cur}
    for k in cur:
      np.testing.assert_allclose(np.asarray(theta[k]), cur[k], rtol=1e-6, atol=1e-7)


def test_schedule_values_and_batch_scaling():
  cfg = _config()
  cfg.data.batch_size = 256
  assert optim.peak_learning_rate(cfg.optim, cfg.data.batch_size) == pytest.approx(0.01)
  assert optim.peak_learning_rate(cfg.optim, 64) == pytest.approx(0.0025)
  sched = optim.learning_rate(cfg.optim, 1000, cfg.data.batch_size)
  np.testing.assert_allclose([float(sched(s)) for s in (0, 250, 500, 1000, 1200)],
                             [0.01, 0.01 * (1 + math.cos(math.pi / 4)) / 2, 0.005, 0.0, 0.0],
                             atol=1e-8)
  with pytest.raises(ValueError, match='total_steps'):
    optim.learning_rate(cfg.optim, 0, cfg.data.batch_size)


def test_frozen_leaves_get_zero_updates_and_no_state():
  p = _params()
  tx = _make(_config(gnm_rho=0.05, weight_decay=0.1), 100)
  state = tx.init(p)
  trainable, _ = optim.split_params(p, optim.param_labels(p))
  n_trainable = sum(x.size for x in jax.tree.leaves(trainable))
  # Optimiser memory: momentum only for the trainable leaves (+ the key and step counters).
  arrays = [x for x in jax.tree.leaves(state) if hasattr(x, 'size')]
  assert sum(x.size for x in arrays if x.ndim > 0 and x.dtype == jnp.float32) == n_trainable
  masked = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  n_frozen_leaves = len(jax.tree.leaves(p['backbone']))
  assert sum(isinstance(x, optax.MaskedNode) for x in masked) == n_frozen_leaves
  grads = jax.tree.map(jnp.ones_like, p)
  eps = tx.perturbation(state, p)
  updates, _ = tx.update(grads, state, p)
  for u, e in zip(jax.tree.leaves(updates['backbone']), jax.tree.leaves(eps['backbone'])):
    assert not np.any(np.asarray(u)) and not np.any(np.asarray(e))
  for part in ('head', 'prompts'):
    for u, e in zip(jax.tree.leaves(updates[part]), jax.tree.leaves(eps[part])):
      assert np.all(np.asarray(u) != 0) and np.all(np.asarray(e) != 0)
  # On the trainable subtree alone the state holds exactly the same trainable momentum.
  state_t = tx.init(trainable)
  assert sum(x.size for x in jax.tree.leaves(state_t)
             if x.ndim > 0 and x.dtype == jnp.float32) == n_trainable


def _exact_clip_std():
  """Std of clip(Z/3, -1, 1), Z ~ N(0, 1): E = (1/9) E[Z^2; |Z|<3] + P(|Z|>3)."""
  inside = math.erf(3 / math.sqrt(2))                 # P(|Z| < 3)
  phi3 = math.exp(-4.5) / math.sqrt(2 * math.pi)
  return math.sqrt((inside - 6 * phi3) / 9 + (1 - inside))


def test_gnm_noise_std_bound_and_scale():
  rho, dis_mul = 0.05, 0.1
  tx = optim.gnm(optax.sgd(0.1), rho=rho, dis_mul=dis_mul, seed=3)
  params = {'a': jnp.zeros((400, 1000)), 'b': jnp.zeros((7,))}
  state = tx.init(params)
  for c in (1.0, 0.5):
    eps = tx.perturbation(state, params, scale=c)
    e = np.asarray(eps['a'], np.float64).ravel()
    bound = rho * dis_mul * c
    assert np.abs(e).max() <= bound * (1 + 1e-6)
    std = _exact_clip_std()      # 0.33250...
    assert abs(std - 0.3325) < 1e-3
    np.testing.assert_allclose(e.std(), bound * std, rtol=5e-3)
    np.testing.assert_allclose(e.mean(), 0.0, atol=bound * 2e-3)
    # Clipped, not resampled: P(|Z| > 3) = 0.27 % of the entries sit exactly at the bound.
    np.testing.assert_allclose(np.mean(np.abs(e) >= bound * (1 - 1e-6)), 1 - math.erf(3 / 2**.5),
                               rtol=0.1)
  full = tx.perturbation(state, params, scale=1.0)
  half = tx.perturbation(state, params, scale=jnp.float32(0.5))
  for f, h in zip(jax.tree.leaves(full), jax.tree.leaves(half)):
    np.testing.assert_allclose(np.asarray(h), 0.5 * np.asarray(f), rtol=1e-6)
  assert float(optim.gnm_scale(optim.drw_active(59, drw_start_step=60))) == 1.0
  assert float(optim.gnm_scale(optim.drw_active(60, drw_start_step=60))) == 0.5


def test_gnm_off_with_rho_zero():
  on = _make(_config(), 10)
  off = _make(_config(gnm_rho=0.0), 10)
  p = {'w': jnp.ones((5,))}
  s_off = off.init(p)
  assert jax.tree.structure(on.init(p)) == jax.tree.structure(s_off)   # same checkpoint layout
  assert not np.any(np.asarray(off.perturbation(s_off, p)['w']))
  assert off.perturb(p, s_off) is p
  with pytest.raises(ValueError, match='rho'):
    optim.gnm(optax.sgd(0.1), rho=-1.0)


def test_gnm_rng_advances_and_restores_from_state():
  tx = _make(_config(), 10)
  p = {'w': jnp.zeros((64,))}
  s0 = tx.init(p)
  e0 = np.asarray(tx.perturbation(s0, p)['w'])
  np.testing.assert_array_equal(np.asarray(tx.perturbation(s0, p)['w']), e0)  # same state
  _, s1 = tx.update({'w': jnp.zeros((64,))}, s0, p)
  e1 = np.asarray(tx.perturbation(s1, p)['w'])
  assert not np.allclose(e0, e1)
  _, s2 = tx.update({'w': jnp.zeros((64,))}, s1, p)
  assert not np.allclose(e1, np.asarray(tx.perturbation(s2, p)['w']))
  # A checkpoint round trip (plain numpy arrays) reproduces the noise of the next step.
  leaves, treedef = jax.tree.flatten(s1)
  restored = jax.tree.unflatten(treedef, [jnp.asarray(np.array(x)) for x in leaves])
  np.testing.assert_array_equal(np.asarray(tx.perturbation(restored, p)['w']), e1)
  # A fresh optimiser with the same seed replays the same stream; another seed does not.
  assert np.array_equal(np.asarray(tx.perturbation(tx.init(p), p)['w']), e0)
  cfg = _config()
  cfg.train.seed = 1
  other = _make(cfg, 10)
  assert not np.allclose(np.asarray(other.perturbation(other.init(p), p)['w']), e0)


def test_gnm_gradient_at_perturbed_point_update_with_unperturbed_weights():
  """loss = 0.5 ||theta - a||^2 + sum(theta^3)/3: the grad depends on where it is evaluated."""
  lr, wd, mom = 0.5, 0.3, 0.9
  inner = optim.sgd_coupled(lr, momentum=mom, weight_decay=wd)
  tx = optim.gnm(inner, rho=1.0, dis_mul=1.0, seed=0)    # large eps so every term is visible
  a = jnp.array([0.3, -1.0, 2.0])
  loss_fn = lambda th: (0.5 * jnp.sum((th['w'] - a) ** 2) + jnp.sum(th['w'] ** 3) / 3,
                        {'w_seen': th['w']})
  theta = {'w': jnp.array([1.0, 0.5, -0.5])}
  state = tx.init(theta)
  buf = np.zeros(3)
  th = np.asarray(theta['w'], np.float64)
  for step in range(2):
    c = 1.0 if step == 0 else 0.5
    eps = np.asarray(tx.perturbation(state, theta, scale=c)['w'], np.float64)
    (loss, aux), grads = tx.value_and_grad(loss_fn, has_aux=True)(theta, state, scale=c)
    np.testing.assert_allclose(np.asarray(aux['w_seen']), th + eps, rtol=1e-6)
    pert = th + eps
    np.testing.assert_allclose(float(loss),
                               0.5 * np.sum((pert - a) ** 2) + np.sum(pert ** 3) / 3, rtol=1e-5)
    g = (pert - np.asarray(a)) + pert ** 2
    np.testing.assert_allclose(np.asarray(grads['w']), g, rtol=1e-5)
    updates, state = tx.update(grads, state, theta)      # unperturbed params
    theta = optax.apply_updates(theta, updates)
    buf = mom * buf + (g + wd * th)                      # decay on the unperturbed theta
    th = th - lr * buf
    np.testing.assert_allclose(np.asarray(theta['w']), th, rtol=1e-5, atol=1e-6)


def test_gnm_composes_with_any_optax_optimizer_and_jits():
  inner = optax.adam(1e-2)
  tx = optim.gnm(inner, rho=0.05, dis_mul=0.1, seed=7)
  theta = {'w': jnp.linspace(-1.0, 1.0, 6)}
  loss_fn = lambda th, x: jnp.sum((th['w'] * x) ** 2)
  x = jnp.arange(6.0)

  @jax.jit
  def step(theta, state, c):
    loss, grads = tx.value_and_grad(loss_fn)(theta, state, x, scale=c)
    updates, state = tx.update(grads, state, theta)
    return optax.apply_updates(theta, updates), state, loss, grads

  state = tx.init(theta)
  new_theta, new_state, loss, grads = step(theta, state, jnp.float32(0.5))
  eps = tx.perturbation(state, theta, scale=0.5)
  want_grads = jax.grad(loss_fn)(jax.tree.map(jnp.add, theta, eps), x)
  np.testing.assert_allclose(np.asarray(grads['w']), np.asarray(want_grads['w']), rtol=1e-5)
  want_updates, _ = inner.update(want_grads, inner.init(theta), theta)
  np.testing.assert_allclose(np.asarray(new_theta['w']),
                             np.asarray(theta['w'] + want_updates['w']), rtol=1e-5, atol=1e-7)
  assert not np.array_equal(np.asarray(new_state.rng), np.asarray(state.rng))
