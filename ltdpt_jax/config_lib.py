"""The defaults every experiment config in `configs/` starts from; it imports only ml_collections.

`base_config()` (LT-DPT with the paper's settings), `pretrain_base_config()` (a backbone
pretrained with `python -m ltdpt_jax.tools.pretrain`), `CHECKPOINTS` (where the paper's
backbones are published) and `parse_arg` (the `file.py:a=1,b=x` argument of a config). Each part
reads its own section; the commands check the values (`cli.validate_config`) before any work.
"""

from __future__ import annotations

import copy

import ml_collections

# The default of config.optim.frozen_patterns: the whole ViT backbone is frozen.
FROZEN_PATTERNS = ('^backbone/',)


def base_config() -> ml_collections.ConfigDict:
  """The paper's defaults (Section 5.3), as one ConfigDict: ViT-B/16 pretrained on ImageNet-21k,
  CIFAR-100-LT at ratio 100, batch 128, 70 epochs with DRW on the last 10."""
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.backbone = 'b16'           # 'ti16' | 's16' | 'b16' | 'l16' | 'custom' (model.vit sizes)
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
  # Compute dtype: 'float32' | 'bfloat16' (the frozen backbone is then stored in bf16 too).
  c.model.dtype = 'float32'
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
  c.optim.frozen_patterns = FROZEN_PATTERNS

  c.data = ml_collections.ConfigDict()
  # data.DATASETS: 'cifar100_lt' | 'imagenet_lt' | 'places_lt' | 'inat2018' | 'synthetic', or your
  # own images: 'folder' | 'list' (below).
  c.data.dataset = 'cifar100_lt'
  c.data.imbalance_ratio = 100.0
  c.data.image_size = 224
  # Where the paper's benchmarks are read from: 'tfds' (prepared tfds data in data_dir) or
  # 'files' (the dataset's own files under image_root: for cifar100_lt the folder holding
  # cifar-100-binary.tar.gz or cifar-100-binary/, '' = download into the cache).
  c.data.source = 'tfds'
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
  # Root of the files: of a 'list' dataset ('' = the list file's folder), or of a benchmark with
  # source 'files' (above).
  c.data.image_root = ''
  c.data.class_names = ()            # () = sorted train class folders / CSV names
  c.data.on_bad_image = 'error'      # 'error' (stop before training) | 'skip' (drop them)
  # Share of each class's training images held out as a validation split (seeded by data.seed;
  # every class keeps at least one training image), evaluated as 'val': model selection in a
  # study's grid (ltdpt_jax/studies). 0: none, all of them train.
  c.data.val_fraction = 0.0
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


def pretrain_base_config() -> ml_collections.ConfigDict:
  """The defaults of a pretraining config (`configs/pretrain_*.py` set what they change).

  Sections: `model` (the ViT: `backbone` preset or 'custom' with `vit.*` sizes, `dtype`; method
  'pretrain': every weight trained, with a linear head), `data` (LT-DPT's data section, so every
  source works), `loss` (`label_smoothing`), `optim` (AdamW), `evals` and `train` (as LT-DPT's).
  """
  lt = base_config()
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict()
  c.model.method = 'pretrain'
  c.model.backbone = 'custom'        # 'ti16' | 's16' | 'b16' | 'l16' | 'custom' (model.vit sizes)
  c.model.vit = copy.deepcopy(lt.model.vit)
  c.model.dtype = 'float32'          # compute dtype: 'float32' | 'bfloat16' (params stay float32)

  c.data = copy.deepcopy(lt.data)
  c.data.dataset = 'synthetic'
  c.data.class_set = 'upstream'
  c.data.imbalance_ratio = 1.0       # balanced

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.1

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3                  # peak learning rate (for the global batch as configured)
  c.optim.warmup_epochs = 2.0        # linear warm-up from 0, then cosine decay to 0
  c.optim.weight_decay = 0.05        # AdamW's decoupled decay, on kernels only
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.grad_clip_norm = 1.0       # 0 = no clipping

  c.evals = copy.deepcopy(lt.evals)
  c.train = ml_collections.ConfigDict()
  c.train.epochs = 30
  c.train.eval_every_epochs = 5
  c.train.checkpoint_every_steps = 500
  c.train.keep_checkpoints = 3
  c.train.log_every_steps = 50
  c.train.best_metric = 'eval/accuracy'
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
# SHA-256 of those files, for the studies' report to tell a run on the paper's backbone from one
# on another file. Google publishes no digests, and none has been recorded from a download yet:
# add one here (URL -> digest) once verified; until then the report compares the URL.
CHECKPOINT_SHA256: dict[str, str] = {}


def benchmark_config(arg: str | None, **defaults) -> tuple[ml_collections.ConfigDict,
                                                           ml_collections.ConfigDict]:
  """`base_config()` and the parsed argument of a paper benchmark's config: its own `defaults`
  plus `source` and `image_root` (e.g. 'ratio=100,source=files,image_root=DIR'), which set
  config.data.source and config.data.image_root."""
  arg = parse_arg(arg, **defaults, source='tfds', image_root='')
  c = base_config()
  c.data.source = arg.source
  c.data.image_root = arg.image_root
  return c, arg


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
