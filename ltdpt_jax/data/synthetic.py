"""An embedded synthetic long-tailed benchmark, generated in code (SPEC "Data", issue 4 item 3).

Class c is the (shape, colour pattern) of one foreground object: shape `c % S`, pattern `c // S`,
with S shapes in use (5 for the default K = 20 classes, so 5 shapes x 4 patterns):

  shapes:   circle, square, triangle, cross, ring, diamond, frame, star
  patterns: red, green, blue, stripes, yellow, checker, cyan, magenta
            (solid hues jittered by +-12 degrees with random saturation/value; stripes and
            checker use two random colours, so only their texture identifies them)

The object has a random centre, size (half-width 20-45 % of the image) and rotation (+-15 deg),
and lies on a background picked from a pool of smooth random textures (linear colour gradient
plus low-frequency noise) that every class shares, so the background carries no label
information; per-pixel noise (+-10 levels, a random window of a fixed noise tile) is added last.
The training split has the exponential long-tailed profile
n_i = int(num_train_max * (1/ratio)^(i/(K-1))) (class 0 the head), the test split
`num_test_per_class` images per class.

Every image is a pure function of (seed, split, index): it is generated on the fly in
`__getitem__` (about 0.4 ms at 32 px, 2.5 ms at 224 px on one core), so the source is
random-access, picklable (the background pool is rebuilt lazily in each worker) and needs no
storage.
Any resolution works; images are square, `image_size` pixels.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image

from ltdpt_jax.data import longtail

SHAPES = ('circle', 'square', 'triangle', 'cross', 'ring', 'diamond', 'frame', 'star')
PATTERNS = ('red', 'green', 'blue', 'stripes', 'yellow', 'checker', 'cyan', 'magenta')
_HUES = {'red': 0.0, 'yellow': 60.0, 'green': 120.0, 'cyan': 180.0, 'blue': 240.0,
         'magenta': 300.0}
MAX_CLASSES = len(SHAPES) * len(PATTERNS)
_SPLIT_CODE = {'train': 0, 'test': 1}


def shape_pattern_grid(num_classes: int) -> tuple[int, int]:
  """(number of shapes, number of patterns) used for K classes: S = max(ceil(sqrt K), ceil(K/8))."""
  if not 2 <= num_classes <= MAX_CLASSES:
    raise ValueError(f'The synthetic dataset supports 2..{MAX_CLASSES} classes, got {num_classes} '
                     '(config.data.num_classes).')
  num_shapes = min(len(SHAPES), max(math.ceil(math.sqrt(num_classes)),
                                    math.ceil(num_classes / len(PATTERNS))))
  return num_shapes, math.ceil(num_classes / num_shapes)


def class_names(num_classes: int) -> list[str]:
  """'<pattern> <shape>' for each class, e.g. 'red circle'."""
  num_shapes, _ = shape_pattern_grid(num_classes)
  return [f'{PATTERNS[c // num_shapes]} {SHAPES[c % num_shapes]}' for c in range(num_classes)]


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Inside-test of a unit-size shape in object coordinates (u right, v down, radius 1)."""
  au, av = np.abs(u), np.abs(v)
  if shape == 'circle':
    return u * u + v * v <= 1.0
  if shape == 'square':
    return np.maximum(au, av) <= 0.8
  if shape == 'triangle':  # apex up at v = -0.9, base at v = 0.75 with half-width 0.95
    return (v <= 0.75) & (au <= 0.95 * (v + 0.9) / 1.65)
  if shape == 'cross':
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
  if shape == 'ring':
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
  if shape == 'diamond':
    return au + av <= 1.0
  if shape == 'frame':
    m = np.maximum(au, av)
    return (m <= 0.85) & (m >= 0.5)
  if shape == 'star':  # five points, outer radius 1, inner about 0.45
    theta = np.arctan2(u, -v)
    rho = np.sqrt(u * u + v * v)
    return rho <= 0.45 + 0.55 * np.abs(np.cos(2.5 * theta)) ** 4
  raise ValueError(f'Unknown shape {shape!r}; known: {SHAPES}.')


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
  return np.array(colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v), np.float32) * 255.0


def _random_colour(rng: np.random.Generator, hue: float | None = None) -> np.ndarray:
  if hue is None:
    hue = rng.uniform(0, 360)
  else:
    hue += rng.uniform(-12.0, 12.0)
  return _hsv(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))


def make_backgrounds(seed: int, num: int, size: int) -> np.ndarray:
  """The shared background pool, uint8 (num, size, size, 3): gradients plus smooth noise."""
  rng = np.random.default_rng([seed, 7_919])
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
  out = np.empty((num, size, size, 3), np.uint8)
  for k in range(num):
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ang = rng.uniform(0, 2 * np.pi)
    t = (np.cos(ang) * xx + np.sin(ang) * yy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    grid = rng.integers(2, 7)
    noise = rng.uniform(0, 255, (grid, grid, 3)).astype(np.uint8)
    noise = np.asarray(Image.fromarray(noise).resize((size, size), Image.BILINEAR), np.float32)
    amp = rng.uniform(0.2, 0.6)
    out[k] = np.clip((1 - amp) * img + amp * noise, 0, 255).astype(np.uint8)
  return out


class SyntheticLT:
  """Random-access source of the synthetic long-tailed dataset (see the module docstring).

  `source[i]` -> {'image': uint8 (S, S, 3), 'label': int, 'id': i}. Train images are ordered
  class by class (class 0, the head, first); `labels` holds every label without generating images.
  """

  def __init__(self, split: str = 'train', *, num_classes: int = 20,
               imbalance_ratio: float = 100.0, num_train_max: int = 200,
               num_test_per_class: int = 20, image_size: int = 32, seed: int = 0,
               num_backgrounds: int = 32):
    if split not in _SPLIT_CODE:
      raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if image_size < 8:
      raise ValueError(f'image_size must be >= 8 pixels, got {image_size}.')
    self.num_shapes, self.num_patterns = shape_pattern_grid(num_classes)
    self.split, self.num_classes, self.image_size = split, num_classes, int(image_size)
    self.seed, self.num_backgrounds = int(seed), int(num_backgrounds)
    if split == 'train':
      counts = longtail.exponential_counts(num_train_max, imbalance_ratio, num_classes)
    else:
      counts = np.full(num_classes, int(num_test_per_class), np.int64)
    if counts.min() < 1:
      raise ValueError(f'Synthetic {split} split would have an empty class (counts '
                       f'{counts.tolist()}); raise num_train_max / num_test_per_class or lower '
                       'the imbalance ratio.')
    self.class_counts = counts
    self.labels = np.repeat(np.arange(num_classes, dtype=np.int64), counts)
    self._bg = None
    self._noise = None

  def __len__(self) -> int:
    return len(self.labels)

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_bg'] = state['_noise'] = None  # rebuilt lazily (deterministically) where used
    return state

  @property
  def backgrounds(self) -> np.ndarray:
    if self._bg is None:
      self._bg = make_backgrounds(self.seed, self.num_backgrounds, self.image_size)
    return self._bg

  @property
  def noise(self) -> np.ndarray:
    """A (2S, 2S, 3) int16 tile of uniform noise in [-10, 10]; images use random windows of it."""
    if self._noise is None:
      rng = np.random.default_rng([self.seed, 104_729])
      self._noise = rng.integers(-10, 11, (2 * self.image_size, 2 * self.image_size, 3), np.int16)
    return self._noise

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f'index {index} out of range for {len(self)} synthetic {self.split} images.')
    label = int(self.labels[index])
    rng = np.random.default_rng([self.seed, _SPLIT_CODE[self.split], index])
    return {'image': self.render(label, rng), 'label': label, 'id': index}

  def render(self, label: int, rng: np.random.Generator) -> np.ndarray:
    """Draws one image of class `label` with randomness from `rng`."""
    size = self.image_size
    shape = SHAPES[label % self.num_shapes]
    pattern = PATTERNS[label // self.num_shapes]
    bg = self.backgrounds[rng.integers(self.num_backgrounds)]
    if rng.random() < 0.5:
      bg = bg[:, ::-1]
    if rng.random() < 0.5:
      bg = bg[::-1]
    img = bg.astype(np.int16)
    radius = rng.uniform(0.2, 0.45) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    ang = np.deg2rad(rng.uniform(-15.0, 15.0))
    x0, x1 = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, size)
    y0, y1 = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, size)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    dx, dy = xs - cx, ys - cy
    c, s = np.cos(ang), np.sin(ang)
    u, v = (c * dx + s * dy) / radius, (-s * dx + c * dy) / radius
    mask = shape_mask(shape, u, v)
    if pattern in _HUES:
      fg = np.broadcast_to(_random_colour(rng, _HUES[pattern]), mask.shape + (3,))
    else:
      col_a, col_b = _random_colour(rng), _random_colour(rng)
      period = rng.uniform(0.3, 0.5)
      if pattern == 'stripes':
        sel = np.floor(v / period).astype(np.int64) % 2 == 0
      else:  # checker
        sel = (np.floor(u / period) + np.floor(v / period)).astype(np.int64) % 2 == 0
      fg = np.where(sel[..., None], col_a, col_b)
    patch = img[y0:y1, x0:x1]
    img[y0:y1, x0:x1] = np.where(mask[..., None], fg.astype(np.int16), patch)
    oy, ox = rng.integers(0, size, 2)
    img += self.noise[oy:oy + size, ox:ox + size]
    return np.clip(img, 0, 255).astype(np.uint8)
