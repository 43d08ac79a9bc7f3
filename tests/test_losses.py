"""GCL / DRW / orthogonality losses against direct float64 numpy computations of their formulas."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltdpt_jax import losses


def _np_gcl(cos, labels, counts, z, s, m, noise_mul, weights=None):
  """The official GCLLoss.forward written out in float64 numpy (methods.md 4.1)."""
  cos = cos.astype(np.float64)
  mj = np.log(np.max(counts)) - np.log(counts.astype(np.float64))
  xi = np.clip(z.astype(np.float64) / 3.0, -1.0, 1.0)
  c = cos - noise_mul * np.abs(xi) * mj[None, :] / mj.max()
  rows = np.arange(len(labels))
  c[rows, labels] -= m
  logits = s * c
  lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
  nll = lse - logits[rows, labels]
  if weights is None:
    return nll.mean()
  wy = weights.astype(np.float64)[labels]
  return (wy * nll).sum() / wy.sum()


def _case(seed, b, c, imbalance=100.0):
  rng = np.random.default_rng(seed)
  counts = np.floor(500 * (1 / imbalance) ** (np.arange(c) / max(c - 1, 1))).astype(np.int64)
  counts = np.maximum(counts, 1)
  cos = rng.uniform(-1, 1, (b, c)).astype(np.float32)
  labels = rng.integers(0, c, b)
  z = rng.normal(size=(b, c)).astype(np.float32) * 1.5   # wide enough that clipping at +-1 happens
  return cos, labels, counts, z


@pytest.mark.parametrize('c,b,s,m,noise_mul,weighted', [
    (2, 8, 25.0, 0.1, 1.0, False), (10, 33, 25.0, 0.1, 1.0, True), (100, 64, 25.0, 0.1, 1.0, True),
    (100, 16, 30.0, 0.0, 0.5, False), (37, 20, 20.0, 0.1, 0.5, True)])
def test_gcl_matches_numpy_formula(c, b, s, m, noise_mul, weighted):
  cos, labels, counts, z = _case(c * 7 + b, b, c)
  assert np.any(np.abs(z / 3) > 1)  # clipping exercised
  w = losses.drw_weights(counts) if weighted else None
  got = losses.gcl_loss(jnp.asarray(cos), jnp.asarray(labels), counts, noise=jnp.asarray(z), s=s,
                        m=m, noise_mul=noise_mul, class_weights=w)
  want = _np_gcl(cos, labels, counts, z, s, m, noise_mul, w)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), want, rtol=2e-5)


def test_gcl_logits_noise_is_one_sided_and_spares_the_largest_class():
  cos = jnp.zeros((3, 3))
  labels = jnp.array([0, 1, 2])
  counts = np.array([100, 10, 1])
  z = jnp.array([[3.0, -3.0, 6.0], [-30.0, 1.5, -1.5], [0.0, 0.0, -3.0]])
  logits = np.asarray(losses.gcl_logits(cos, labels, counts, noise=z, s=1.0, m=0.0))
  # m_j / max m = [0, 0.5, 1]; |clip(z/3)| = 1, 1, 1 / 1, .5, .5 / 0, 0, 1.
  want = -np.array([[0.0, 0.5, 1.0], [0.0, 0.25, 0.5], [0.0, 0.0, 1.0]])
  np.testing.assert_allclose(logits, want, atol=1e-6)
  with_margin = np.asarray(losses.gcl_logits(cos, labels, counts, noise=None, s=2.0, m=0.1))
  np.testing.assert_allclose(with_margin, -0.2 * np.eye(3), atol=1e-7)


def test_gcl_no_noise_and_unit_weights():
  cos, labels, counts, z = _case(3, 16, 10)
  args = (jnp.asarray(cos), jnp.asarray(labels), counts)
  a = losses.gcl_loss(*args, noise=None)
  b = losses.gcl_loss(*args, noise=jnp.zeros_like(jnp.asarray(z)))
  np.testing.assert_allclose(float(a), float(b), rtol=1e-7)
  np.testing.assert_allclose(float(a), _np_gcl(cos, labels, counts, 0 * z, 25.0, 0.1, 1.0),
                             rtol=2e-5)
  u = losses.gcl_loss(*args, noise=jnp.asarray(z))
  w1 = losses.gcl_loss(*args, noise=jnp.asarray(z), class_weights=np.ones(10, np.float32))
  np.testing.assert_allclose(float(u), float(w1), rtol=1e-6)


def test_gcl_gradient_matches_analytic():
  cos, labels, counts, z = _case(5, 12, 10)
  w = losses.drw_weights(counts)
  s, m = 25.0, 0.1
  grad = jax.grad(lambda c: losses.gcl_loss(c, jnp.asarray(labels), counts, noise=jnp.asarray(z),
                                            s=s, m=m, class_weights=w))(jnp.asarray(cos))
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad))
  # d/dc of the weighted CE of s * c~: s * w_y (softmax - onehot) / sum w_y.
  mj = np.log(counts.max()) - np.log(counts)
  ct = cos - np.abs(np.clip(z / 3, -1, 1)) * mj / mj.max()
  ct[np.arange(12), labels] -= m
  p = np.exp(s * ct - (s * ct).max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  onehot = np.eye(10)[labels]
  wy = w.astype(np.float64)[labels]
  want = s * wy[:, None] * (p - onehot) / wy.sum()
  np.testing.assert_allclose(grad, want, atol=1e-5)


def test_gcl_jits_and_handles_degenerate_counts():
  cos, labels, _, z = _case(7, 8, 4)
  f = jax.jit(lambda c, y, n, e: losses.gcl_loss(c, y, n, noise=e))
  for counts in (np.array([5, 5, 5, 5]), np.array([50, 0, 3, 1])):
    val = f(jnp.asarray(cos), jnp.asarray(labels), jnp.asarray(counts), jnp.asarray(z))
    assert np.isfinite(float(val))
  # Equal counts: no cloud at all (the PyTorch code would divide 0 by 0).
  same = f(jnp.asarray(cos), jnp.asarray(labels), jnp.asarray(np.array([5, 5, 5, 5])),
           jnp.asarray(z))
  np.testing.assert_allclose(float(same), float(losses.gcl_loss(
      jnp.asarray(cos), jnp.asarray(labels), np.array([5, 5, 5, 5]), noise=None)), rtol=1e-6)
  # Zero counts are treated as one image.
  np.testing.assert_allclose(
      float(f(jnp.asarray(cos), jnp.asarray(labels), jnp.asarray(np.array([50, 0, 3, 1])),
              jnp.asarray(z))),
      _np_gcl(cos, labels, np.array([50, 1, 3, 1]), z, 25.0, 0.1, 1.0), rtol=2e-5)


def test_gcl_errors():
  cos = jnp.zeros((4, 3))
  with pytest.raises(ValueError, match='class_counts has 2 entries'):
    losses.gcl_loss(cos, jnp.zeros(4, jnp.int32), [1, 2], noise=None)
  with pytest.raises(ValueError, match='noise must be'):
    losses.gcl_loss(cos, jnp.zeros(4, jnp.int32), [1, 2, 3], noise=jnp.zeros((4, 2)))
  with pytest.raises(ValueError, match=r'labels must lie in \[0, 3\)'):
    losses.gcl_loss(cos, jnp.array([0, 1, 2, 3]), [1, 2, 3], noise=None)
  with pytest.raises(ValueError, match='labels must have shape'):
    losses.gcl_loss(cos, jnp.zeros(3, jnp.int32), [1, 2, 3], noise=None)


@pytest.mark.parametrize('beta', [0.9998, 0.9999, 0.99, 0.0])
def test_drw_weights_formula(beta):
  counts = np.floor(500 * 0.01 ** (np.arange(100) / 99)).astype(np.int64)
  w = losses.drw_weights(counts, beta)
  assert w.dtype == np.float32 and w.shape == (100,)
  raw = np.array([(1 - beta) / (1 - beta ** int(n)) for n in counts])
  np.testing.assert_allclose(w, raw / raw.sum() * 100, rtol=1e-6)
  np.testing.assert_allclose(w.sum(), 100.0, rtol=1e-5)
  if beta > 0:
    assert np.all(np.diff(w) >= 0) and w[-1] > w[0]   # rarer classes weigh more
  else:
    np.testing.assert_allclose(w, 1.0)


def test_drw_weights_edge_cases():
  w = losses.drw_weights([10, 0, 3])
  assert np.all(np.isfinite(w))
  np.testing.assert_allclose(w, losses.drw_weights([10, 1, 3]))
  with pytest.raises(ValueError, match='beta'):
    losses.drw_weights([1, 2], beta=1.0)


def _np_orth(p):
  v = p.reshape(p.shape[0], -1).astype(np.float64)
  total = 0.0
  for i, j in itertools.product(range(len(v)), repeat=2):
    if i != j:
      total += v[i] @ v[j] / (np.linalg.norm(v[i]) * np.linalg.norm(v[j]))
  return total


def test_orthogonality_loss_matches_double_loop():
  rng = np.random.default_rng(0)
  p = rng.normal(size=(20, 6, 10, 8)).astype(np.float32) + 0.3  # correlated groups
  got = losses.orthogonality_loss(jnp.asarray(p))
  np.testing.assert_allclose(float(got), _np_orth(p), rtol=1e-4, atol=1e-5)
  eye = jnp.eye(5).reshape(5, 5, 1)
  np.testing.assert_allclose(float(losses.orthogonality_loss(eye)), 0.0, atol=1e-7)
  same = jnp.ones((4, 3, 2))
  np.testing.assert_allclose(float(losses.orthogonality_loss(same)), 4 * 3, rtol=1e-6)
  np.testing.assert_allclose(float(losses.orthogonality_loss(-jnp.ones((2, 3)) *
                                                             jnp.array([[1.0], [-1.0]]))), -2.0,
                             rtol=1e-6)


def test_orthogonality_gradient_finite_and_correct():
  rng = np.random.default_rng(1)
  p = rng.normal(size=(4, 3, 5)).astype(np.float32)
  p[2] = 0.0   # a zero group must not produce NaNs
  g = np.asarray(jax.grad(losses.orthogonality_loss)(jnp.asarray(p)))
  assert np.all(np.isfinite(g))
  # Central finite differences in float64 on one nonzero entry.
  eps = 1e-3
  for idx in [(0, 1, 2), (3, 0, 4)]:
    hi, lo = p.astype(np.float64).copy(), p.astype(np.float64).copy()
    hi[idx] += eps
    lo[idx] -= eps
    fd = (_np_orth(hi[[0, 1, 3]]) - _np_orth(lo[[0, 1, 3]])) / (2 * eps)
    np.testing.assert_allclose(g[idx], fd, rtol=1e-3, atol=1e-4)


def test_total_loss():
  np.testing.assert_allclose(float(losses.total_loss(jnp.float32(1.5), jnp.float32(-2.0),
                                                     orth_lambda=0.5)), 0.5)
