"""The training crop on the accelerator (`config.data.crop_on_device`): the host ships raw images.

A grain worker draws the augmentation (`transforms.train_crop`) and ships the stored image with
its five crop numbers; the train step applies them with `resized_crop`, which reproduces Pillow's
bilinear resize of the host path exactly, in Pillow's fixed point (`pillow_bilinear_weights`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ltdpt_jax.data import transforms

CROP_FIELDS = transforms.CROP_FIELDS


CHUNK = 32  # images cropped at a time (resized_crop): bounds the int32 temporaries
PRECISION_BITS = 22  # Pillow's 8-bit resampling: coefficients in 22-bit fixed point


def _round_div_pow2(a: jax.Array, total: jax.Array, bits: int) -> jax.Array:
  """round(a * 2**bits / total) for int32 0 <= a <= total (half up), exactly, in int32: long
  division a few bits at a time, so that a * 2**bits (33 bits and more) is never formed."""
  q, r = a // total, a % total
  done = 0
  while done < bits:
    b = min(4, bits - done)
    r = r << b
    q = (q << b) | (r // total)
    r = r % total
    done += b
  return q + (2 * r >= total).astype(q.dtype)


def pillow_bilinear_weights(in_size: int, out_size: int, start: jax.Array, length: jax.Array
                            ) -> jax.Array:
  """int32 (in_size, out_size): the fixed-point coefficients Pillow's 8-bit bilinear resize uses
  to map the box [start, start + length) of an axis of in_size pixels onto out_size pixels
  (Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`), computed exactly.

  Output pixel i has centre c = start + (i + 0.5) * length / out_size; input pixel j gets the
  triangle weight 1 - |j + 0.5 - c| / s with s = max(length / out_size, 1) (or 0 outside the
  triangle), the weights are normalised to sum to 1 over the image's pixels, and each is rounded
  to a multiple of 2**-22. With integer boxes, the weight of j is a_j / D with the integer
  a_j = max(0, D - |n_j|), n_j = (2 (j - start) + 1) * out_size - (2 i + 1) * length and
  D = 2 * max(out_size, length). So the normalised weight is a_j / sum(a), and the coefficient
  round(2**22 a_j / sum(a)) is computed in integers. Pillow computes it in float64 and rounds
  half up; the exact quotient is never within float64's error of a half (sum(a) < 2**23 for any
  real image), so the two give the same integers.
  """
  j = jnp.arange(in_size, dtype=jnp.int32)[:, None]
  i = jnp.arange(out_size, dtype=jnp.int32)[None, :]
  start, length = jnp.asarray(start, jnp.int32), jnp.asarray(length, jnp.int32)
  n = (2 * (j - start) + 1) * out_size - (2 * i + 1) * length
  a = jnp.maximum(0, 2 * jnp.maximum(out_size, length) - jnp.abs(n))
  total = jnp.maximum(jnp.sum(a, axis=0, keepdims=True), 1)
  return _round_div_pow2(a, total, PRECISION_BITS)


def _resample(x: jax.Array, weights: jax.Array, spec: str) -> jax.Array:
  """One Pillow pass over int32 x (C, rows, cols) with weights (in_size, out_size):
  (sum_j x_j * k_j + 2**21) >> 22, clipped to [0, 255] (Pillow's clip8); `spec` names the axis
  ('chw,ws->chs' horizontal, 'chw,ht->ctw' vertical). Channels lead, so the minor axes are
  the image's (TPU layouts pad a minor axis of 3 to 128)."""
  acc = jnp.einsum(spec, x, weights, preferred_element_type=jnp.int32)
  return jnp.clip((acc + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS, 0, 255)


def _pillow_version() -> tuple[int, ...]:
  import PIL  # pylint: disable=g-import-not-at-top
  return tuple(int(p) for p in PIL.__version__.split('.')[:2] if p.isdigit())


def vertical_pass_first(height: int, width: int, size: int,
                        pillow_version: tuple[int, ...] | None = None) -> bool:
  """Whether Pillow resizes a height x width image to size x size vertical pass first.

  Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
  pixels as the width: height - size > 0 and height - size > 2 * (width - size) (full image
  sizes, not the box's; Pillow's `ImagingResampleInner`). Pillow 12 and older run the
  horizontal pass first. The order changes which intermediate is rounded to 8 bits, so it
  follows the installed Pillow, the one the host path (`transforms.apply_crop`) runs.
  """
  version = _pillow_version() if pillow_version is None else tuple(pillow_version)
  if version < (13,):
    return False
  return height - size > 0 and height - size > 2 * (width - size)


def resized_crop_one(image: jax.Array, crop: jax.Array, size: int) -> jax.Array:
  """One uint8 HWC image and its int crop [top, left, h, w, flip] -> uint8 (size, size, C):
  Pillow's two passes (each rounded to 8 bits, in Pillow's order), then the flip."""
  height, width = image.shape[0], image.shape[1]
  crop = crop.astype(jnp.int32)
  top, left, h, w, flip = crop[0], crop[1], crop[2], crop[3], crop[4]
  x = jnp.moveaxis(image, -1, 0).astype(jnp.int32)  # (C, H, W)
  horizontal = lambda x: _resample(x, pillow_bilinear_weights(width, size, left, w),
                                   'chw,ws->chs')
  vertical = lambda x: _resample(x, pillow_bilinear_weights(height, size, top, h),
                                 'chw,ht->ctw')
  if vertical_pass_first(height, width, size):
    x = horizontal(vertical(x))
  else:
    x = vertical(horizontal(x))
  x = jnp.where(flip > 0, x[:, :, ::-1], x)
  return jnp.moveaxis(x.astype(jnp.uint8), 0, -1)


def crop_flops(height: int, width: int, size: int, channels: int = 3) -> int:
  """Multiply-adds x 2 of the two passes for one height x width image cropped to size x size
  (dense weight matrices, as `resized_crop` computes them; XLA's count of the chunked loop
  covers only one chunk). For 32 px -> 224 px: 2 * 3 * 224 * 32 * (32 + 224) = 11 MFLOP, a
  negligible part of a ViT-B/16 train step."""
  first = height * width * size  # the first pass keeps the other axis at its input length
  if vertical_pass_first(height, width, size):
    return 2 * channels * (first + size * width * size)
  return 2 * channels * (first + height * size * size)


def resized_crop(images: jax.Array, crop: jax.Array, size: int) -> jax.Array:
  """uint8 (B, H, W, C) images and int (B, 5) crops (`transforms.train_crop`) -> uint8
  (B, size, size, C): exactly what `transforms.apply_crop` (Pillow) gives on the host.

  Two small integer matmuls per image with dense (input, output) weight matrices (`crop_flops`).
  """
  if images.ndim != 4 or crop.shape != (images.shape[0], len(CROP_FIELDS)):
    raise ValueError(f'resized_crop needs images (B, H, W, C) and crops (B, {len(CROP_FIELDS)}); '
                     f'got {images.shape} and {crop.shape}.')
  # In chunks of CHUNK images (vectorised within a chunk): the int32 intermediates of a whole
  # batch would be ~0.7 GiB at batch 512, 224 px; a chunk's are ~1/16 of that.
  return jax.lax.map(lambda ic: resized_crop_one(ic[0], ic[1], int(size)), (images, crop),
                     batch_size=CHUNK)
