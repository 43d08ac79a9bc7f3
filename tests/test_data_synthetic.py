"""The embedded synthetic long-tailed dataset: profile, determinism, shapes, learnability."""

import pickle

import numpy as np
import pytest

from ltdpt_jax.data import synthetic


def test_profile_and_labels():
  tr = synthetic.SyntheticLT('train', num_classes=20, imbalance_ratio=100, num_train_max=200)
  want = [int(200 * 0.01 ** (i / 19)) for i in range(20)]
  assert tr.class_counts.tolist() == want and len(tr) == sum(want)
  np.testing.assert_array_equal(tr.labels, np.repeat(np.arange(20), want))
  te = synthetic.SyntheticLT('test', num_classes=20, num_test_per_class=7)
  assert len(te) == 140 and np.all(np.bincount(te.labels) == 7)
  ex = tr[len(tr) - 1]
  assert ex['label'] == 19 and ex['id'] == len(tr) - 1
  with pytest.raises(IndexError):
    tr[len(tr)]
  with pytest.raises(ValueError, match='empty class'):
    synthetic.SyntheticLT('train', num_train_max=10, imbalance_ratio=100)
  with pytest.raises(ValueError, match='supports 2..64'):
    synthetic.SyntheticLT('train', num_classes=65)


def test_classes_are_shape_times_pattern():
  assert synthetic.shape_pattern_grid(20) == (5, 4)
  names = synthetic.class_names(20)
  assert len(set(names)) == 20 and names[0] == 'red circle' and names[19] == 'stripes ring'
  for k in (2, 10, 33, 64):
    s, p = synthetic.shape_pattern_grid(k)
    assert s * p >= k and s <= len(synthetic.SHAPES) and p <= len(synthetic.PATTERNS)
  # Shape areas inside [-1, 1]^2 against their closed forms.
  v, u = (np.mgrid[0:400, 0:400] + 0.5) / 200 - 1
  area = lambda s: synthetic.shape_mask(s, u, v).mean() * 4  # noqa: E731
  assert area('circle') == pytest.approx(np.pi, abs=0.01)
  assert area('square') == pytest.approx(1.6 ** 2, abs=0.01)
  assert area('diamond') == pytest.approx(2.0, abs=0.01)
  assert area('ring') == pytest.approx(np.pi * (1 - 0.55 ** 2), abs=0.01)
  assert area('cross') == pytest.approx(2 * 0.6 * 1.9 - 0.36, abs=0.01)


@pytest.mark.parametrize('size', [32, 48])
def test_images_deterministic_and_any_resolution(size):
  kw = dict(num_classes=10, imbalance_ratio=10, num_train_max=20, image_size=size, seed=3)
  a, b = synthetic.SyntheticLT('train', **kw), synthetic.SyntheticLT('train', **kw)
  for i in (0, 5, len(a) - 1):
    x = a[i]['image']
    assert x.shape == (size, size, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, b[i]['image'])
  c = pickle.loads(pickle.dumps(a))
  assert c._bg is None  # the background pool is not shipped to workers
  np.testing.assert_array_equal(c[4]['image'], a[4]['image'])
  other = synthetic.SyntheticLT('train', **{**kw, 'seed': 4})
  assert not np.array_equal(other[0]['image'], a[0]['image'])
  test = synthetic.SyntheticLT('test', **kw)
  assert not np.array_equal(test[0]['image'], a[0]['image'])
  assert len({a[i]['image'].tobytes() for i in range(len(a))}) == len(a)


def _ridge_predict(f, y, ft, k, lam):
  mu, sd = f.mean(0), f.std(0) + 1e-6
  f, ft = (f - mu) / sd, (ft - mu) / sd
  f, ft = np.hstack([f, np.ones((len(f), 1))]), np.hstack([ft, np.ones((len(ft), 1))])
  w = np.linalg.solve(f.T @ f + lam * np.eye(f.shape[1]), f.T @ np.eye(k)[y])
  return (ft @ w).argmax(1)


def _colour_histogram(x):
  q = (x * 3.999).astype(np.int64)
  idx = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
  return np.stack([np.bincount(r.ravel(), minlength=64) for r in idx]) / idx[0].size


def test_learnable_but_not_trivial():
  """A linear classifier beats chance clearly but is far from perfect; colour alone gives the
  pattern but not the shape, so a model must learn shapes too."""
  kw = dict(num_classes=20, imbalance_ratio=1, num_train_max=60, num_test_per_class=20,
            image_size=32, seed=0)
  tr, te = synthetic.SyntheticLT('train', **kw), synthetic.SyntheticLT('test', **kw)
  x = np.stack([tr[i]['image'] for i in range(len(tr))]).astype(np.float32) / 255
  xt = np.stack([te[i]['image'] for i in range(len(te))]).astype(np.float32) / 255
  pix = _ridge_predict(x.reshape(len(x), -1), tr.labels, xt.reshape(len(xt), -1), 20, 100.0)
  acc = (pix == te.labels).mean()
  assert 0.15 < acc < 0.8, acc  # chance is 0.05
  hist = _ridge_predict(_colour_histogram(x), tr.labels, _colour_histogram(xt), 20, 1.0)
  pattern_acc = (hist // 5 == te.labels // 5).mean()
  shape_acc = (hist % 5 == te.labels % 5).mean()
  assert pattern_acc > 0.6 and shape_acc < 0.4, (pattern_acc, shape_acc)  # shape chance 0.2
