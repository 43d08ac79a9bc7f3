r"""LT-DPT on CIFAR-100-LT (paper Section 5, Tables 1 and 4-7), with the paper's settings.

  python -m ltdpt_jax.main --config=configs/cifar100_lt.py:ratio=100 --workdir=runs/c100_r100

`ratio` (the imbalance ratio) is one of 200, 100, 50, 10. Expected top-1 (Table 1, LT-DPT):
ratio 200: 89.0, 100: 90.4, 50: 91.0, 10: 91.6. `source=files` reads the official binary archive
instead of tfds (no TensorFlow): `image_root=DIR` holds cifar-100-binary.tar.gz or its
extracted cifar-100-binary/; without it the archive is downloaded once into the cache (161 MB).
"""

from ltdpt_jax import config_lib


def get_config(arg=None):
  c, arg = config_lib.benchmark_config(arg, ratio=100)
  if arg.ratio not in (200, 100, 50, 10):
    raise ValueError(f'ratio must be one of 200, 100, 50, 10 (got {arg.ratio}).')
  # Section 5.3, all of it base_config's: ViT-B/16 (ImageNet-21k), n_f = n_b = 10, G = 20, top-2,
  # H = 6, lambda 0.5, GCL (s 25, m 0.1) + DRW on the last 10 of 70 epochs, SGD 0.005 at batch
  # 128, GNM, 224 px; its dataset is CIFAR-100-LT.
  c.data.imbalance_ratio = float(arg.ratio)
  return c
