"""An embedded synthetic long-tailed benchmark, generated in code: no download, no storage.

A class is the (shape, colour pattern) of one foreground object, or a pattern in a scene; which
classes exist is the class set (`class_table`: 'default', 'upstream', 'downstream'). `SyntheticLT`
is the random-access source (long-tailed train split, balanced test split, object masks as the
ground truth of where to look); `make_backgrounds`, `make_scene` and `shape_mask` draw the parts.
"""

from __future__ import annotations

import colorsys
import math
from typing import NamedTuple

import numpy as np
from PIL import Image

from ltdpt_jax.data import longtail

SHAPES = ('circle', 'square', 'triangle', 'cross', 'ring', 'diamond', 'frame', 'star')
# Solid hues (+-12 degrees, random saturation and value: `_random_colour`), or stripes and
# checker in two random colours, so that only their texture identifies them.
PATTERNS = ('red', 'green', 'blue', 'stripes', 'yellow', 'checker', 'cyan', 'magenta')
_HUES = {'red': 0.0, 'yellow': 60.0, 'green': 120.0, 'cyan': 180.0, 'blue': 240.0,
         'magenta': 300.0}
MAX_CLASSES = len(SHAPES) * len(PATTERNS)
# Shapes that only the 'downstream' class set draws (never an upstream or default class).
DOWNSTREAM_SHAPES = ('crescent', 'hourglass', 'arrow', 'heart', 'dome')
# The downstream scenes (`make_scene`), and the patterns that would be hard to see in each.
SCENES = ('sky', 'grass', 'sand', 'night', 'brick')
_CAMOUFLAGE = {'sky': ('blue', 'cyan'), 'grass': ('green',), 'sand': ('yellow',), 'night': (),
               'brick': ('red', 'magenta')}
# Per scene, the order its classes take the patterns in: rotated by the scene's index, then the
# camouflaged ones moved last (the first is used from K = 31 on).
_SCENE_PATTERNS = {
    scene: ([p for p in rot if p not in _CAMOUFLAGE[scene]]
            + [p for p in rot if p in _CAMOUFLAGE[scene]])
    for i, scene in enumerate(SCENES)
    for rot in [[PATTERNS[(j + i) % len(PATTERNS)] for j in range(len(PATTERNS))]]}
# The 'background' class set (configs/demo_background.py): the class is the object's pattern and
# size, on a scene that misleads. Its patterns stay visible on every scene (no camouflage), and
# the object's half-width range (a share of the image side) of each size does not overlap.
BACKGROUND_PATTERNS = ('stripes', 'checker', 'magenta', 'yellow')
OBJECT_SIZES = {'small': (0.14, 0.24), 'large': (0.32, 0.45)}
# Of every HOME_PERIOD training images of a 'background' class (in index order), HOME_SHARE are
# on its home scene and the rest on the other scenes in turn; test images cycle through every
# scene, so each class appears on each scene equally often.
HOME_SHARE, HOME_PERIOD = 9, 10
CLASS_SETS = ('default', 'upstream', 'downstream', 'background')
MAX_CLASSES_OF = {'default': MAX_CLASSES, 'upstream': MAX_CLASSES,
                  'downstream': len(SCENES) * len(PATTERNS),
                  'background': len(BACKGROUND_PATTERNS) * len(OBJECT_SIZES)}
_SPLIT_CODE = {'train': 0, 'test': 1}
# Folded into the image RNG key of the non-default class sets; the default's key is
# (seed, split, index) alone (`SyntheticLT._rng`).
_CLASS_SET_CODE = {'upstream': 1, 'downstream': 2, 'background': 3}


def shape_pattern_grid(num_classes: int) -> tuple[int, int]:
  """(number of shapes, number of patterns) used for K classes: S = max(ceil(sqrt K), ceil(K/8))."""
  if not 2 <= num_classes <= MAX_CLASSES:
    raise ValueError(f'The synthetic dataset supports 2..{MAX_CLASSES} classes, got {num_classes} '
                     '(config.data.num_classes).')
  num_shapes = min(len(SHAPES), max(math.ceil(math.sqrt(num_classes)),
                                    math.ceil(num_classes / len(PATTERNS))))
  return num_shapes, math.ceil(num_classes / num_shapes)


class SyntheticClass(NamedTuple):
  """What makes an image one class: its object's shape(s), its pattern, its scene.

  shapes: the shape of the object, or several, one drawn per image (the downstream classes).
  scene: a `SCENES` name, or None for the shared random background pool.
  size: an `OBJECT_SIZES` key, or None for any size (half-width 20-45% of the image).
  home: the scene most of the class's training images are on (`HOME_SHARE`), its test images on
    every scene; None where `scene` decides.
  """
  shapes: tuple[str, ...]
  pattern: str
  scene: str | None = None
  size: str | None = None
  home: str | None = None

  @property
  def name(self) -> str:
    """'red circle' (one shape, the pool's backgrounds), 'red on sky' (a scene) or 'small
    stripes' (a size: the scene misleads)."""
    if self.size is not None:
      return f'{self.size} {self.pattern}'
    if self.scene is None:
      return f'{self.pattern} {"/".join(self.shapes)}'
    return f'{self.pattern} on {self.scene}'


def class_table(num_classes: int, class_set: str = 'default') -> list[SyntheticClass]:
  """The `SyntheticClass` of each of the K classes of `class_set`.

  * 'default': shape `SHAPES[c % S]`, pattern `PATTERNS[c // S]`, with S shapes in use
    (`shape_pattern_grid`: 5 for K = 20, so 5 shapes x 4 patterns), K <= 64; on the shared pool
    of random backgrounds.
  * 'upstream' (the demo backbone's balanced pretraining task, `configs/pretrain_synthetic.py`):
    every pair of the 8 `SHAPES` and the 8 `PATTERNS`, class c = (`SHAPES[c % 8]`,
    `PATTERNS[c // 8]`), K <= 64; on the shared pool too.
  * 'downstream' (the demo's long-tailed task, `configs/demo.py`): a pattern *in a scene*: class
    c is in scene `SCENES[c % 5]` with the (c // 5)-th pattern of that scene's order
    (`_SCENE_PATTERNS`: rotated by the scene's index, the patterns that would vanish into the
    scene last), K <= 40; every pair occurs once, and head, medium and tail classes each mix
    scenes and patterns. The object's shape is drawn per image from `DOWNSTREAM_SHAPES`, which
    no upstream class has, and carries no label.

  * 'background' (`configs/demo_background.py`): the object's pattern and size, class c =
    (`BACKGROUND_PATTERNS[c // 2]`, small if c is even else large), K <= 8, the shape drawn per
    image from `DOWNSTREAM_SHAPES`. The scene carries no label but misleads in training: class c
    is mostly on its home scene, `SCENES[c]` for c < 5 and, for the tail classes 5, 6, 7, the
    home of class (c - 5) % 2, a head class (`home_scene`); at test every class is on every
    scene equally often.

  So upstream and downstream share the patterns, the noise and the kind of objects, but no class:
  every downstream class needs its scene, a background the upstream never shows (its backgrounds
  carry no label, so a backbone pretrained on it learns to look past the background). The
  downstream task asks for what the paper's BR prompts are for: context in the background,
  shared by the classes of a scene whatever their object (Section 4.3), next to the object's own
  pattern (the FR prompts' salient region). The demo thus measures transfer through prompts, not
  a reused head.
  """
  if class_set not in CLASS_SETS:
    raise ValueError(f'Unknown synthetic class set {class_set!r} (config.data.class_set); choose '
                     f'one of {CLASS_SETS}.')
  top = MAX_CLASSES_OF[class_set]
  if not 2 <= num_classes <= top:
    raise ValueError(f'The synthetic dataset supports 2..{top} classes'
                     + ('' if class_set == 'default' else f' in class set {class_set!r}')
                     + f', got {num_classes} (config.data.num_classes).')
  if class_set == 'default':
    s, _ = shape_pattern_grid(num_classes)
    return [SyntheticClass((SHAPES[c % s],), PATTERNS[c // s]) for c in range(num_classes)]
  if class_set == 'upstream':
    s = len(SHAPES)
    return [SyntheticClass((SHAPES[c % s],), PATTERNS[c // s]) for c in range(num_classes)]
  if class_set == 'background':
    sizes = tuple(OBJECT_SIZES)
    return [SyntheticClass(DOWNSTREAM_SHAPES, BACKGROUND_PATTERNS[c // 2], size=sizes[c % 2],
                           home=home_scene(c)) for c in range(num_classes)]
  s = len(SCENES)
  return [SyntheticClass(DOWNSTREAM_SHAPES, _SCENE_PATTERNS[SCENES[c % s]][c // s], SCENES[c % s])
          for c in range(num_classes)]


def home_scene(c: int) -> str:
  """The home scene of 'background' class c: its own for the first five classes (0 and 1 the
  head at the demo's profile), a head class's (that of class (c - 5) % 2) for the others."""
  return SCENES[c] if c < len(SCENES) else SCENES[(c - len(SCENES)) % 2]


def class_names(num_classes: int, class_set: str = 'default') -> list[str]:
  """Each class's name: '<pattern> <shape>' (e.g. 'red circle'), '<pattern> on <scene>'."""
  return [c.name for c in class_table(num_classes, class_set)]


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
  # The downstream-only shapes.
  if shape == 'crescent':  # the unit disc minus a disc of radius 0.72 shifted right and up
    return (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + (v + 0.15) ** 2 >= 0.72 ** 2)
  if shape == 'hourglass':  # two triangles meeting at the centre, apex to apex
    return (av <= 0.9) & (au <= 0.85 * av + 0.06)
  if shape == 'arrow':  # pointing up: a triangular head over a shaft
    head = (v >= -0.95) & (v <= -0.05) & (au <= 0.95 * (v + 0.95) / 0.9)
    return head | ((au <= 0.28) & (v > -0.1) & (v <= 0.95))
  if shape == 'heart':  # the classic sextic (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled
    x, y = 1.25 * u, 0.25 - 1.25 * v
    return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0
  if shape == 'dome':  # the upper half of a unit disc, flat side down
    return (u * u + (v - 0.4) ** 2 <= 1.0) & (v <= 0.4)
  raise ValueError(f'Unknown shape {shape!r}; known: {SHAPES + DOWNSTREAM_SHAPES}.')


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
  return np.array(colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v), np.float32) * 255.0


def _random_colour(rng: np.random.Generator, hue: float | None = None) -> np.ndarray:
  if hue is None:
    hue = rng.uniform(0, 360)
  else:
    hue += rng.uniform(-12.0, 12.0)
  return _hsv(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))


def make_backgrounds(seed: int, num: int, size: int) -> np.ndarray:
  """The shared background pool, uint8 (num, size, size, 3): gradients plus smooth noise.

  Linear colour gradients plus low-frequency noise, shared by every class of the default and
  upstream class sets, so the background carries no label information.
  """
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


def _smooth_noise(rng: np.random.Generator, size: int, grid: int, amp: float) -> np.ndarray:
  """(size, size, 3) float32 noise in [-amp, amp]: a grid x grid random field, bicubic-upsampled."""
  field = Image.fromarray(rng.integers(0, 256, (grid, grid, 3), np.uint8))
  up = np.asarray(field.resize((size, size), Image.BICUBIC), np.float32)
  return (up * np.float32(2 / 255) - 1) * np.float32(amp)


def make_scene(scene: str, rng: np.random.Generator, size: int) -> np.ndarray:
  """A fresh (size, size, 3) uint8 background of `scene` (one of `SCENES`), drawn from `rng`."""
  ramp = lambda: np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)  # (yy, xx)
  if scene == 'sky':  # pale blue at the top to deeper blue at the bottom, smooth
    top = _hsv(rng.uniform(195, 225), rng.uniform(0.2, 0.4), rng.uniform(0.85, 1.0))
    bottom = _hsv(rng.uniform(200, 230), rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.8))
    yy = ramp()[0]
    img = top * (1 - yy[..., None]) + bottom * yy[..., None] + _smooth_noise(rng, size, 3, 15)
  elif scene == 'grass':  # darker green, rough at every scale
    base = _hsv(rng.uniform(85, 130), rng.uniform(0.5, 0.8), rng.uniform(0.35, 0.6))
    img = base + _smooth_noise(rng, size, 12, 35) + rng.normal(0, 12, (size, size, 3))
  elif scene == 'sand':  # pale yellow-orange with dunes (slanted bands)
    base = _hsv(rng.uniform(30, 50), rng.uniform(0.3, 0.55), rng.uniform(0.75, 0.95))
    freq, phase = rng.uniform(2, 4), rng.uniform(0, 2 * np.pi)
    yy, xx = ramp()
    dunes = 1 + 0.08 * np.sin(2 * np.pi * freq * (yy + 0.3 * xx) + phase)
    img = base * dunes[..., None] + _smooth_noise(rng, size, 4, 10)
  elif scene == 'night':  # near black, bluish, with sparse bright stars
    base = _hsv(rng.uniform(200, 280), rng.uniform(0.3, 0.7), rng.uniform(0.08, 0.2))
    img = base + _smooth_noise(rng, size, 3, 8)
    img = np.where((rng.random((size, size)) < 0.03)[..., None], np.float32(230.0), img)
  elif scene == 'brick':  # red-brown bricks in a running bond, light mortar
    base = _hsv(rng.uniform(5, 25), rng.uniform(0.5, 0.8), rng.uniform(0.45, 0.7))
    h = int(rng.integers(4, 7))
    w = 2 * h
    oy, ox = rng.integers(0, h), rng.integers(0, w)
    yi = np.arange(size)[:, None] + oy
    xi = np.arange(size)[None, :] + ox + (yi // h % 2) * (w // 2)
    mortar = (yi % h == 0) | (xi % w == 0)
    img = np.where(mortar[..., None], _hsv(0, 0, 0.8), base + _smooth_noise(rng, size, 6, 12))
  else:
    raise ValueError(f'Unknown scene {scene!r}; known: {SCENES}.')
  return np.clip(img, 0, 255).astype(np.uint8)


class SyntheticLT:
  """Random-access source of the synthetic long-tailed dataset, images of any square size S.

  `source[i]` -> {'image': uint8 (S, S, 3), 'label': int, 'id': i}. The train split has the
  exponential profile n_i = int(num_train_max * (1/ratio)^(i/(K-1))), ordered class by class
  (class 0, the head, first); the test split has `num_test_per_class` images per class. `labels`
  holds every label without generating images. Every image is a pure function of (seed, split,
  index, class set), generated on the fly in `__getitem__`, so the source is random-access,
  picklable (the background pool and noise tile are rebuilt lazily in each worker) and needs no
  storage.
  `class_set` chooses what the classes are (`class_table`: shape, pattern, scene); with
  imbalance_ratio 1 every class has `num_train_max` training images (a balanced task).
  """

  def __init__(self, split: str = 'train', *, num_classes: int = 20,
               imbalance_ratio: float = 100.0, num_train_max: int = 200,
               num_test_per_class: int = 20, image_size: int = 32, seed: int = 0,
               num_backgrounds: int = 32, class_set: str = 'default'):
    if split not in _SPLIT_CODE:
      raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if image_size < 8:
      raise ValueError(f'image_size must be >= 8 pixels, got {image_size}.')
    self.class_set = str(class_set)
    self.classes = class_table(num_classes, self.class_set)  # a SyntheticClass per class
    self.num_shapes = len({shape for c in self.classes for shape in c.shapes})
    self.num_patterns = len({c.pattern for c in self.classes})
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
    self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
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
    return {'image': self.render(label, self._rng(index), scene=self.scene_of(index)),
            'label': label, 'id': index}

  def scene_of(self, index: int) -> str | None:
    """The scene image `index` is drawn on where its class has a home scene (the 'background'
    class set: `HOME_SHARE` of every `HOME_PERIOD` training images of a class on its home, the
    rest on the other scenes in turn; the test images of a class on `SCENES` in turn), else its
    class's `scene` (None: the shared background pool)."""
    label = int(self.labels[int(index)])
    cls = self.classes[label]
    if cls.home is None:
      return cls.scene
    j = int(index) - int(self._starts[label])  # the image's position within its class
    if self.split == 'test':
      return SCENES[j % len(SCENES)]
    if j % HOME_PERIOD < HOME_SHARE:
      return cls.home
    others = [s for s in SCENES if s != cls.home]
    return others[(j // HOME_PERIOD) % len(others)]

  def _rng(self, index: int) -> np.random.Generator:
    """The generator of image `index`: key (seed, split, index), plus the class set's code for
    the non-default class sets."""
    key = [self.seed, _SPLIT_CODE[self.split], index]
    if self.class_set in _CLASS_SET_CODE:
      key.append(_CLASS_SET_CODE[self.class_set])
    return np.random.default_rng(key)

  def object_mask(self, index: int) -> np.ndarray:
    """The (S, S) bool mask of the object in `self[index]`'s image (the pixels the object
    covers, before the noise): the ground truth of where a model should look."""
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f'index {index} out of range for {len(self)} synthetic {self.split} images.')
    return self.render_with_mask(int(self.labels[index]), self._rng(index),
                                 scene=self.scene_of(index))[1]

  def render(self, label: int, rng: np.random.Generator, *, scene: str | None = None
             ) -> np.ndarray:
    """Draws one image of class `label` with randomness from `rng`."""
    return self.render_with_mask(label, rng, scene=scene)[0]

  def render_with_mask(self, label: int, rng: np.random.Generator, *, scene: str | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """`render`, and the (S, S) bool mask of the object's pixels.

    The object has a random centre, size (half-width 20-45% of the image, or its class's
    `OBJECT_SIZES` range) and rotation (+-15 degrees), and lies on `scene` (default: its
    class's scene; for a class with a home scene, its home) or on a random (flipped) background
    of the shared pool; per-pixel noise (+-10 levels, a random window of the noise tile) is added
    last.
    """
    size = self.image_size
    cls = self.classes[label]
    scene = scene or cls.scene or cls.home
    pattern = cls.pattern
    # A class of one shape draws no random number for it.
    shape = cls.shapes[int(rng.integers(len(cls.shapes)))] if len(cls.shapes) > 1 else cls.shapes[0]
    if scene is None:
      bg = self.backgrounds[rng.integers(self.num_backgrounds)]
      if rng.random() < 0.5:
        bg = bg[:, ::-1]
      if rng.random() < 0.5:
        bg = bg[::-1]
    else:
      bg = make_scene(scene, rng, size)
    img = bg.astype(np.int16)
    radius = rng.uniform(*OBJECT_SIZES.get(cls.size, (0.2, 0.45))) * size
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
    full = np.zeros((size, size), bool)
    full[y0:y1, x0:x1] = mask
    return np.clip(img, 0, 255).astype(np.uint8), full
