"""Image transforms of the input pipeline, NumPy + Pillow only (they run in grain workers).

Train: `train_transform` (RandomResizedCrop + horizontal flip, as `train_crop` draws them and
`apply_crop` applies them); eval: `eval_transform` (square resize, centre crop). Images are HWC
uint8 RGB in and out; grayscale (HW or HW1) is expanded to three channels (`as_rgb`).
`train_transform_image` and `eval_transform_image` do the same to a decoded Pillow image.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)


def as_rgb(image: np.ndarray) -> np.ndarray:
  """HWC uint8 with three channels (grayscale repeated, alpha dropped)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(f'Expected a uint8 image, got {image.dtype}.')
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f'Expected an HWC image with 1, 3 or 4 channels, got shape {image.shape}.')
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image[..., :3]


def random_resized_crop_params(height: int, width: int, rng: np.random.Generator,
                               scale: tuple[float, float] = SCALE,
                               ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
  """(top, left, crop_height, crop_width) as torchvision's `RandomResizedCrop.get_params`.

  10 attempts of an area fraction ~ U(scale) and a log-uniform aspect ratio, box sides rounded,
  top-left uniform among integer positions; the central crop clamped to the ratio range is the
  fallback. Per attempt one uniform area fraction and one uniform log-ratio are drawn from
  `rng`, then the top and left offsets (`integers`).
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def resize_box(image: np.ndarray, size: int, box: tuple[int, int, int, int] | None = None
               ) -> np.ndarray:
  """Bilinear (Pillow) resize of `image[top:top+h, left:left+w]` to (size, size); box=(t,l,h,w).

  Pillow's bilinear filter widens its support when shrinking (it antialiases, like torchvision
  on PIL images); small native images (CIFAR 32 px, synthetic) are upsampled from the box.
  """
  pil = Image.fromarray(image)
  pil_box = None if box is None else (box[1], box[0], box[1] + box[3], box[0] + box[2])
  return np.asarray(pil.resize((size, size), Image.BILINEAR, box=pil_box))


def train_crop(height: int, width: int, rng: np.random.Generator, *,
               min_scale: float = SCALE[0]) -> np.ndarray:
  """The training augmentation of one image of height x width, as numbers: int32
  [top, left, crop_height, crop_width, flip] (`CROP_FIELDS`), drawn from `rng`: the crop box
  (`random_resized_crop_params`), then one uniform for the flip. `train_transform` applies it
  with Pillow on the host; `device_transforms.resized_crop` applies it on the accelerator
  (config.data.crop_on_device)."""
  top, left, h, w = random_resized_crop_params(height, width, rng,
                                               scale=(float(min_scale), SCALE[1]))
  flip = rng.uniform() < 0.5
  return np.asarray([top, left, h, w, int(flip)], np.int32)


CROP_FIELDS = ('top', 'left', 'height', 'width', 'flip')


def apply_crop(image: np.ndarray, size: int, crop: np.ndarray) -> np.ndarray:
  """Resizes the box of `crop` (`train_crop`'s numbers) to size x size (Pillow bilinear), then
  flips it horizontally if crop[4]."""
  top, left, h, w, flip = (int(v) for v in crop)
  out = resize_box(image, size, (top, left, h, w))
  if flip:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def train_transform(image: np.ndarray, size: int, rng: np.random.Generator, *,
                    min_scale: float = SCALE[0]) -> np.ndarray:
  """RandomResizedCrop(size, (min_scale, 1), (3/4, 4/3)) then a horizontal flip with p = 0.5.

  LPT's training augmentation (torchvision's defaults, scale (0.08, 1)): the box resized to
  size x size with Pillow's bilinear filter (`resize_box`).
  """
  image = as_rgb(image)
  crop = train_crop(image.shape[0], image.shape[1], rng, min_scale=min_scale)
  return apply_crop(image, size, crop)


def train_transform_image(im: Image.Image, size: int, rng: np.random.Generator, *,
                          min_scale: float = SCALE[0],
                          drawn_on: tuple[int, int] | None = None) -> np.ndarray:
  """`train_transform` of an RGB Pillow image, with the same numbers from `rng`, without copies
  to NumPy and back (the image files' path: the same pixels as `train_transform` of its array).

  `drawn_on`: (width, height) the crop is drawn on, default the image's own. A smaller stored
  copy of an image (tools/store.py) passes its original's size: the crop is then the one the
  original would get, its box scaled to this image (fractional box edges, which Pillow's resize
  samples exactly).
  """
  width, height = drawn_on or im.size
  top, left, h, w, flip = (int(v) for v in train_crop(height, width, rng, min_scale=min_scale))
  sx, sy = im.width / width, im.height / height
  box = ((left, top, left + w, top + h) if (sx, sy) == (1.0, 1.0) else
         (left * sx, top * sy, (left + w) * sx, (top + h) * sy))
  out = im.resize((size, size), Image.BILINEAR, box=box)
  if flip:
    out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(out)


def eval_resize_size(size: int) -> int:
  """Side of the square resize before the centre crop: int(size * 256 / 224) (256 for 224)."""
  return int(size * 256 / 224)


def eval_transform(image: np.ndarray, size: int) -> np.ndarray:
  """Resize to R x R (R = eval_resize_size(size), bilinear), then the centre size x size crop.

  Square as LPT's `Resize((256, 256))`, which changes the aspect ratio of non-square images;
  the crop offsets are rounded as torchvision's `CenterCrop`.
  """
  return _centre(resize_box(as_rgb(image), eval_resize_size(size)), size)


def eval_transform_image(im: Image.Image, size: int) -> np.ndarray:
  """`eval_transform` of an RGB Pillow image (the same pixels as of its array)."""
  r = eval_resize_size(size)
  return _centre(np.asarray(im.resize((r, r), Image.BILINEAR)), size)


def _centre(resized: np.ndarray, size: int) -> np.ndarray:
  r = resized.shape[0]
  top = int(round((r - size) / 2.0))
  left = int(round((r - size) / 2.0))
  return np.ascontiguousarray(resized[top:top + size, left:left + size])
