r"""Second demo: a task where the background misleads, to test what LT-DPT adds over VPT.

  python -m ltdpt_jax.main --config=configs/demo_background.py --workdir=runs/demo_background

8 classes, each an object's pattern and size ('small stripes', ...: data/synthetic.py's
'background' class set) on 5 scenes: in training 9 of every 10 images of a class on its home
scene, the 3 tail classes at home on the 2 head classes' scenes; at test every class on every
scene equally often. At 64 px the saliency's share on the object is 1.57 x its area. Backbone:
assets/vit_demo64.npz (configs/pretrain_synthetic.py:size=64); recipe: configs/demo.py's.
"""

import os

import ltdpt_jax
from ltdpt_jax import config_lib

BACKBONE = os.path.join(os.path.dirname(ltdpt_jax.__file__), 'assets', 'vit_demo64.npz')
BACKBONE_SHA256 = 'd35d8029a1cfdbcd31442ebf7de5f9c051acad3993442e54c012565e87a67899'
LR = 0.1  # configs/demo.py's (the same recipe: epochs, DRW, prompts)


def get_config(arg=None):
  del arg
  c = config_lib.base_config()
  c.data.dataset = 'synthetic'
  c.data.class_set = 'background'
  c.data.num_classes = 8
  # 300 training images in the largest class, 6 in the smallest: 2 head (> 100), 3 medium
  # (20-100) and 3 tail (< 20) classes; 40 test images per class, 8 on each scene.
  c.data.imbalance_ratio = 50.0
  c.data.num_train_max = 300
  c.data.num_test_per_class = 40
  c.data.image_size = 64
  c.data.batch_size = 64
  c.data.eval_batch_size = 160
  c.data.num_workers = 0
  c.model.backbone = 'custom'
  c.model.vit.patch_size = 8     # base_config's model.vit otherwise: width 64, 4 blocks, 4 heads
  c.model.checkpoint = BACKBONE
  c.model.checkpoint_sha256 = BACKBONE_SHA256
  c.model.num_fr_prompts = 4
  c.model.num_br_prompts = 4
  c.model.num_groups = 8
  c.model.num_br_blocks = 2
  c.optim.lr = LR
  c.train.epochs = 16
  c.train.drw_epochs = 4
  c.train.eval_every_epochs = 4
  c.train.checkpoint_every_steps = 100
  c.train.log_every_steps = 10
  return c
