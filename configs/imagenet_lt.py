r"""LT-DPT on ImageNet-LT (paper Table 2), with the paper's settings.

  python -m ltdpt_jax.main --config=configs/imagenet_lt.py --workdir=runs/imagenet_lt \
      --config.data.data_dir=$TFDS_DATA_DIR

Built from tfds `imagenet2012` (its tar files placed by hand) with the OLTR split files;
evaluated on the ImageNet-LT test list. Expected top-1 (Table 2, LT-DPT): 84.0 (head 85.8,
medium 84.1, tail 78.4).
"""

from ltdpt_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.base_config()
  c.data.dataset = 'imagenet_lt'
  c.train.checkpoint_every_steps = 2000
  return c
