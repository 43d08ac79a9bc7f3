"""Defaults and validation shared by every experiment config in `configs/`.

Each file in `configs/` calls `base_config()` and overrides what its experiment needs. The field
names are fixed by SPEC.md ("Config names"); add fields here, rename none.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """The paper's defaults for ViT-B/16 (Section 5.3), as one ConfigDict."""
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.backbone = 'b16'           # 'ti16' | 's16' | 'b16' | 'l16' | 'custom' (sizes in model.vit)
  # Sizes used only when backbone == 'custom' (tiny ViTs for the demo and the tests).
  c.model.vit = ml_collections.ConfigDict(dict(
      patch_size=4, hidden_size=64, num_layers=4, num_heads=4, mlp_dim=128))
  c.model.checkpoint = ''            # path or URL of the official ViT .npz ('' = random init)
  c.model.checkpoint_sha256 = ''     # checked when the checkpoint is downloaded from a URL
  c.model.method = 'fr_br'           # 'vpt' | 'fr' | 'fr_br'
  c.model.num_fr_prompts = 10        # n_f
  c.model.num_br_prompts = 10        # n_b
  c.model.num_groups = 20            # G
  c.model.top_k = 2
  c.model.num_br_blocks = 6          # H
  c.model.alpha_init = 1.0
  c.model.beta_init = 1.0
  c.model.per_block_scales = False
  c.model.feature = 'cls_prompt_mean'  # 'cls_prompt_mean' | 'cls'
  c.model.prompt_mode = 'replace'    # 'replace' | 'carry'
  c.model.dropout = 0.1
  c.model.dtype = 'float32'          # compute dtype: 'float32' | 'bfloat16'

  c.loss = ml_collections.ConfigDict()
  c.loss.s = 25.0
  c.loss.m = 0.1
  c.loss.noise_mul = 1.0
  c.loss.drw_beta = 0.9998
  c.loss.orth_lambda = 0.5

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.005                 # at global batch 128; scaled linearly with the global batch
  c.optim.lr_base_batch = 128
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.01
  c.optim.gnm_rho = 0.05             # 0 turns GNM off
  c.optim.gnm_dis_mul = 0.1
  # Regexes over '/'-joined parameter paths that are frozen (optax.set_to_zero, no gradients).
  c.optim.frozen_patterns = ('^backbone/',)

  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'cifar100_lt'     # 'cifar100_lt' | 'imagenet_lt' | 'places_lt' | 'inat2018' | 'synthetic'
  c.data.imbalance_ratio = 100.0
  c.data.image_size = 224
  c.data.data_dir = ''               # tfds data_dir ('' = tfds default, $TFDS_DATA_DIR)
  c.data.split_dir = ''              # local directory of OLTR split files ('' = download + cache)
  c.data.batch_size = 128            # global
  c.data.eval_batch_size = 256       # global
  c.data.num_workers = -1            # grain worker processes (-1 = choose from the core count)
  c.data.seed = 0                    # which CIFAR images are kept / synthetic generation
  c.data.num_classes = 20            # synthetic only
  c.data.num_train_max = 200         # synthetic only: images of the largest class
  c.data.num_test_per_class = 20     # synthetic only

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 70
  c.train.drw_epochs = 10
  c.train.eval_every_epochs = 1
  c.train.checkpoint_every_steps = 1000
  c.train.keep_checkpoints = 3
  c.train.log_every_steps = 50
  c.train.seed = 0
  return c
