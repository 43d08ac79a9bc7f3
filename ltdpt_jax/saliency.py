"""Spectral-residual saliency (Hou & Zhang 2007; LT-DPT Appendix B, Eq. 8-12) in `jnp.fft`.

`spectral_residual` reproduces OpenCV's `cv2.saliency.StaticSaliencySpectralResidual` step by
step, batched and jit-compatible, with one function per equation (`fourier_spectrum`, Eq. 8, to
`saliency_from_residual`, Eq. 12); `patch_saliency` turns the map into the per-patch scores S of
Eq. 3 and 5.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# OpenCV's 8-bit RGB->gray coefficients (color_rgb: R2Y/G2Y/B2Y with a 15-bit shift).
_GRAY_SHIFT = 15
_GRAY_R, _GRAY_G, _GRAY_B = 9798, 19235, 3735
# INTER_LINEAR_EXACT on uint8 quantises interpolation weights to 8 fractional bits.
_EXACT_WEIGHT_STEPS = 256
_BOX_SIZE = 3          # Eq. 10: h is a 3x3 mean filter.
_GAUSS_SIZE = 5        # Eq. 12: g is a 5x5 Gaussian ...
_GAUSS_SIGMA = 8.0     # ... with sigma 8 (OpenCV GaussianBlur(Size(5, 5), 8)).


def _check_images(images) -> None:
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(
        f'images must be (B, H, W, 3) RGB in [0, 255]; got shape {tuple(images.shape)}. '
        'Add a batch axis with images[None] for a single image.')


def _as_size(size) -> tuple[int, int]:
  if isinstance(size, (tuple, list)):
    h, w = (int(s) for s in size)
  else:
    h = w = int(size)
  if h < 2 or w < 2:
    raise ValueError(f'size must be >= 2 (an int or (height, width)); got {size!r}.')
  return h, w


def to_gray(images: jax.Array) -> jax.Array:
  """RGB (B, H, W, 3) in [0, 255] -> gray (B, H, W) int32 in [0, 255], as OpenCV's BGR2GRAY.

  Uses OpenCV's 8-bit fixed-point formula (bit-exact with `cv2.cvtColor` on the BGR image).
  Float input is first rounded to the nearest integer (half to even, as OpenCV's saturate_cast);
  values are clipped to [0, 255], so a float image gives the same map as its uint8 version.
  """
  if jnp.issubdtype(images.dtype, jnp.floating):
    images = jnp.round(images)
  x = jnp.clip(images, 0, 255).astype(jnp.int32)
  y = (x[..., 0] * _GRAY_R + x[..., 1] * _GRAY_G + x[..., 2] * _GRAY_B
       + (1 << (_GRAY_SHIFT - 1)))
  return jnp.right_shift(y, _GRAY_SHIFT)


@functools.lru_cache(maxsize=None)
def _linear_taps(src: int, dst: int, exact_uint8: bool):
  """Two-tap bilinear weights of OpenCV's resize along one axis (half-pixel centres, clamp).

  exact_uint8: `INTER_LINEAR_EXACT` for 8-bit input (weights quantised to 1/256); otherwise the
  float32 `INTER_LINEAR` coordinates (`fx = (float)((dx + 0.5) * scale - 0.5)`).
  """
  dx = np.arange(dst, dtype=np.float64)
  if exact_uint8:
    fx = (dx + 0.5) * (src / dst) - 0.5
    sx = np.floor(fx)
    frac = np.round((fx - sx) * _EXACT_WEIGHT_STEPS) / _EXACT_WEIGHT_STEPS
    carry = frac >= 1.0
    sx, frac = sx + carry, np.where(carry, 0.0, frac)
  else:
    scale = 1.0 / (dst / src)
    fx = ((dx + 0.5) * scale - 0.5).astype(np.float32)
    sx = np.floor(fx)
    frac = (fx - sx.astype(np.float32)).astype(np.float32)
  sx = sx.astype(np.int64)
  low = sx < 0
  sx, frac = np.where(low, 0, sx), np.where(low, 0.0, frac)
  high = sx >= src - 1
  sx, frac = np.where(high, src - 1, sx), np.where(high, 0.0, frac)
  w1 = frac.astype(np.float32)
  w0 = (np.float32(1.0) - w1).astype(np.float32)
  return sx.astype(np.int32), np.minimum(sx + 1, src - 1).astype(np.int32), w0, w1


def _resize_axis(x: jax.Array, dst: int, axis: int, exact_uint8: bool) -> jax.Array:
  src = x.shape[axis]
  if src == dst:
    return x
  i0, i1, w0, w1 = _linear_taps(src, dst, exact_uint8)
  shape = [1] * x.ndim
  shape[axis] = dst
  return (jnp.take(x, i0, axis=axis) * w0.reshape(shape)
          + jnp.take(x, i1, axis=axis) * w1.reshape(shape))


def resize_bilinear(x: jax.Array, height: int, width: int, *, round_to_uint8: bool) -> jax.Array:
  """Bilinear resize of (..., H, W) as OpenCV's `cv2.resize` (no antialias, half-pixel centres).

  round_to_uint8=True: `INTER_LINEAR_EXACT` on an 8-bit image (integer-valued input, weights
  quantised to 1/256, result rounded half-up; exact in float32). False: float32 `INTER_LINEAR`.
  Horizontal pass first, then vertical, as OpenCV does.
  """
  x = x.astype(jnp.float32)
  y = _resize_axis(x, width, x.ndim - 1, round_to_uint8)
  y = _resize_axis(y, height, x.ndim - 2, round_to_uint8)
  if round_to_uint8:
    y = jnp.floor(y + 0.5)
  return y


def _pad_reflect101(x: jax.Array, r: int) -> jax.Array:
  """Reflect-101 (OpenCV BORDER_DEFAULT; NumPy 'reflect') padding of the last two axes."""
  pad = [(0, 0)] * (x.ndim - 2) + [(r, r), (r, r)]
  return jnp.pad(x, pad, mode='reflect')


def _separable_filter(x: jax.Array, taps: np.ndarray) -> jax.Array:
  """Separable 2-D correlation of (..., H, W) with `taps` on both axes, reflect-101 borders."""
  k = len(taps)
  r = k // 2
  h, w = x.shape[-2:]
  xp = _pad_reflect101(x, r)
  rows = sum(float(taps[i]) * xp[..., :, i:i + w] for i in range(k))
  return sum(float(taps[i]) * rows[..., i:i + h, :] for i in range(k))


def _gaussian_taps(ksize: int, sigma: float) -> np.ndarray:
  """cv2.getGaussianKernel(ksize, sigma) for sigma > 0 (float64)."""
  x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
  g = np.exp(-(x * x) / (2.0 * sigma * sigma))
  return g / g.sum()


def fourier_spectrum(gray: jax.Array) -> jax.Array:
  """Eq. 8: M e^{jP} = F(I): the 2-D DFT of (..., h, w) gray images (complex64).

  Amplitude `M = |F|`, phase `P = angle(F)`; no fftshift, like OpenCV.
  """
  return jnp.fft.fft2(gray.astype(jnp.float32))


def log_amplitude(spectrum: jax.Array) -> jax.Array:
  """Eq. 9: L = log M, computed as OpenCV 4.x and 5.x do, log(1 + M) (finite where M = 0)."""
  return jnp.log1p(jnp.abs(spectrum))


def average_log_amplitude(log_amp: jax.Array) -> jax.Array:
  """Eq. 10: A = h * L with h the normalised 3x3 box filter, reflect-101 borders (cv2.blur).

  As in OpenCV, the blur runs on the unshifted spectrum with reflect-101 borders, which does not
  commute with k -> -k (mod N): the saliency map is only approximately flip-equivariant, exactly
  as OpenCV's is.
  """
  return _separable_filter(log_amp, np.full(_BOX_SIZE, 1.0 / _BOX_SIZE))


def residual_spectrum(log_amp: jax.Array, avg_log_amp: jax.Array) -> jax.Array:
  """Eq. 11: the spectral residual R = L - A."""
  return log_amp - avg_log_amp


def saliency_from_residual(residual: jax.Array, spectrum: jax.Array) -> jax.Array:
  """Eq. 12: `S = g * |F^-1[exp(R + jP)]|^2`, in OpenCV's order (blur the magnitude, then square).

  The paper writes the square inside the blur; OpenCV blurs before squaring, and so do we.
  g is the 5x5 Gaussian with sigma 8 and reflect-101 borders. `exp(R + jP)` is formed as
  `exp(R) * F / |F|` (no angle/cos/sin); a bin with `|F| = 0` gets phase 0, as in OpenCV.
  The result is unnormalised (see `normalize_by_max`).
  """
  mag = jnp.abs(spectrum)
  nonzero = mag > 0
  unit = jnp.where(nonzero, spectrum / jnp.where(nonzero, mag, 1.0), jnp.ones_like(spectrum))
  recon = jnp.abs(jnp.fft.ifft2(jnp.exp(residual) * unit))
  smooth = _separable_filter(recon, _gaussian_taps(_GAUSS_SIZE, _GAUSS_SIGMA))
  return smooth * smooth


def normalize_by_max(saliency: jax.Array) -> jax.Array:
  """Divides each (..., h, w) map by its maximum, as OpenCV does (not a min-max)."""
  peak = jnp.max(saliency, axis=(-2, -1), keepdims=True)
  return saliency / jnp.maximum(peak, jnp.finfo(saliency.dtype).tiny)


def spectral_residual(images: jax.Array, *, size: int | tuple[int, int] = 64) -> jax.Array:
  """Spectral-residual saliency maps (Appendix B, Eq. 8-12), as OpenCV computes them.

  Steps: gray = OpenCV's 8-bit BGR2GRAY (`to_gray`); bilinear resize to `size` as OpenCV's
  `INTER_LINEAR_EXACT` on uint8 (`resize_bilinear`); Eq. 8-12; division by the per-image
  maximum (`normalize_by_max`); bilinear resize back to H x W as OpenCV's float32 `INTER_LINEAR`.
  The maps match `cv2.saliency` to float32 precision (tests/test_saliency.py): the gray image
  and the resize are bit-exact, the remaining gap is float32 FFTs here against OpenCV's float64
  DFT and its approximate atan2. Everything is elementwise, gathers and FFTs (no matmuls), so the
  result does not depend on the accelerator's default matmul precision.

  Args:
    images: (B, H, W, 3) RGB, values in [0, 255] (uint8, or float which is rounded first).
    size: working resolution (OpenCV's 64 x 64 by default); an int or (height, width).
  Returns:
    (B, H, W) float32 maps in (0, 1], maximum 1 per image. Jit with `size` static.
  """
  _check_images(images)
  sh, sw = _as_size(size)
  h, w = images.shape[1:3]
  gray = resize_bilinear(to_gray(images), sh, sw, round_to_uint8=True)
  spectrum = fourier_spectrum(gray)                            # Eq. 8
  log_amp = log_amplitude(spectrum)                            # Eq. 9
  avg = average_log_amplitude(log_amp)                         # Eq. 10
  res = residual_spectrum(log_amp, avg)                        # Eq. 11
  sal = normalize_by_max(saliency_from_residual(res, spectrum))  # Eq. 12
  return resize_bilinear(sal, h, w, round_to_uint8=False)


def pool_to_patches(saliency: jax.Array, patch_size: int) -> jax.Array:
  """(B, H, W) map -> (B, (H/p)*(W/p)) means over non-overlapping p x p patches, row-major."""
  b, h, w = saliency.shape
  if patch_size <= 0 or h % patch_size or w % patch_size:
    raise ValueError(f'Image size {h}x{w} is not divisible by patch_size={patch_size}; '
                     'crop or resize the images to a multiple of the patch size.')
  gh, gw = h // patch_size, w // patch_size
  pooled = saliency.reshape(b, gh, patch_size, gw, patch_size).mean(axis=(2, 4))
  return pooled.reshape(b, gh * gw)


def min_max_normalize(scores: jax.Array) -> jax.Array:
  """Per-row min-max normalisation to [0, 1]; a constant row maps to all zeros (no bias)."""
  lo = jnp.min(scores, axis=-1, keepdims=True)
  span = jnp.max(scores, axis=-1, keepdims=True) - lo
  ok = span > 1e-12
  return jnp.where(ok, (scores - lo) / jnp.where(ok, span, 1.0), 0.0)


def patch_saliency(images: jax.Array, *, patch_size: int,
                   size: int | tuple[int, int] = 64) -> jax.Array:
  """Per-patch saliency scores S of Eq. 3 and 5 (Section 4.2).

  The `spectral_residual` map at the image resolution, average-pooled over non-overlapping
  `patch_size` x `patch_size` patches, min-max normalised per image to [0, 1] (a constant map
  gives all zeros), flattened row-major (grid row, then column) like the ViT patch tokens (the
  Conv patch embedding reshaped (B, h, w, D) -> (B, h*w, D)).

  Args:
    images: (B, H, W, 3) RGB in [0, 255]; H and W multiples of `patch_size`.
    patch_size: the ViT patch size p.
    size: the spectral-residual working resolution (64).
  Returns:
    (B, (H/p) * (W/p)) float32 in [0, 1].
  """
  _check_images(images)
  h, w = images.shape[1:3]
  if patch_size <= 0 or h % patch_size or w % patch_size:
    raise ValueError(f'Image size {h}x{w} is not divisible by patch_size={patch_size}; '
                     'crop or resize the images to a multiple of the patch size.')
  return min_max_normalize(pool_to_patches(spectral_residual(images, size=size), patch_size))
