"""Defaults and validation shared by every experiment config in `configs/`.

Each file in `configs/` calls `base_config()` and sets only what its experiment changes. The
field names are fixed by SPEC.md ("Config names"); add fields here, rename none. One section per
part, and each part reads only its own: `model` (`ltdpt.build_model`), `data` (the input
pipeline, plus `train.seed` for the order), `loss` (the train step), `optim` (the optimiser,
plus the total steps and the global batch), `evals` (the evaluators), `train` (the loop).

`validate` checks every field before any work: the enumerated values against the declarations
of the parts that read them (`vit.BACKBONES`, `ltdpt.METHODS`, ..., `data.DATASETS`,
`evaluators.REGISTRY`), the model section by building the model, and the bounds below.
"""

from __future__ import annotations

import ml_collections

from ltdpt_jax import data as data_lib
from ltdpt_jax import evaluators
from ltdpt_jax import optim
from ltdpt_jax.models import ltdpt
from ltdpt_jax.models import vit


def base_config() -> ml_collections.ConfigDict:
  """The paper's defaults (Section 5.3), as one ConfigDict: ViT-B/16 pretrained on ImageNet-21k,
  CIFAR-100-LT at ratio 100, batch 128, 70 epochs with DRW on the last 10."""
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.backbone = 'b16'           # 'ti16' | 's16' | 'b16' | 'l16' | 'custom' (sizes in model.vit)
  # Sizes used only when backbone == 'custom' (tiny ViTs for the demo and the tests).
  c.model.vit = ml_collections.ConfigDict(dict(
      patch_size=4, hidden_size=64, num_layers=4, num_heads=4, mlp_dim=128))
  c.model.checkpoint = CHECKPOINTS['b16']  # path or URL of the official ViT .npz ('' = random init)
  c.model.checkpoint_sha256 = ''     # checked when the checkpoint is downloaded from a URL
  c.model.method = 'fr_br'           # 'vpt' | 'fr' | 'fr_br' | 'linear' (linear probe: head only)
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
  c.model.dtype = 'float32'          # compute dtype: 'float32' | 'bfloat16' (frozen backbone stored in bf16)
  # Performance knobs (models/vit.py `attend`, `Encoder`): attention 'auto' (cuDNN fused attention
  # on a GPU with bf16, else XLA) | 'xla' | 'cudnn'; masked padding of queries/keys to a multiple of
  # pad_attention_to (0: none on XLA, 8 on cuDNN); remat: rematerialise each block in the backward
  # pass, saving what remat_policy allows ('dots_with_no_batch_dims' | 'dots' | 'nothing').
  c.model.attention = 'auto'
  c.model.pad_attention_to = 0
  c.model.remat = False
  c.model.remat_policy = 'dots_with_no_batch_dims'

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
  c.optim.frozen_patterns = optim.FROZEN_PATTERNS

  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'cifar100_lt'     # data.DATASETS: 'cifar100_lt' | 'imagenet_lt' | 'places_lt' | 'inat2018' | 'synthetic'
  c.data.imbalance_ratio = 100.0
  c.data.image_size = 224
  c.data.data_dir = ''               # tfds data_dir ('' = tfds default, $TFDS_DATA_DIR)
  c.data.split_dir = ''              # local directory of OLTR split files ('' = download + cache)
  c.data.eval_split = 'test'         # ImageNet-LT / Places-LT: 'test' (the paper's) or 'val' lists
  c.data.batch_size = 128            # global
  c.data.crop_min_scale = 0.08       # RandomResizedCrop area range (crop_min_scale, 1)
  # Where the training crop + flip runs. True: in the train step on the accelerator
  # (data/device_transforms.py, Pillow's pixels to the bit), and the grain workers ship each
  # image as stored plus 5 numbers (CIFAR-100-LT: 3 KB instead of 150 KB per image and no 1 ms
  # Pillow upsampling on the host); needs training images of one size. False: in the workers
  # (Pillow). None (auto): True on a GPU or TPU for the datasets stored at one size
  # (cifar100_lt, synthetic), else False. Either way the run computes the same numbers.
  c.data.crop_on_device = ml_collections.config_dict.placeholder(bool)
  c.data.eval_batch_size = 256       # global
  c.data.num_workers = -1            # grain worker processes (-1 = choose from the core count)
  c.data.seed = 0                    # which CIFAR images are kept / synthetic generation
  c.data.num_classes = 20            # synthetic only
  c.data.num_train_max = 200         # synthetic only: images of the largest class
  c.data.num_test_per_class = 20     # synthetic only
  c.data.synthetic_image_size = 0    # synthetic only: side of the generated images (0 = image_size)
  # synthetic only: which (shape, pattern) pairs the classes are (data/synthetic.py): 'default',
  # 'upstream' (the demo backbone's pretraining classes), 'downstream' (the demo's, disjoint).
  c.data.class_set = 'default'
  # Your own data (data/files.py): dataset 'folder' (<dir>/<class name>/<images>) or 'list'
  # ('<path> <label>' lines or a 'path,label' CSV, paths under image_root).
  c.data.train_dir = ''
  c.data.eval_dir = ''
  c.data.train_list = ''
  c.data.eval_list = ''
  c.data.image_root = ''             # '' = the list file's folder
  c.data.class_names = ()            # () = sorted train class folders / CSV names
  c.data.on_bad_image = 'error'      # 'error' (stop before training) | 'skip' (drop them)
  c.data.shot_thresholds = (20, 100)  # tail < 20 <= medium <= 100 < head (training images)

  # Evaluators by name (the prefix of their metrics and files); see ltdpt_jax/evaluators.
  c.evals = ml_collections.ConfigDict()
  c.evals.eval = ml_collections.ConfigDict()
  c.evals.eval.type = 'longtail'     # top-1, head/medium/tail, per class -> eval_<step>.json
  c.evals.eval.every_epochs = 0      # 0: every config.train.eval_every_epochs

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 70
  c.train.drw_epochs = 10
  c.train.eval_every_epochs = 1
  c.train.checkpoint_every_steps = 1000
  c.train.keep_checkpoints = 3
  c.train.log_every_steps = 50
  c.train.best_metric = 'eval/accuracy'  # '<evaluator>/<metric>': best checkpoint, results.json
  c.train.seed = 0
  c.train.plots = True   # after each evaluation: <workdir>/plots/*.png (ltdpt_jax/plot.py)
  # Also measure where the prompts look at each evaluation (an 'attention' evaluator, unless
  # config.evals lists one): foreground shares of Grad-CAM and FR/BR attention in metrics.jsonl.
  c.train.attention_stats = False
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


def _choices() -> dict[str, tuple]:
  """The enumerated fields and the values they accept, as the parts that read them declare."""
  return {
      'model.backbone': vit.BACKBONES,
      'model.method': ltdpt.METHODS,
      'model.feature': ltdpt.FEATURES,
      'model.prompt_mode': ltdpt.PROMPT_MODES,
      'model.dtype': tuple(ltdpt.DTYPES),
      'model.attention': vit.ATTENTIONS,
      'model.remat_policy': tuple(vit.REMAT_POLICIES),
      'data.dataset': data_lib.DATASETS,
      'data.eval_split': data_lib.EVAL_SPLITS,
      'data.on_bad_image': data_lib.ON_BAD_IMAGE,
      'data.class_set': data_lib.CLASS_SETS,
  }


# Bounds of the other numeric fields outside config.model (whose values `ltdpt.build_model`
# checks, with the architecture).
_POSITIVE = ('data.image_size', 'data.batch_size', 'data.eval_batch_size', 'loss.s', 'optim.lr',
             'optim.lr_base_batch', 'train.epochs', 'train.checkpoint_every_steps',
             'train.log_every_steps', 'train.eval_every_epochs', 'train.keep_checkpoints')
_NON_NEGATIVE = ('data.synthetic_image_size', 'loss.m', 'loss.noise_mul', 'loss.orth_lambda', 'optim.momentum',
                 'optim.weight_decay', 'optim.gnm_rho', 'optim.gnm_dis_mul', 'train.drw_epochs')


def _get(config, dotted):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def _validate_model(config):
  """config.model: choices, the architecture and image size, and LTDPT's own checks."""
  try:
    arch = vit.arch_from_config(config.model)
  except ValueError as e:
    raise ValueError(f'config.model.vit: {e}') from None
  try:
    arch.grid(config.data.image_size)
  except ValueError as e:
    raise ValueError(f'config.data.image_size={config.data.image_size}: {e}') from None
  try:
    ltdpt.build_model(config.model, num_classes=2)
  except ValueError as e:
    raise ValueError(f'config.model: {e}') from None


def _validate_evals(config):
  if not config.evals:
    raise ValueError('config.evals is empty; the base config has '
                     "config.evals.eval = {type: 'longtail'}.")
  for name, section in config.evals.items():
    if section.get('type') not in evaluators.REGISTRY:
      raise ValueError(f'config.evals.{name}.type={section.get("type")!r} is not valid; choose '
                       f'one of {tuple(evaluators.REGISTRY)}.')
    if not section.get('every_epochs', 0) >= 0:
      raise ValueError(f'config.evals.{name}.every_epochs={section.every_epochs} must be >= 0 '
                       '(0: config.train.eval_every_epochs).')
  name, sep, key = config.train.best_metric.partition('/')
  if not sep or not key or name not in config.evals:
    raise ValueError(f'config.train.best_metric={config.train.best_metric!r} must be '
                     f"'<evaluator>/<metric>' with an evaluator of config.evals "
                     f'({", ".join(config.evals)}), e.g. \'eval/accuracy\'.')


def validate(config, *, num_devices: int | None = None, num_processes: int | None = None):
  """Raises ValueError naming the first invalid config value and what it accepts."""
  for key, choices in _choices().items():
    value = _get(config, key)
    if value not in choices:
      raise ValueError(f'config.{key}={value!r} is not valid; choose one of {choices}.')
  for key in _POSITIVE:
    if not _get(config, key) > 0:
      raise ValueError(f'config.{key}={_get(config, key)!r} must be > 0.')
  for key in _NON_NEGATIVE:
    if not _get(config, key) >= 0:
      raise ValueError(f'config.{key}={_get(config, key)!r} must be >= 0.')
  if not 0.0 < config.data.crop_min_scale <= 1.0:
    raise ValueError(f'config.data.crop_min_scale={config.data.crop_min_scale} must be in (0, 1].')
  if not 0.0 <= config.loss.drw_beta < 1.0:
    raise ValueError(f'config.loss.drw_beta={config.loss.drw_beta} must be in [0, 1).')
  if config.train.drw_epochs > config.train.epochs:
    raise ValueError(f'config.train.drw_epochs={config.train.drw_epochs} exceeds '
                     f'config.train.epochs={config.train.epochs}.')
  thresholds = tuple(config.data.shot_thresholds)
  if len(thresholds) != 2 or not 0 <= thresholds[0] <= thresholds[1]:
    raise ValueError(f'config.data.shot_thresholds={thresholds} must be (tail_max, head_min) '
                     'with 0 <= tail_max <= head_min, e.g. (20, 100).')
  for key, needed in (('folder', ('train_dir', 'eval_dir')), ('list', ('train_list', 'eval_list'))):
    for field in needed if config.data.dataset == key else ():
      if not config.data[field]:
        raise ValueError(f"config.data.dataset={key!r} needs config.data.{field} (see "
                         'configs/folder.py).')
  if config.data.dataset == 'cifar100_lt' and config.data.imbalance_ratio < 1:
    raise ValueError(f'config.data.imbalance_ratio={config.data.imbalance_ratio} must be >= 1.')
  _validate_model(config)
  _validate_evals(config)
  for count, what in ((num_devices, 'devices'), (num_processes, 'processes')):
    for key in ('data.batch_size', 'data.eval_batch_size') if count else ():
      if _get(config, key) % count:
        raise ValueError(f'config.{key}={_get(config, key)} must be a multiple of the number of '
                         f'{what} ({count}).')
