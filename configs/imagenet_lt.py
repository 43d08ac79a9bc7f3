r"""LT-DPT on ImageNet-LT (paper Table 2), with the paper's settings.

  python -m ltdpt_jax.main --config=configs/imagenet_lt.py:source=files,image_root=DIR \
      --workdir=runs/imagenet_lt

The OLTR split files over your ImageNet folder (DIR holds train/<wnid>/ and val/, with or without
class folders), no TensorFlow; without `source=files`, tfds `imagenet2012` prepared in
--config.data.data_dir. Evaluated on the ImageNet-LT test list. Expected top-1 (Table 2, LT-DPT):
84.0 (head 85.8, medium 84.1, tail 78.4).
"""

from ltdpt_jax import config_lib


def get_config(arg=None):
  c, _ = config_lib.benchmark_config(arg)
  c.data.dataset = 'imagenet_lt'
  c.train.checkpoint_every_steps = 2000
  return c
