r"""LT-DPT on Places-LT (Places365-LT; paper Table 3, right).

  python -m ltdpt_jax.main --config=configs/places.py --workdir=runs/places_lt

Built from tfds `places365_small` with the OLTR split files; evaluated on the Places-LT test list
(100 images per class). The paper's settings but 100 epochs with DRW on the last 40 (Section
5.3). Expected top-1: the README's results table.
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
