r"""LT-DPT on ImageNet-LT (paper Table 2).

ImageNet-LT (Liu et al. 2019, OLTR split files) built from tfds `imagenet2012` (which needs the
ImageNet tar files placed by hand; see the README); evaluated on the ImageNet-LT test list
(50 images per class, taken from the ImageNet validation set). The paper's settings
(`config_lib.base_config()`): ViT-B/16 (ImageNet-21k), batch 128, 70 epochs, DRW on the last 10.

Expected top-1 (Table 2, LT-DPT): overall 84.0, head 85.8, medium 84.1, tail 78.4.

  python -m ltdpt_jax.main --config=configs/imagenet_lt.py --workdir=runs/imagenet_lt \
      --config.data.data_dir=$TFDS_DATA_DIR
"""

from ltdpt_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.base_config()
  c.data.dataset = 'imagenet_lt'
  c.train.checkpoint_every_steps = 2000
  return c
