r"""A long-tailed image folder of real photographs and scans, from scikit-image's bundled images.

  python -m ltdpt_jax.bench.real_folder --out=runs/real_folder

Eleven classes, one per bundled image (textures, scans, microscopy, astronomy: `CLASSES`); each
example a random square JPEG crop (15-35% of the shorter side), training crops from the left 60%
of the image and evaluation crops from the right 40% (no evaluation pixel is seen in training);
150 down to 5 training crops per class (ratio 30, seeded class order), 25 for evaluation. Needs
scikit-image (the `test` extra). `write_folder` makes it.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app
from absl import flags
from PIL import Image

from ltdpt_jax.data import longtail

CLASSES = ('brick', 'grass', 'gravel', 'coins', 'page', 'text', 'immunohistochemistry', 'cell',
           'retina', 'moon', 'hubble_deep_field')
TRAIN_SHARE = 0.6


def _image(name: str) -> np.ndarray:
  import skimage.data  # pylint: disable=g-import-not-at-top
  image = getattr(skimage.data, name)()
  return np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]


def _crop(image: np.ndarray, rng: np.random.Generator, train: bool) -> np.ndarray:
  h, w = image.shape[:2]
  side = int(rng.uniform(0.15, 0.35) * min(h, w))
  x0, x1 = (0, int(TRAIN_SHARE * w)) if train else (int(TRAIN_SHARE * w), w)
  x = int(rng.integers(x0, x1 - side + 1))
  y = int(rng.integers(0, h - side + 1))
  return image[y:y + side, x:x + side]


def write_folder(out: str, *, max_count: int = 150, ratio: float = 30.0, eval_per_class: int = 25,
                 seed: int = 0) -> dict[str, int]:
  """Writes `<out>/train/<class>/*.jpg` and `<out>/val/<class>/*.jpg`; returns the training
  count of each class."""
  rng = np.random.default_rng(seed)
  counts = longtail.exponential_counts(max_count, ratio, len(CLASSES))
  order = rng.permutation(len(CLASSES))
  out_counts = {}
  for rank, index in enumerate(order):
    name = CLASSES[index]
    image = _image(name)
    for split, n in (('train', int(counts[rank])), ('val', eval_per_class)):
      folder = os.path.join(out, split, name)
      os.makedirs(folder, exist_ok=True)
      for i in range(n):
        crop = _crop(image, rng, split == 'train')
        Image.fromarray(crop).save(os.path.join(folder, f'{i:04d}.jpg'), quality=90)
    out_counts[name] = int(counts[rank])
  return out_counts


def main(argv):
  del argv
  counts = write_folder(flags.FLAGS.out, seed=flags.FLAGS.seed)
  print(f'{flags.FLAGS.out}: {sum(counts.values())} training crops over {len(counts)} classes '
        f'({", ".join(f"{k} {v}" for k, v in counts.items())}), 25 evaluation crops per class.')


if __name__ == '__main__':
  flags.DEFINE_string('out', 'runs/real_folder', 'Where to write train/ and val/.')
  flags.DEFINE_integer('seed', 0, 'Seed of the crops and the class order.')
  app.run(main)
