r"""LT-DPT on iNaturalist 2018 (paper Table 3, left), with the paper's settings.

  python -m ltdpt_jax.main --config=configs/inat2018.py --workdir=runs/inat2018

tfds `i_naturalist2018`, its official train / validation splits (8,142 classes). Expected top-1
(Table 3, LT-DPT): 76.9.
"""

from ltdpt_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.base_config()
  c.data.dataset = 'inat2018'
  c.train.checkpoint_every_steps = 5000
  return c
