r"""LT-DPT on iNaturalist 2018 (paper Table 3, left).

tfds `i_naturalist2018` with its official train / validation splits (8,142 classes). The paper's
settings (`config_lib.base_config()`): ViT-B/16 (ImageNet-21k), batch 128, 70 epochs, DRW on the
last 10.

Expected top-1 (Table 3, LT-DPT on iNaturalist 2018): overall 76.9.

  python -m ltdpt_jax.main --config=configs/inat2018.py --workdir=runs/inat2018
"""

from ltdpt_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.base_config()
  c.data.dataset = 'inat2018'
  c.train.checkpoint_every_steps = 5000
  return c
