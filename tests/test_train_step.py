"""The jitted train step: FLOPs (no backbone weight gradients), 1 vs 8 devices, learning."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ltdpt_jax import data as data_lib
from ltdpt_jax import losses
from ltdpt_jax import optim
from ltdpt_jax import train_step as step_lib
from ltdpt_jax.models import ltdpt

import train_utils


def _setup(config, num_classes, mesh):
  model = ltdpt.build_model(config, num_classes)
  params = ltdpt.init_params(config, num_classes, jax.random.key(0), config.data.image_size)
  trainable, frozen = optim.split_params(
      params, optim.param_labels(params, tuple(config.optim.frozen_patterns)))
  tx = optim.make_optimizer(config, total_steps=100)
  state = step_lib.init_train_state(trainable, tx)
  counts = np.linspace(50, 5, num_classes).astype(np.int64)
  step = step_lib.make_train_step(model, tx, config=config, class_counts=counts,
                                  drw_start_step=50, mesh=mesh)
  return model, state, frozen, step, counts


def _batch(config, num_classes, seed=0):
  rs = np.random.RandomState(seed)
  s = config.data.image_size
  return {'image': rs.randint(0, 256, (config.data.batch_size, s, s, 3)).astype(np.uint8),
          'label': rs.randint(0, num_classes, (config.data.batch_size,)).astype(np.int32)}


def _mesh(n=1):
  return jax.sharding.Mesh(np.asarray(jax.devices()[:n]), ('data',))


def test_step_flops_show_no_backbone_weight_gradients():
  """Compiled step FLOPs < 2.3x the forward's; differentiating the backbone too costs ~3x."""
  config = train_utils.tiny_config(image_size=32, batch_size=32)
  config.model.vit.hidden_size = 64
  config.model.vit.mlp_dim = 256
  config.model.vit.num_layers = 3
  mesh = _mesh()
  model, state, frozen, step, counts = _setup(config, 6, mesh)
  batch = _batch(config, 6)
  step_flops = step_lib.compiled_flops(step.lower(state, frozen, batch).compile())

  loss_fn = step_lib.make_loss_fn(model, config=config, class_counts=counts,
                                  drw_weights=losses.drw_weights(counts))
  rng = jax.random.key(0)
  fwd_flops = step_lib.compiled_flops(jax.jit(
      lambda t, f, b: loss_fn(t, f, b, rng, False)[0]).lower(state.params, frozen, batch).compile())
  # Reference that can fail: the gradient with respect to every parameter, backbone included.
  def full_loss(all_params, b):
    tr, fr = optim.split_params(all_params, optim.param_labels(all_params))
    params = optim.merge_params(tr, fr)
    out = step_lib.forward(model, params, b['image'], train=True, rng=rng)
    return losses.gcl_loss(out['logits'], b['label'], counts, noise=None)
  all_params = optim.merge_params(state.params, frozen)
  full_flops = step_lib.compiled_flops(
      jax.jit(jax.grad(full_loss)).lower(all_params, batch).compile())
  assert fwd_flops and step_flops and full_flops
  ratio, full_ratio = step_flops / fwd_flops, full_flops / fwd_flops
  print(f'step/forward FLOPs = {ratio:.2f}; with backbone weight gradients {full_ratio:.2f}')
  assert ratio < 2.3, ratio
  assert full_ratio > ratio + 0.4, (full_ratio, ratio)


def test_step_updates_only_trainable_and_uses_unperturbed_weights():
  """One step equals a hand-built GNM-SGD step: grad at theta + eps, update from theta."""
  config = train_utils.tiny_config()
  config.model.dropout = 0.0
  mesh = _mesh()
  model, state, frozen, step, counts = _setup(config, 6, mesh)
  batch = _batch(config, 6)
  tx = optim.make_optimizer(config, total_steps=100)
  # Hand-built reference with the same pieces.
  loss_fn = step_lib.make_loss_fn(model, config=config, class_counts=counts,
                                  drw_weights=losses.drw_weights(counts))
  rng = jax.random.fold_in(jax.random.key(config.train.seed), 0)
  eps = tx.perturbation(state.opt_state, state.params, 1.0)
  perturbed = jax.tree.map(jnp.add, state.params, eps)
  grads = jax.grad(lambda t: loss_fn(t, frozen, batch, rng, False)[0])(perturbed)
  lr = optim.peak_learning_rate(config)
  wd = config.optim.weight_decay
  expected = jax.tree.map(lambda p, g: p - lr * (g + wd * p), state.params, grads)
  new_state, metrics = step(state, frozen, batch)
  for path, a, b in zip(jax.tree_util.tree_leaves_with_path(expected),
                        jax.tree.leaves(expected), jax.tree.leaves(new_state.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=2e-6,
                               err_msg=optim.path_name(path[0]))
  assert int(new_state.step) == 1
  assert np.isfinite(float(metrics['loss']))
  # GNM's key advanced, and the frozen tree is untouched (it is never an output).
  assert not np.array_equal(np.asarray(new_state.opt_state.rng),
                            np.asarray(step_lib.init_train_state(state.params, tx).opt_state.rng))


_EIGHT_DEVICES = textwrap.dedent('''
    import jax, numpy as np
    assert jax.device_count() == 8, jax.devices()
    import train_utils
    from ltdpt_jax import optim, train_step as step_lib
    from ltdpt_jax.models import ltdpt
    config = train_utils.tiny_config(batch_size=16)
    results = []
    for n in (1, 8):
      mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:n]), ('data',))
      model = ltdpt.build_model(config, 6)
      params = ltdpt.init_params(config, 6, jax.random.key(0), 16)
      tr, fr = optim.split_params(params, optim.param_labels(params))
      tx = optim.make_optimizer(config, total_steps=10)
      counts = np.array([40, 30, 20, 10, 5, 3])
      step = step_lib.make_train_step(model, tx, config=config, class_counts=counts,
                                      drw_start_step=2, mesh=mesh)
      state = step_lib.init_train_state(tr, tx)
      rs = np.random.RandomState(1)
      for i in range(4):
        batch = {'image': rs.randint(0, 256, (16, 16, 16, 3)).astype(np.uint8),
                 'label': rs.randint(0, 6, (16,)).astype(np.int32)}
        state, metrics = step(state, fr, batch)
      results.append(jax.device_get(state.params))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print('EQUAL', len(jax.tree.leaves(results[0])))
''')


def test_eight_devices_equal_one_device():
  """4 steps (DRW switching on at step 2) on 8 fake CPU devices == on 1 device."""
  proc = subprocess.run([sys.executable, '-c', _EIGHT_DEVICES], capture_output=True, text=True,
                        env=train_utils.subprocess_env(8), cwd=str(train_utils.REPO / 'tests'),
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  assert 'EQUAL' in proc.stdout


def test_loss_goes_down_on_synthetic_long_tailed_stream():
  """A few hundred steps on the synthetic long-tailed stream drive the GCL loss down."""
  config = train_utils.tiny_config(image_size=16, batch_size=32, epochs=100)
  config.data.num_classes = 4
  config.data.num_train_max = 64
  config.optim.lr = 0.2
  info = data_lib.get_dataset_info(config)
  mesh = _mesh()
  model, state, frozen, _, _ = _setup(config, info.num_classes, mesh)
  tx = optim.make_optimizer(config, total_steps=240)
  state = step_lib.init_train_state(state.params, tx)
  step = step_lib.make_train_step(model, tx, config=config, class_counts=info.class_counts,
                                  drw_start_step=200, mesh=mesh)
  it = data_lib.make_train_iterator(config, process_index=0, process_count=1)
  losses_seen, accs = [], []
  for _ in range(240):
    batch = next(it)
    state, metrics = step(state, frozen, {'image': batch['image'], 'label': batch['label']})
    losses_seen.append(metrics['loss_lt'])
    accs.append(metrics['train_accuracy'])
  losses_seen = np.asarray(jax.device_get(losses_seen))
  accs = np.asarray(jax.device_get(accs))
  first, last = losses_seen[:20].mean(), losses_seen[180:200].mean()
  print(f'GCL loss {first:.3f} -> {last:.3f}; train accuracy {accs[:20].mean():.2f} -> '
        f'{accs[180:200].mean():.2f}')
  assert last < 0.75 * first, (first, last)


def test_eval_step_counts_per_class_with_mask():
  config = train_utils.tiny_config()
  mesh = _mesh()
  model = ltdpt.build_model(config, 6)
  params = ltdpt.init_params(config, 6, jax.random.key(0), 16)
  tr, fr = optim.split_params(params, optim.param_labels(params))
  eval_step = step_lib.make_eval_step(model, config=config, num_classes=6, mesh=mesh)
  batch = _batch(config, 6, seed=3)
  batch['mask'] = np.arange(16) < 11
  correct, count = eval_step(tr, fr, batch)
  logits = step_lib.forward(model, params, batch['image'], train=False)['logits']
  pred = np.asarray(jnp.argmax(logits, -1))
  want_count = np.bincount(batch['label'][:11], minlength=6)
  want_correct = np.bincount(batch['label'][:11], weights=(pred == batch['label'])[:11],
                             minlength=6)
  np.testing.assert_array_equal(np.asarray(count), want_count)
  np.testing.assert_array_equal(np.asarray(correct), want_correct)
