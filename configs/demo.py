r"""Offline demo: LT-DPT on the embedded synthetic long-tailed benchmark, on a CPU in minutes.

20 classes (shape x colour pattern of a foreground object on backgrounds shared by all classes),
imbalance ratio 10, 32 px images; a tiny ViT (patch 4, width 64, 4 blocks) initialised from a
fixed seed and frozen like any backbone, since no pretrained weights are reachable offline
(`--config.model.checkpoint=PATH.npz` swaps in a real one, with a matching image size).
Everything else is the paper's recipe scaled down: FR + BR prompts with the saliency bias, GCL +
DRW (last 3 of 12 epochs), orthogonality loss, SGD + GNM.

  python -m ltdpt_jax.main --config=configs/demo.py --workdir=runs/demo
"""

from ltdpt_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.base_config()
  c.data.dataset = 'synthetic'
  c.data.num_classes = 20
  c.data.imbalance_ratio = 10.0
  c.data.num_train_max = 300
  c.data.num_test_per_class = 25
  c.data.image_size = 32
  c.data.batch_size = 64
  c.data.eval_batch_size = 250
  c.data.num_workers = 0
  c.model.backbone = 'custom'      # base_config's model.vit: patch 4, width 64, 4 blocks, 4 heads
  c.model.checkpoint = ''
  c.model.num_fr_prompts = 4
  c.model.num_br_prompts = 4
  c.model.num_groups = 8
  c.model.num_br_blocks = 2
  c.data.crop_min_scale = 0.5      # milder crops: 8% of a 32 px image often misses the object
  c.loss.noise_mul = 0.5           # a random backbone's cosines are small; full GCL noise drowns them
  c.optim.lr = 1.0                 # prompts on a random backbone need a larger step than 0.005
  c.train.epochs = 12
  c.train.drw_epochs = 3
  c.train.eval_every_epochs = 3
  c.train.checkpoint_every_steps = 50
  c.train.log_every_steps = 10
  return c
