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
  c.data.eval_split = 'test'         # ImageNet-LT / Places-LT: 'test' (the paper's) or 'val' lists
  c.data.batch_size = 128            # global
  c.data.crop_min_scale = 0.08       # RandomResizedCrop area range (crop_min_scale, 1)
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


# Public Google Cloud Storage locations of the ImageNet-21k checkpoints the paper's backbones come
# from (AugReg i21k, the weights timm's `vit_*_patch16_224_in21k` and so GNM-PT/LPT load). The
# original 2020 release (`imagenet21k/ViT-B_16.npz`, used by the official VPT code) loads too.
_GCS = 'https://storage.googleapis.com/vit_models'
CHECKPOINTS = {
    'ti16': f'{_GCS}/augreg/Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0.npz',
    's16': f'{_GCS}/augreg/S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0.npz',
    'b16': f'{_GCS}/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz',
    'l16': f'{_GCS}/augreg/L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1.npz',
    'b16_original': f'{_GCS}/imagenet21k/ViT-B_16.npz',
}


def parse_arg(arg: str | None, **defaults):
  """Parses a config argument 'a=1,b=x' into a ConfigDict, typed like `defaults` (big_vision style).

  Unknown keys raise a ValueError naming the key and the accepted ones.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(','):
    if not item:
      continue
    key, sep, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'Unknown config argument {key!r} in {arg!r}; accepted: {sorted(defaults)}')
    if not sep:
      value = 'True'
    kind = type(defaults[key])
    if kind is bool:
      value = value.lower() in ('1', 'true', 'yes')
    out[key] = kind(value)
  return out


_CHOICES = {
    'model.backbone': ('ti16', 's16', 'b16', 'l16', 'custom'),
    'model.method': ('vpt', 'fr', 'fr_br'),
    'model.feature': ('cls_prompt_mean', 'cls'),
    'model.prompt_mode': ('replace', 'carry'),
    'model.dtype': ('float32', 'bfloat16'),
    'data.dataset': ('cifar100_lt', 'imagenet_lt', 'places_lt', 'inat2018', 'synthetic'),
}
_POSITIVE = ('model.num_fr_prompts', 'model.num_groups', 'model.top_k', 'data.image_size',
             'data.batch_size', 'data.eval_batch_size', 'train.epochs', 'loss.s',
             'optim.lr', 'train.checkpoint_every_steps', 'train.log_every_steps',
             'train.eval_every_epochs', 'train.keep_checkpoints')
_NON_NEGATIVE = ('model.num_br_prompts', 'model.num_br_blocks', 'model.dropout', 'loss.m',
                 'loss.noise_mul', 'loss.orth_lambda', 'optim.momentum', 'optim.weight_decay',
                 'optim.gnm_rho', 'optim.gnm_dis_mul', 'train.drw_epochs')


def _get(config, dotted):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def validate(config, *, num_devices: int | None = None, num_processes: int | None = None):
  """Raises ValueError naming the first invalid config value and what it accepts."""
  for key, choices in _CHOICES.items():
    value = _get(config, key)
    if value not in choices:
      raise ValueError(f'config.{key}={value!r} is not valid; choose one of {choices}.')
  for key in _POSITIVE:
    if not _get(config, key) > 0:
      raise ValueError(f'config.{key}={_get(config, key)!r} must be > 0.')
  for key in _NON_NEGATIVE:
    if not _get(config, key) >= 0:
      raise ValueError(f'config.{key}={_get(config, key)!r} must be >= 0.')
  m = config.model
  if not 0.0 < config.data.crop_min_scale <= 1.0:
    raise ValueError(f'config.data.crop_min_scale={config.data.crop_min_scale} must be in (0, 1].')
  if not 0.0 <= m.dropout < 1.0:
    raise ValueError(f'config.model.dropout={m.dropout} must be in [0, 1).')
  if not 0.0 <= config.loss.drw_beta < 1.0:
    raise ValueError(f'config.loss.drw_beta={config.loss.drw_beta} must be in [0, 1).')
  if config.train.drw_epochs > config.train.epochs:
    raise ValueError(f'config.train.drw_epochs={config.train.drw_epochs} exceeds '
                     f'config.train.epochs={config.train.epochs}.')
  if m.method == 'fr_br':
    if m.num_br_prompts <= 0 or m.num_br_blocks <= 0:
      raise ValueError("method 'fr_br' needs config.model.num_br_prompts > 0 and "
                       'config.model.num_br_blocks > 0 (or use --config.model.method=fr).')
    if m.top_k > m.num_groups:
      raise ValueError(f'config.model.top_k={m.top_k} exceeds config.model.num_groups='
                       f'{m.num_groups}.')
  if m.backbone == 'custom':
    v = m.vit
    if v.hidden_size % v.num_heads:
      raise ValueError(f'config.model.vit.hidden_size={v.hidden_size} is not divisible by '
                       f'config.model.vit.num_heads={v.num_heads}.')
    patch = v.patch_size
  else:
    patch = 16
  if config.data.image_size % patch:
    raise ValueError(f'config.data.image_size={config.data.image_size} is not a multiple of the '
                     f'patch size {patch}.')
  if config.data.dataset == 'cifar100_lt' and config.data.imbalance_ratio < 1:
    raise ValueError(f'config.data.imbalance_ratio={config.data.imbalance_ratio} must be >= 1.')
  if num_devices:
    for key in ('data.batch_size', 'data.eval_batch_size'):
      if _get(config, key) % num_devices:
        raise ValueError(f'config.{key}={_get(config, key)} must be a multiple of the number of '
                         f'devices ({num_devices}).')
  if num_processes:
    for key in ('data.batch_size', 'data.eval_batch_size'):
      if _get(config, key) % num_processes:
        raise ValueError(f'config.{key}={_get(config, key)} must be a multiple of the number of '
                         f'processes ({num_processes}).')
