"""Spectral-residual saliency against OpenCV's cv2.saliency (the oracle) and its properties."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data

from ltdpt_jax import saliency

PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket')
SIZES = ((64, 64), (224, 224), (96, 128), (32, 32), (50, 75))


def _photo(name, hw):
  """A real RGB photo from scikit-image, area-resized to (h, w), uint8."""
  rgb = getattr(skimage.data, name)()
  return cv2.resize(rgb, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def _opencv_map(rgb):
  """cv2.saliency on the same image (OpenCV reads 3 channels as BGR, so pass BGR)."""
  sr = cv2.saliency.StaticSaliencySpectralResidual_create()
  ok, sal = sr.computeSaliency(np.ascontiguousarray(rgb[..., ::-1]))
  assert ok
  return sal


_jit_map = jax.jit(saliency.spectral_residual, static_argnames='size')
_jit_patches = jax.jit(saliency.patch_saliency, static_argnames=('patch_size', 'size'))


@pytest.mark.parametrize('hw', SIZES)
def test_matches_opencv_on_photos(hw):
  batch = np.stack([_photo(n, hw) for n in PHOTOS])
  ours = np.asarray(_jit_map(jnp.asarray(batch)))
  assert ours.shape == (len(PHOTOS),) + hw and ours.dtype == np.float32
  for rgb, got in zip(batch, ours):
    want = _opencv_map(rgb)
    corr = np.corrcoef(got.ravel(), want.ravel())[0, 1]
    # Measured: max |diff| 1e-5 .. 4e-5 and corr 1.000000 (float32 FFT vs OpenCV float64).
    assert corr > 0.9999, corr
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)


def test_matches_opencv_with_other_working_size():
  sr = cv2.saliency.StaticSaliencySpectralResidual_create()
  sr.setImageWidth(80)
  sr.setImageHeight(48)
  rgb = _photo('coffee', (96, 128))
  ok, want = sr.computeSaliency(np.ascontiguousarray(rgb[..., ::-1]))
  assert ok
  got = np.asarray(_jit_map(jnp.asarray(rgb[None]), size=(48, 80)))[0]
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)


def test_float_input_equals_uint8_input():
  rgb = _photo('chelsea', (64, 96))
  a = _jit_map(jnp.asarray(rgb[None]))
  b = _jit_map(jnp.asarray(rgb[None], jnp.float32))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gray_is_bit_exact_with_opencv():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
  want = cv2.cvtColor(np.ascontiguousarray(rgb[0, ..., ::-1]), cv2.COLOR_BGR2GRAY)
  np.testing.assert_array_equal(np.asarray(saliency.to_gray(jnp.asarray(rgb)))[0], want)


@pytest.mark.parametrize('src,dst', [((224, 224), (64, 64)), ((32, 32), (64, 64)),
                                     ((96, 128), (64, 64)), ((300, 451), (50, 37)),
                                     ((17, 200), (23, 129))])
def test_resize_is_bit_exact_with_opencv(src, dst):
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, src, dtype=np.uint8)
  got = saliency.resize_bilinear(jnp.asarray(img), *dst, round_to_uint8=True)
  want = cv2.resize(img, dst[::-1], interpolation=cv2.INTER_LINEAR_EXACT)
  np.testing.assert_array_equal(np.asarray(got), want)
  fimg = rng.random(dst, dtype=np.float32)
  got = saliency.resize_bilinear(jnp.asarray(fimg), *src, round_to_uint8=False)
  want = cv2.resize(fimg, src[::-1], interpolation=cv2.INTER_LINEAR)
  # OpenCV's float32 INTER_LINEAR (SIMD) differs from this by a few float32 ulps.
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_filters_match_opencv():
  x = np.random.default_rng(2).normal(size=(64, 64)).astype(np.float32)
  box = saliency.average_log_amplitude(jnp.asarray(x))
  want = cv2.blur(x, (3, 3), borderType=cv2.BORDER_REFLECT_101)
  np.testing.assert_allclose(np.asarray(box), want, atol=1e-6)
  np.testing.assert_allclose(saliency._gaussian_taps(5, 8.0),
                             cv2.getGaussianKernel(5, 8.0, ktype=cv2.CV_64F).ravel(), atol=1e-15)
  sq = saliency.saliency_from_residual(jnp.zeros((64, 64)), jnp.fft.fft2(jnp.asarray(x)))
  recon = np.abs(np.fft.ifft2(np.exp(1j * np.angle(np.fft.fft2(x.astype(np.float64))))))
  want = cv2.GaussianBlur(recon, (5, 5), 8, borderType=cv2.BORDER_REFLECT_101) ** 2
  np.testing.assert_allclose(np.asarray(sq), want, rtol=1e-4)


def test_range_and_max():
  batch = np.stack([_photo(n, (96, 128)) for n in PHOTOS])
  out = np.asarray(_jit_map(jnp.asarray(batch)))
  assert np.all(out > 0) and np.all(out <= 1.0)
  # At the working size the map is divided by its max (OpenCV), so its max is exactly 1; resized
  # to another size the peak may fall between samples.
  at_work = np.asarray(_jit_map(jnp.asarray(batch), size=(96, 128)))
  np.testing.assert_allclose(at_work.reshape(len(PHOTOS), -1).max(-1), 1.0, atol=1e-6)
  p = np.asarray(_jit_patches(jnp.asarray(batch), patch_size=16))
  assert p.shape == (len(PHOTOS), 6 * 8)
  assert np.all(p >= 0) and np.all(p <= 1)
  np.testing.assert_allclose(p.min(-1), 0.0, atol=0)
  np.testing.assert_allclose(p.max(-1), 1.0, atol=1e-6)


def test_horizontal_flip_equivariance():
  """Flip-equivariant up to the reflect-101 blur on the unshifted spectrum, exactly as OpenCV.

  The 3x3 blur at the spectrum's borders does not commute with k -> -k (mod N), so neither
  OpenCV nor this port is exactly equivariant: the maps agree to corr > 0.998 and the deviation
  equals OpenCV's own deviation.
  """
  for name in PHOTOS:
    rgb = _photo(name, (64, 96))
    flipped = rgb[:, ::-1]
    a = np.asarray(_jit_map(jnp.asarray(rgb[None])))[0]
    b = np.asarray(_jit_map(jnp.asarray(flipped[None].copy())))[0][:, ::-1]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.998
    cv_dev = _opencv_map(rgb) - _opencv_map(flipped)[:, ::-1]
    np.testing.assert_allclose(a - b, cv_dev, atol=2e-4)
    pa = np.asarray(_jit_patches(jnp.asarray(rgb[None]), patch_size=16)).reshape(4, 6)
    pb = np.asarray(_jit_patches(jnp.asarray(flipped[None].copy()), patch_size=16))
    assert np.abs(pa - pb.reshape(4, 6)[:, ::-1]).max() < 0.05


@pytest.mark.parametrize('value', [0, 100, 255])
def test_constant_image_is_finite(value):
  img = np.full((1, 64, 64, 3), value, np.uint8)
  out = np.asarray(_jit_map(jnp.asarray(img)))
  assert np.all(np.isfinite(out)) and np.all(out >= 0) and np.all(out <= 1)
  np.testing.assert_allclose(out[0], _opencv_map(img[0]), atol=1e-5)
  p = np.asarray(_jit_patches(jnp.asarray(img), patch_size=16))
  assert np.all(np.isfinite(p)) and np.all(p >= 0) and np.all(p <= 1)
  # A constant score vector (no saliency information) maps to zeros.
  np.testing.assert_array_equal(np.asarray(saliency.min_max_normalize(jnp.full((2, 5), 0.3))), 0)


def test_jit_and_batch_consistency():
  batch = np.stack([_photo(n, (64, 64)) for n in PHOTOS])
  eager = np.asarray(saliency.spectral_residual(jnp.asarray(batch)))
  jitted = np.asarray(_jit_map(jnp.asarray(batch)))
  np.testing.assert_allclose(jitted, eager, atol=1e-6)
  for i in range(len(PHOTOS)):
    single = np.asarray(_jit_map(jnp.asarray(batch[i:i + 1])))[0]
    np.testing.assert_allclose(single, jitted[i], atol=1e-6)
  patches = np.asarray(_jit_patches(jnp.asarray(batch), patch_size=8))
  for i in range(len(PHOTOS)):
    np.testing.assert_allclose(
        np.asarray(_jit_patches(jnp.asarray(batch[i:i + 1]), patch_size=8))[0], patches[i],
        atol=1e-6)


def test_patch_scores_are_pooled_min_max_row_major():
  """patch_saliency == min-max of a numpy double-loop mean over each patch, row-major."""
  batch = np.stack([_photo(n, (64, 96)) for n in PHOTOS[:2]])
  m = np.asarray(_jit_map(jnp.asarray(batch)), np.float64)
  p = 16
  want = np.zeros((2, 4 * 6))
  for b in range(2):
    for r in range(4):
      for c in range(6):
        want[b, r * 6 + c] = m[b, r * p:(r + 1) * p, c * p:(c + 1) * p].mean()
    want[b] = (want[b] - want[b].min()) / (want[b].max() - want[b].min())
  got = np.asarray(_jit_patches(jnp.asarray(batch), patch_size=p))
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize('hw,cell', [((64, 64), (1, 2)), ((64, 128), (2, 5))])
def test_salient_object_lands_in_its_patch(hw, cell):
  """A bright square on black is most salient in its own patch: index = row * grid_w + col."""
  p = 16
  img = np.zeros((1,) + hw + (3,), np.uint8)
  r, c = cell
  img[0, r * p + 4:r * p + 12, c * p + 4:c * p + 12] = 255
  scores = np.asarray(_jit_patches(jnp.asarray(img), patch_size=p))[0]
  assert scores.shape == (hw[0] // p * hw[1] // p,)
  assert int(np.argmax(scores)) == r * (hw[1] // p) + c


def test_bad_input_errors():
  with pytest.raises(ValueError, match='B, H, W, 3'):
    saliency.spectral_residual(jnp.zeros((64, 64, 3)))
  with pytest.raises(ValueError, match='not divisible by patch_size'):
    saliency.patch_saliency(jnp.zeros((1, 60, 64, 3)), patch_size=16)
