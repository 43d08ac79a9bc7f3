r"""Pretraining of the demo's backbone: a small ViT, every weight trained, on the balanced
*upstream* synthetic task (the 64 shape x pattern classes of `data/synthetic.py`).

  python -m ltdpt_jax.tools.pretrain --config=configs/pretrain_synthetic.py \
      --workdir=runs/pretrain --out=ltdpt_jax/assets/vit_demo.npz

This command made `ltdpt_jax/assets/vit_demo.npz` (its `.json` holds the command, the upstream
top-1, reference logits); `:size=64` (64 px, patches of 8) `vit_demo64.npz`, the backbone of
configs/demo_background.py. No downstream class of a demo is an upstream one.
"""

from ltdpt_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, size=32)
  if arg.size not in (32, 64):
    raise ValueError(f'size must be 32 or 64 (got {arg.size}).')
  c = config_lib.pretrain_base_config()
  c.data.dataset = 'synthetic'
  c.data.class_set = 'upstream'
  c.data.num_classes = 64
  c.data.imbalance_ratio = 1.0
  c.data.num_train_max = 400       # per class: 25,600 training images
  c.data.num_test_per_class = 20   # 1,280 eval images
  c.data.image_size = arg.size
  # Patches of 4 px at 32 (base_config's model.vit) and of 8 px at 64: the same 8 x 8 grid.
  c.model.vit.patch_size = arg.size // 8
  c.data.batch_size = 128
  c.data.eval_batch_size = 256
  # RandomResizedCrop area (0.25, 1), not (0.08, 1): 8% of a 32 px image (a 9 px window) often
  # misses the object, which would train on wrong labels.
  c.data.crop_min_scale = 0.25
  c.data.num_workers = -1
  c.data.seed = 1                  # upstream images are drawn with another seed than the demo's
  c.model.backbone = 'custom'      # base_config's model.vit: patch 4, width 64, 4 blocks, 4 heads
  # AdamW (betas 0.9 / 0.999, weight decay on kernels), warm-up over 2 epochs then cosine to 0,
  # label smoothing 0.1, gradients clipped at norm 1 (pretrain_base_config's).
  c.optim.lr = 3e-3
  c.optim.warmup_epochs = 2.0
  c.optim.weight_decay = 0.05
  c.loss.label_smoothing = 0.1
  c.train.epochs = 30
  c.train.eval_every_epochs = 5
  c.train.checkpoint_every_steps = 400
  c.train.log_every_steps = 50
  return c
