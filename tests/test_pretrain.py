"""The demo's pretrained backbone: the shipped `.npz`, the class split, the demo's shot groups,
and the pretraining command (`python -m ltdpt_jax.tools.pretrain`) at toy size, resumed."""

from __future__ import annotations

import collections
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cli_worker
import train_utils
from ltdpt_jax import config_lib
from ltdpt_jax import data as data_lib
from ltdpt_jax import fetch
from ltdpt_jax import models
from ltdpt_jax import optim
from ltdpt_jax import run_dir as run_dir_lib
from ltdpt_jax import train_step as step_lib
from ltdpt_jax.data import synthetic
from ltdpt_jax.data import transforms
from ltdpt_jax.evaluators import longtail
from ltdpt_jax.models import vit_checkpoint
from ltdpt_jax.tools import pretrain

REPO = train_utils.REPO
ASSET = REPO / 'ltdpt_jax' / 'assets' / 'vit_demo.npz'
SIDECAR = REPO / 'ltdpt_jax' / 'assets' / 'vit_demo.json'
# The shipped backbones: (file, the demo config using it, the pretraining config argument,
# the architecture it has).
BACKBONES = [('vit_demo', 'demo', None, 'ViT(patch 4, width 64, depth 4, heads 4, mlp 128)'),
             ('vit_demo64', 'demo_background', 'size=64',
              'ViT(patch 8, width 64, depth 4, heads 4, mlp 128)')]


def _sidecar(name='vit_demo'):
  return json.loads((REPO / 'ltdpt_jax' / 'assets' / f'{name}.json').read_text())


# ---------------------------------------------------------------------------------------------
# The shipped checkpoint.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name, demo_config, arg, _', BACKBONES)
def test_shipped_checkpoint_is_the_demo_default_small_and_recorded(name, demo_config, arg, _):
  asset = REPO / 'ltdpt_jax' / 'assets' / f'{name}.npz'
  demo = train_utils.load_config(demo_config)
  assert os.path.samefile(demo.model.checkpoint, asset)
  sha = fetch.sha256_of(asset)
  side = _sidecar(name)
  assert demo.model.checkpoint_sha256 == sha == side['sha256']
  assert asset.stat().st_size < 2_000_000  # well under 5 MB
  assert side['command'].startswith('python -m ltdpt_jax.tools.pretrain --config=configs/'
                                    f'pretrain_synthetic.py{":" + arg if arg else ""} ')
  assert side['eval']['accuracy'] > 0.5 and side['steps'] > 0
  # The shipped file came from the config as committed (compared as JSON: tuples are lists;
  # keys added to the config since then count as their defaults, run_dir.ADDED_KEYS).
  assert run_dir_lib.config_changes(
      side['config'], train_utils.load_config('pretrain_synthetic', arg).to_dict()) == ({}, {})


@pytest.mark.parametrize('name, _, arg, architecture', BACKBONES)
def test_shipped_checkpoint_loads_with_its_head_and_reproduces_its_upstream_predictions(
    name, _, arg, architecture):
  model, params = vit_checkpoint.from_npz(str(REPO / 'ltdpt_jax' / 'assets' / f'{name}.npz'))
  assert model.arch.describe().startswith(architecture)
  assert model.num_classes == 64 and model.representation_size is None
  assert params['head']['kernel'].shape == (64, 64) and params['head']['bias'].shape == (64,)
  side = _sidecar(name)
  data = train_utils.load_config('pretrain_synthetic', arg).data
  src = data_lib.get_sources(data).eval
  ref = side['reference']
  images = np.stack([transforms.eval_transform(src[i]['image'], data.image_size)
                     for i in ref['indices']])
  logits = np.asarray(model.apply({'params': params},
                                  step_lib.normalize_images(jnp.asarray(images)))['logits'])
  np.testing.assert_allclose(logits, np.asarray(ref['logits']), atol=2e-4, rtol=1e-4)
  assert logits.argmax(-1).tolist() == ref['predictions']
  assert [int(src[i]['label']) for i in ref['indices']] == ref['labels']
  assert side['class_names'] == synthetic.class_names(64, 'upstream')


# ---------------------------------------------------------------------------------------------
# The class split and the demo's task.
# ---------------------------------------------------------------------------------------------

def test_upstream_and_downstream_classes_are_disjoint():
  up = set(synthetic.class_table(64, 'upstream'))
  down = set(synthetic.class_table(synthetic.MAX_CLASSES_OF['downstream'], 'downstream'))
  assert len(up) == 64 and len(down) == 40 and not up & down
  # No downstream object has an upstream shape, no upstream image a downstream scene.
  assert not {s for c in up for s in c.shapes} & {s for c in down for s in c.shapes}
  assert {c.scene for c in up} == {None} and {c.scene for c in down} == set(synthetic.SCENES)
  assert {c.pattern for c in down} == set(synthetic.PATTERNS)  # patterns are shared
  # Every (pattern, scene) pair once; the demo's 20 avoid the patterns camouflaged in a scene.
  assert len({(c.pattern, c.scene) for c in down}) == 40
  demo20 = synthetic.class_table(20, 'downstream')
  assert not {(c.pattern, c.scene) for c in demo20} & {
      ('blue', 'sky'), ('cyan', 'sky'), ('green', 'grass'), ('yellow', 'sand'), ('red', 'brick'),
      ('magenta', 'brick')}
  demo, pre = train_utils.load_config('demo'), train_utils.load_config('pretrain_synthetic')
  assert (demo.data.class_set, pre.data.class_set) == ('downstream', 'upstream')
  demo_names = set(data_lib.get_dataset_info(demo.data).class_names)
  assert len(demo_names) == 20 and not demo_names & set(_sidecar()['class_names'])
  # The default class set is unchanged (its first classes are upstream ones).
  assert synthetic.class_names(20)[:2] == ['red circle', 'red square']
  with pytest.raises(ValueError, match="class set 'downstream'"):
    synthetic.class_table(41, 'downstream')
  with pytest.raises(ValueError, match='Unknown synthetic class set'):
    synthetic.SyntheticLT('train', class_set='sideways')


def test_background_classes_are_object_only_and_the_scene_misleads_in_training_alone():
  table = synthetic.class_table(8, 'background')
  up = set(synthetic.class_table(64, 'upstream'))
  assert not set(table) & up and not {s for c in table for s in c.shapes} & {
      s for c in up for s in c.shapes}
  # The class is the object's (pattern, size); no class has a scene of its own.
  assert len({(c.pattern, c.size) for c in table}) == 8 and {c.scene for c in table} == {None}
  config = train_utils.load_config('demo_background')
  info = data_lib.get_dataset_info(config.data)
  groups = longtail.shot_groups(info.class_counts)
  assert [len(groups[g]) for g in ('head', 'medium', 'tail')] == [2, 3, 3]
  train = data_lib.get_sources(config.data).train
  test = data_lib.get_sources(config.data).eval
  # Training: 9 of every 10 images of a class on its home scene (exactly, counted here), the
  # tail classes at home on a head class's scene.
  for c in range(8):
    idx = np.flatnonzero(train.labels == c)
    scenes = [train.scene_of(i) for i in idx]
    home = table[c].home
    n = len(idx)
    want_home = sum(1 for j in range(n) if j % 10 < 9)
    assert scenes.count(home) == want_home, (c, scenes)
    assert want_home / n >= 0.9
  assert {table[c].home for c in groups['tail']} <= {table[c].home for c in groups['head']}
  # Test: every class on every scene, equally often.
  pairs = collections.Counter((int(test.labels[i]), test.scene_of(i)) for i in range(len(test)))
  assert set(pairs.values()) == {8} and len(pairs) == 8 * len(synthetic.SCENES)
  # The object's size range follows the class (pixels of the mask), and the scene is drawn.
  small = [test.object_mask(i).mean() for i in np.flatnonzero(test.labels == 0)[:10]]
  large = [test.object_mask(i).mean() for i in np.flatnonzero(test.labels == 1)[:10]]
  assert max(small) < min(large)
  night = [i for i in range(len(test)) if test.scene_of(i) == 'night'][:10]
  sky = [i for i in range(len(test)) if test.scene_of(i) == 'sky'][:10]
  assert np.mean([test[i]['image'].mean() for i in night]) < np.mean(
      [test[i]['image'].mean() for i in sky])


def test_at_64_px_the_saliency_finds_the_background_demos_objects():
  """The spectral-residual saliency's share on the object, over the object's share of the image
  (patch-level, all 320 test images): at least 1.5 at the new demo's 64 px (patches of 8),
  about 1.15 at the first demo's 32 px (patches of 4), where it favours edges and texture."""
  from ltdpt_jax import maps  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import saliency  # pylint: disable=g-import-not-at-top
  ratios = {}
  for size, patch in ((64, 8), (32, 4)):
    test = synthetic.SyntheticLT('test', num_classes=8, num_test_per_class=40, image_size=size,
                                 class_set='background')
    images = np.stack([test[i]['image'] for i in range(len(test))])
    masks = np.stack([test.object_mask(i) for i in range(len(test))])
    scores = np.asarray(saliency.patch_saliency(jnp.asarray(images), patch_size=patch))
    fg = maps.patch_fraction(masks, patch)
    share = maps.foreground_share(scores.reshape(len(scores), -1), fg)
    ratios[size] = np.nanmean(share) / fg.mean()
  assert ratios[64] >= 1.5 and ratios[32] < 1.3, ratios


def test_class_sets_render_their_own_shapes_and_keep_the_object_mask():
  kw = dict(num_classes=20, imbalance_ratio=1, num_train_max=2, image_size=32, seed=0)
  default = synthetic.SyntheticLT('train', **kw)
  down = synthetic.SyntheticLT('train', class_set='downstream', **kw)
  assert not np.array_equal(default[0]['image'], down[0]['image'])
  image, mask = down.render_with_mask(0, np.random.default_rng(0))
  assert image.shape == (32, 32, 3) and mask.dtype == bool and 0.02 < mask.mean() < 0.7
  np.testing.assert_array_equal(down.object_mask(3), down.render_with_mask(
      int(down.labels[3]), down._rng(3))[1])  # pylint: disable=protected-access
  v, u = (np.mgrid[0:200, 0:200] + 0.5) / 100 - 1
  for shape in synthetic.DOWNSTREAM_SHAPES:
    assert 0.2 < synthetic.shape_mask(shape, u, v).mean() < 0.7, shape
  # The images of one class take every downstream shape; the background is its class's scene:
  # the sky is bluest and brightest at the top, the night darkest, the grass greenest.
  big = synthetic.SyntheticLT('test', class_set='downstream', num_classes=20, num_test_per_class=30,
                              image_size=32)
  scene_of = {c.scene: k for k, c in enumerate(big.classes)}
  masks = {k: [big.render_with_mask(k, np.random.default_rng(i)) for i in range(30)]
           for k in scene_of.values()}
  rgb = {scene: np.mean([img[~m].reshape(-1, 3).mean(0) for img, m in masks[k]], 0)
         for scene, k in scene_of.items()}
  assert rgb['night'].sum() < min(v.sum() for s, v in rgb.items() if s != 'night')
  assert np.argmax(rgb['sky']) == 2 and np.argmax(rgb['grass']) == 1
  sky = np.mean([img[:8].mean() - img[-8:].mean() for img, _ in masks[scene_of['sky']]])
  assert sky > 20  # pale at the top, deep at the bottom
  # Objects of one class take several shapes: how full their bounding boxes are varies (a heart
  # fills about 60%, an hourglass 40%), more than the one shape of a default class does.
  def fill_spread(pairs):
    fill = [m.sum() / ((np.ptp(np.nonzero(m)[0]) + 1) * (np.ptp(np.nonzero(m)[1]) + 1))
            for _, m in pairs]
    return np.std(fill)
  one = synthetic.SyntheticLT('test', num_classes=20, num_test_per_class=30, image_size=32)
  assert fill_spread(masks[scene_of['sky']]) > 2 * fill_spread([one.render_with_mask(
      0, np.random.default_rng(i)) for i in range(30)])
  with pytest.raises(ValueError, match='Unknown scene'):
    synthetic.make_scene('forest', np.random.default_rng(0), 8)


def test_demo_config_has_head_medium_and_tail_classes():
  demo = train_utils.load_config('demo')
  info = data_lib.get_dataset_info(demo.data)
  groups = longtail.shot_groups(info.class_counts, tail_max=demo.data.shot_thresholds[0],
                                head_min=demo.data.shot_thresholds[1])
  sizes = {g: len(v) for g, v in groups.items()}
  assert min(sizes.values()) >= 5, sizes
  assert demo.data.imbalance_ratio >= 50 and info.class_counts.min() < 20
  assert demo.model.method == 'fr_br' and demo.loss.noise_mul == 1.0
  assert demo.data.crop_min_scale == 0.08


# ---------------------------------------------------------------------------------------------
# The pretraining command, a few steps.
# ---------------------------------------------------------------------------------------------

# configs/pretrain_synthetic.py with 2 images per class and 2 of the ViT's 4 blocks: 4 steps of
# 32, evaluated once.
TOY = {'data.num_train_max': 2, 'data.num_test_per_class': 1, 'data.batch_size': 32,
       'data.eval_batch_size': 64, 'data.num_workers': 0, 'train.epochs': 1,
       'optim.warmup_epochs': 0.5, 'train.checkpoint_every_steps': 2,
       'train.log_every_steps': 1, 'train.eval_every_epochs': 1, 'model.vit.num_layers': 2}


def _toy_config():
  c = train_utils.load_config('pretrain_synthetic')
  c.update_from_flattened_dict(TOY)
  return c


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """The pretraining command at toy size, through the CLI: (out .npz, workdir, stderr)."""
  root = tmp_path_factory.mktemp('pretrain')
  out, workdir = root / 'vit.npz', root / 'wd'
  args = [sys.executable, '-m', 'ltdpt_jax.tools.pretrain', '--config=configs/pretrain_synthetic.py',
          f'--workdir={workdir}', f'--out={out}'] + [f'--config.{k}={v}' for k, v in TOY.items()]
  proc = cli_worker.run_cli(args, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, workdir, proc.stderr


def test_pretraining_command_writes_an_official_npz_with_head(straight):
  out, workdir, log = straight
  for needle in ('Pretraining ViT(patch 4, width 64, depth 2', '64-class head', 'all trained',
                 '[step 4/4, epoch 1.00] loss', '[eval step 4, epoch 1] top-1', 'Wrote '):
    assert needle in log, needle
  model, params = vit_checkpoint.from_npz(str(out))
  assert model.num_classes == 64
  keys = set(vit_checkpoint.flatten(params))
  assert {'embedding/kernel', 'cls', 'Transformer/posembed_input/pos_embedding', 'head/bias',
          'Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel',
          'Transformer/encoder_norm/scale'} <= keys
  assert not any(k.startswith('Transformer/encoderblock_2/') for k in keys)  # the 2 blocks run
  side = json.loads((out.parent / 'vit.json').read_text())
  assert side['sha256'] == fetch.sha256_of(out) and side['steps'] == 4
  assert side['command'].startswith('python -m ltdpt_jax.tools.pretrain --config=configs/')
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if r['split'] == 'train'] == [1, 2, 3, 4]
  assert all(r['lr'] >= 0 for r in records if r['split'] == 'train')
  assert (workdir / 'checkpoints' / '4').is_dir() and (workdir / 'eval_4.json').is_file()


def test_pretraining_resumed_ends_with_the_same_weights(straight, tmp_path, monkeypatch):
  """Stopped after step 2 (as SIGTERM would) and rerun: the same .npz bytes as the CLI's
  uninterrupted run, in another process (deterministic for the seed)."""
  out = str(tmp_path / 'vit.npz')
  workdir = str(tmp_path / 'wd')
  config = _toy_config()
  with monkeypatch.context() as m:
    m.setattr(run_dir_lib.Preemption, 'should_stop', lambda self, step: step == 2)
    assert pretrain.run(config, workdir, out) == {'stopped_at': 2}
  assert not os.path.exists(out)
  result = pretrain.run(config, workdir, out)
  assert result['sha256'] == fetch.sha256_of(straight[0])
  assert pretrain.run(config, workdir, out)['sha256'] == result['sha256']  # finished: re-export


def test_pretraining_bad_input_is_one_line(tmp_path):
  args = [sys.executable, '-m', 'ltdpt_jax.tools.pretrain', '--config=configs/pretrain_synthetic.py',
          f'--out={tmp_path / "vit.npz"}', '--config.optim.warmup_epochs=40']
  proc = cli_worker.run_cli(args, timeout=120)
  cli_worker.one_error_line(proc, 2, 'config.optim.warmup_epochs=40', 'config.train.epochs=30')
  assert not (tmp_path / 'vit_pretrain').exists()


def test_pretraining_on_an_image_folder(tmp_path):
  """Any source of the data module: a folder of class folders (2 x 8 training images, 2 x 2 eval
  images), two steps. The .npz holds the trained weights: loaded with its head, it gives the
  logits of the trained model with the final checkpoint's weights (read with Orbax alone) on
  the eval images; the eval record and the .json count the folder's images, and their top-1
  is those logits'."""
  import image_folders  # pylint: disable=g-import-not-at-top
  train_dir, eval_dir = tmp_path / 'train', tmp_path / 'val'
  image_folders.write_folder(train_dir, [8, 8], names=['a', 'b'])
  image_folders.write_folder(eval_dir, [2, 2], names=['a', 'b'], seed=1)
  config = config_lib.pretrain_base_config()
  config.data.dataset = 'folder'
  config.data.train_dir, config.data.eval_dir = str(train_dir), str(eval_dir)
  config.data.image_size, config.data.batch_size, config.data.eval_batch_size = 16, 8, 8
  config.data.num_workers = 0
  config.model.vit.update(hidden_size=32, num_layers=1, num_heads=2, mlp_dim=32)
  config.train.update(epochs=1, log_every_steps=1, eval_every_epochs=1)
  config.optim.warmup_epochs = 0.5
  pretrain.validate(config)
  workdir = tmp_path / 'wd'
  result = pretrain.run(config, str(workdir), str(tmp_path / 'folder.npz'))
  model, params = vit_checkpoint.from_npz(result['out'])
  assert model.num_classes == 2 and params['head']['kernel'].shape == (32, 2)
  # The eval folder's images as the evaluation sees them, in its order (class a, then b).
  src = data_lib.get_sources(config.data).eval
  images = np.stack([transforms.eval_transform(src[i]['image'], 16) for i in range(len(src))])
  labels = [int(src[i]['label']) for i in range(len(src))]
  assert labels == [0, 0, 1, 1]
  state, step = cli_worker.restore_state(workdir)
  assert step == 2  # 16 images / 8 per step, one epoch
  vit = models.build_model(config.model, 2, 16)  # the model trained
  trained = np.asarray(jax.jit(lambda p, x: step_lib.vit_logits(vit, p, x))(
      state['params'], jnp.asarray(images)))
  exported = pretrain.reference_logits(result['out'], images)
  np.testing.assert_allclose(exported, trained, rtol=1e-5, atol=1e-6)
  top1 = float(np.mean(trained.argmax(-1) == labels))
  record = json.loads((workdir / 'eval_2.json').read_text())
  assert record['num_examples'] == 4 and record['accuracy'] == pytest.approx(top1)
  assert [(c['name'], c['train_count'], c['eval_count']) for c in record['per_class']] == [
      ('a', 8, 2), ('b', 8, 2)]
  side = json.loads((tmp_path / 'folder.json').read_text())
  assert side['class_names'] == ['a', 'b'] and side['steps'] == 2
  assert side['eval']['accuracy'] == pytest.approx(top1) and side['eval']['num_examples'] == 4
  assert side['reference']['indices'] == [0, 1, 2, 3] and side['reference']['labels'] == labels
  np.testing.assert_allclose(side['reference']['logits'], trained, atol=2e-6)


def test_weight_decay_only_on_kernels_and_schedule():
  params = {'embedding': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}, 'cls': jnp.ones(3),
            'head': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}}
  mask = optim.kernels_only(params)
  assert jax.tree.leaves(mask) == jax.tree.leaves(
      {'embedding': {'kernel': True, 'bias': False}, 'cls': False,
       'head': {'kernel': True, 'bias': False}})
  o = config_lib.pretrain_base_config().optim
  o.lr, o.warmup_epochs = 1.0, 1.0
  sched = optim.pretrain_learning_rate(o, total_steps=10, steps_per_epoch=2)
  assert float(sched(0)) == 0.0 and float(sched(2)) == pytest.approx(1.0)
  assert float(sched(6)) == pytest.approx(0.5) and float(sched(10)) == pytest.approx(0.0)
