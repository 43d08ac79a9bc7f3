r"""LT-DPT on Places-LT (Places365-LT; paper Table 3, right).

  python -m ltdpt_jax.main --config=configs/places.py --workdir=runs/places_lt

The OLTR split files over tfds `places365_small`, or with `:source=files,image_root=DIR` over your
Places365-Standard folder (train/ and val/, data_256/ and val_256/, or data_large/ and
val_large/), no TensorFlow. Evaluated on the Places-LT test list (100 images per class). The
paper's settings but 100 epochs with DRW on the last 40 (Section 5.3). Expected top-1: 49.9
(Table 3; the paper's numbers: docs/reproducing.md).
"""

from ltdpt_jax import config_lib


def get_config(arg=None):
  c, _ = config_lib.benchmark_config(arg)
  c.data.dataset = 'places_lt'
  c.train.epochs = 100
  c.train.drw_epochs = 40
  c.train.checkpoint_every_steps = 2000
  return c
