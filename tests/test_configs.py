"""Every experiment config loads and validates, and the paper's configs hold Section 5.3's settings.

The expected values are typed here from the paper (Section 5.3), not read from `base_config`,
so a typo in either the base or an experiment file fails a test.
"""

import pytest

import train_utils
from ltdpt_jax import cli
from ltdpt_jax import config_lib
from ltdpt_jax import fetch
from ltdpt_jax.tools import pretrain

CONFIG_FILES = sorted(p.stem for p in (train_utils.REPO / 'configs').glob('*.py'))
ARGS = {'cifar100_lt': ('ratio=200', 'ratio=100', 'ratio=50', 'ratio=10'),
        'folder': ('train_dir=/data/train,eval_dir=/data/val',
                   'train_list=train.txt,eval_list=val.txt,image_root=/data')}

# Section 5.3: ViT-B/16 pretrained on ImageNet-21k, batch 128, lr 0.005, weight decay 0.01,
# 70 epochs with DRW on the last 10 (Places-LT: 100 with the last 40), H = 6, lambda = 0.5.
PAPER = {
    'cifar100_lt': ('cifar100_lt', 70, 10),
    'imagenet_lt': ('imagenet_lt', 70, 10),
    'inat2018': ('inat2018', 70, 10),
    'places': ('places_lt', 100, 40),
}


def test_the_paper_configs_are_all_here():
  assert set(PAPER) | {'demo'} <= set(CONFIG_FILES)


@pytest.mark.parametrize('name', CONFIG_FILES)
def test_config_loads_validates_and_adds_no_key(name):
  """Validates on one device; sets only fields base_config has (a misspelt field would be a
  new key that nothing reads). Pretraining configs (`pretrain_*`) against their own base and
  the pretraining command's validation."""
  pretraining = name.startswith('pretrain_')
  base = (config_lib.pretrain_base_config() if pretraining else config_lib.base_config())
  validate = pretrain.validate if pretraining else cli.validate_config
  base = set(train_utils.leaves(base.to_dict()))
  for arg in ARGS.get(name, (None,)):
    c = train_utils.load_config(name, arg)
    validate(c, num_devices=1, num_processes=1)
    extra = set(train_utils.leaves(c.to_dict())) - base
    assert not extra, f'configs/{name}.py sets fields base_config() lacks: {sorted(extra)}'


@pytest.mark.parametrize('name', sorted(PAPER))
def test_paper_config_holds_section_5_3_settings(name):
  dataset, epochs, drw_epochs = PAPER[name]
  c = train_utils.load_config(name)
  m, o, l, d, t = c.model, c.optim, c.loss, c.data, c.train
  assert d.dataset == dataset and d.image_size == 224 and d.batch_size == 128
  assert (t.epochs, t.drw_epochs) == (epochs, drw_epochs)
  assert m.backbone == 'b16'
  assert m.checkpoint.startswith('https://storage.googleapis.com/vit_models/augreg/B_16-i21k-')
  assert (m.method, m.prompt_mode, m.feature) == ('fr_br', 'replace', 'cls_prompt_mean')
  assert (m.num_fr_prompts, m.num_br_prompts, m.num_groups, m.top_k) == (10, 10, 20, 2)
  assert m.num_br_blocks == 6 and l.orth_lambda == 0.5
  assert (o.lr, o.lr_base_batch, o.momentum, o.weight_decay) == (0.005, 128, 0.9, 0.01)
  assert (o.gnm_rho, o.gnm_dis_mul) == (0.05, 0.1)
  assert (l.s, l.m, l.noise_mul, l.drw_beta) == (25.0, 0.1, 1.0, 0.9998)
  assert m.dropout == 0.1 and tuple(o.frozen_patterns) == ('^backbone/',)


def test_cifar_ratio_argument():
  for ratio in (200, 100, 50, 10):
    assert train_utils.load_config('cifar100_lt', f'ratio={ratio}').data.imbalance_ratio == ratio
  with pytest.raises(ValueError, match='ratio must be one of'):
    train_utils.load_config('cifar100_lt', 'ratio=7')
  with pytest.raises(ValueError, match="Unknown config argument 'ratoi'"):
    train_utils.load_config('cifar100_lt', 'ratoi=10')


def test_folder_config():
  c = train_utils.load_config('folder', 'train_dir=/d/train,eval_dir=/d/val')
  assert (c.data.dataset, c.data.train_dir, c.data.eval_dir) == ('folder', '/d/train', '/d/val')
  c = train_utils.load_config('folder', 'train_list=t.txt,eval_list=v.csv,image_root=/d')
  assert (c.data.dataset, c.data.train_list, c.data.eval_list, c.data.image_root) == (
      'list', 't.txt', 'v.csv', '/d')
  assert c.model.backbone == 'b16' and c.data.image_size == 224  # the paper's recipe
  with pytest.raises(ValueError, match='config.data.train_dir'):
    cli.validate_config(train_utils.load_config('folder'))


def test_demo_runs_offline():
  """Synthetic data and the backbone shipped in the package: nothing to download."""
  c = train_utils.load_config('demo')
  assert c.data.dataset == 'synthetic' and c.data.class_set == 'downstream'
  assert not fetch.is_url(c.model.checkpoint) and c.model.checkpoint.endswith(
      'ltdpt_jax/assets/vit_demo.npz')
  assert fetch.sha256_of(c.model.checkpoint) == c.model.checkpoint_sha256
  assert c.model.backbone == 'custom' and c.data.num_workers == 0


@pytest.mark.parametrize('key,value,needle', [
    ('model.method', 'xyz', "config.model.method='xyz' is not valid"),
    ('model.top_k', 30, 'top_k=30 must be in [1, num_groups=20]'),
    ('model.num_br_blocks', 13, 'num_br_blocks=13 in [1, num_layers=12]'),
    ('model.dropout', 1.0, 'dropout=1.0 must be in [0, 1)'),
    ('data.dataset', 'cifar10', "config.data.dataset='cifar10' is not valid"),
    ('data.image_size', 100, 'config.data.image_size=100: image size (100, 100) is not a '
                             'multiple of the patch size (16, 16)'),
    ('optim.lr', 0.0, 'config.optim.lr=0.0 must be > 0'),
    ('loss.drw_beta', 1.0, 'config.loss.drw_beta=1.0 must be in [0, 1)'),
    ('train.best_metric', 'accuracy', "config.train.best_metric='accuracy' must be"),
    ('train.best_metric', 'test/accuracy', "config.train.best_metric='test/accuracy' must be"),
    ('evals.eval.type', 'nope', "config.evals.eval.type='nope' is not valid"),
    ('evals.eval.every_epochs', -1, 'config.evals.eval.every_epochs=-1 must be >= 0'),
])
def test_validation_names_the_field(key, value, needle):
  c = config_lib.base_config()
  section, field = key.rsplit('.', 1)
  node = c
  for part in section.split('.'):
    node = node[part]
  node[field] = value
  with pytest.raises(ValueError) as e:
    cli.validate_config(c)
  assert needle in str(e.value), str(e.value)


def test_validation_of_batch_against_devices():
  c = config_lib.base_config()
  cli.validate_config(c, num_devices=8, num_processes=2)
  with pytest.raises(ValueError, match=r'config.data.batch_size=128 must be a multiple of the '
                                       r'number of devices \(3\)'):
    cli.validate_config(c, num_devices=3)
