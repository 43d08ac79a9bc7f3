r"""Second demo: a task where the background misleads, to test what LT-DPT adds over VPT.

  python -m ltdpt_jax.main --config=configs/demo_background.py --workdir=runs/demo_background

8 classes, each an object's pattern and size ('small stripes', ...: data/synthetic.py's
'background' class set) on 5 scenes: in training 9 of every 10 images of a class on its home
scene, the 3 tail classes at home on the 2 head classes' scenes; at test every class on every
scene equally often. At 64 px the saliency's share on the object is 1.57 x its area. Backbone:
assets/vit_demo64.npz (configs/pretrain_synthetic.py:size=64); recipe: configs/demo.py's.
"""

import importlib.util
import os

import ltdpt_jax

BACKBONE = os.path.join(os.path.dirname(ltdpt_jax.__file__), 'assets', 'vit_demo64.npz')
BACKBONE_SHA256 = 'd35d8029a1cfdbcd31442ebf7de5f9c051acad3993442e54c012565e87a67899'


def _demo_config():
  """configs/demo.py's config: the recipe (prompts, lr, epochs, DRW, batch) both demos share."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')
  spec = importlib.util.spec_from_file_location('configs_demo', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg=None):
  del arg
  c = _demo_config()
  c.data.class_set = 'background'
  c.data.num_classes = 8
  # 300 training images in the largest class, 6 in the smallest (configs/demo.py's profile): 2
  # head (> 100), 3 medium (20-100) and 3 tail (< 20) classes; 40 test images per class, 8 on
  # each scene.
  c.data.image_size = 64
  c.data.eval_batch_size = 160
  c.model.vit.patch_size = 8     # the same 8 x 8 grid of patches as the first demo's 32 / 4
  c.model.checkpoint = BACKBONE
  c.model.checkpoint_sha256 = BACKBONE_SHA256
  return c
