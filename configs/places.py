r"""LT-DPT on Places-LT (Places365-LT; paper Table 3, right).

Places-LT (OLTR split files) built from tfds `places365_small` (256 px images); evaluated on the
Places-LT test list (100 images per class, from the Places365 validation set). The paper's
settings (`config_lib.base_config()`: ViT-B/16 (ImageNet-21k), batch 128), but 100 epochs with DRW
on the last 40 (Section 5.3).

Expected top-1 (Table 3, LT-DPT on Places365-LT): see the README's results table.

  python -m ltdpt_jax.main --config=configs/places.py --workdir=runs/places_lt
"""

from ltdpt_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.base_config()
  c.data.dataset = 'places_lt'
  c.train.epochs = 100
  c.train.drw_epochs = 40
  c.train.checkpoint_every_steps = 2000
  return c
