r"""LT-DPT on iNaturalist 2018 (paper Table 3, left), with the paper's settings.

  python -m ltdpt_jax.main --config=configs/inat2018.py --workdir=runs/inat2018

The official train / validation splits (8,142 classes) from tfds `i_naturalist2018`, or with
`:source=files,image_root=DIR` from the folder holding train_val2018/ and the official
train2018.json / val2018.json (or the iNaturalist18_{train,val}.txt lists, there or in
--config.data.split_dir), no TensorFlow. Expected top-1 (Table 3, LT-DPT): 76.9.
"""

from ltdpt_jax import config_lib


def get_config(arg=None):
  c, _ = config_lib.benchmark_config(arg)
  c.data.dataset = 'inat2018'
  c.train.checkpoint_every_steps = 5000
  return c
