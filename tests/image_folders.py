"""Image folders and list files the tests write: long-tailed classes of synthetic objects saved
as real image files in many formats and modes (the kinds users' folders hold)."""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image

from ltdpt_jax.data import synthetic

# Sizes (width, height) the images are saved at, cycling (the i-th image of a class gets
# SIZES[i % 3]; KINDS has 11 entries, so every kind meets every size).
SIZES = ((32, 32), (48, 36), (27, 41))
# How the i-th image of a class is saved: (extension, what), cycling.
KINDS = (
    ('.jpg', 'rgb'), ('.png', 'rgba'), ('.PNG', 'gray'), ('.JPEG', 'exif_rotated'),
    ('.gif', 'palette'), ('.png', 'gray16'), ('.jpg', 'cmyk'), ('.bmp', 'rgb'),
    ('.webp', 'rgb'), ('.tif', 'rgb'), ('.png', 'la'),
)


def save(image: np.ndarray, path: pathlib.Path, what: str) -> None:
  """Saves an RGB uint8 image in the given mode (see KINDS)."""
  pil = Image.fromarray(image)
  if what == 'rgba':
    alpha = np.full(image.shape[:2], 255, np.uint8)
    alpha[: image.shape[0] // 4] = 0  # a transparent band: composited on white
    pil = Image.fromarray(np.dstack([image, alpha]), 'RGBA')
  elif what == 'la':
    alpha = np.full(image.shape[:2], 128, np.uint8)
    pil = Image.fromarray(np.dstack([np.asarray(pil.convert('L')), alpha]), 'LA')
  elif what == 'gray':
    pil = pil.convert('L')
  elif what == 'gray16':
    gray = np.asarray(pil.convert('L')).astype(np.uint16) * 257
    pil = Image.fromarray(gray)  # mode I;16
  elif what == 'palette':
    pil = pil.convert('P', palette=Image.Palette.ADAPTIVE, colors=64)
  elif what == 'cmyk':
    pil = pil.convert('CMYK')
  if what == 'exif_rotated':  # stored rotated; EXIF says rotate by 90 degrees to display
    exif = Image.Exif()
    exif[0x0112] = 6
    pil.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes(), quality=95)
    return
  kwargs = {'quality': 95} if path.suffix.lower() in ('.jpg', '.jpeg', '.webp') else {}
  pil.save(path, **kwargs)


def write_folder(root: pathlib.Path, counts, *, size: int = 24, seed: int = 0,
                 names: list[str] | None = None, nested: bool = False) -> list[str]:
  """`root/<class name>/<images>` with counts[c] images of class c (synthetic class c's object),
  saved in the KINDS in turn; nested: every fourth image one folder deeper. Returns the names."""
  gen = synthetic.SyntheticLT('test', num_classes=max(len(counts), 2), image_size=size,
                              num_test_per_class=1, seed=seed)
  names = names or [f'class_{c:02d}' for c in range(len(counts))]
  rng = np.random.default_rng(seed)
  for c, n in enumerate(counts):
    folder = root / names[c]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
      ext, what = KINDS[i % len(KINDS)]
      sub = folder / 'more' if nested and i % 4 == 3 else folder
      sub.mkdir(exist_ok=True)
      image = np.asarray(Image.fromarray(gen.render(c, rng)).resize(SIZES[i % len(SIZES)]))
      save(image, sub / f'img_{i:04d}{ext}', what)
  return names


def jpeg_bytes(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=95)
  return buf.getvalue()
