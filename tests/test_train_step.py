"""The jitted train step: FLOPs (no backbone weight gradients), 1 vs 8 devices, learning."""

from __future__ import annotations

import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from ltdpt_jax import data as data_lib
from ltdpt_jax import losses
from ltdpt_jax import models
from ltdpt_jax import optim
from ltdpt_jax import train_step as step_lib
from ltdpt_jax.models import ltdpt
from ltdpt_jax.models import vit as vit_lib

import fork_server
import train_utils


def _optimizer(config, total_steps):
  return optim.make_optimizer(config.optim, total_steps=total_steps,
                              global_batch=config.data.batch_size, seed=config.train.seed)


def _train_step(model, tx, config, counts, drw_start_step, mesh):
  return step_lib.make_train_step(model, tx, loss_config=config.loss, seed=config.train.seed,
                                  class_counts=counts, drw_start_step=drw_start_step, mesh=mesh)


def _setup(config, num_classes, mesh, drw_start_step=50, quick=False):
  """(model, state, frozen, jitted train step, class counts); with `quick` the step comes
  compiled with train_utils.QUICK (for tests of values, not of the compiled program)."""
  size = config.data.image_size
  model = models.build_model(config.model, num_classes, size)
  params = ltdpt.init_params(model, jax.random.key(0), size)
  trainable, frozen = optim.split_params(
      params, optim.param_labels(params, tuple(config.optim.frozen_patterns)))
  tx = _optimizer(config, 100)
  state = step_lib.init_train_state(trainable, tx)
  counts = np.linspace(50, 5, num_classes).astype(np.int64)
  step = _train_step(model, tx, config, counts, drw_start_step, mesh)
  if quick:
    step = step.lower(state, frozen, _batch(config, num_classes)).compile(train_utils.QUICK)
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
  quick = train_utils.QUICK  # the FLOP count comes from the HLO: the same at any level
  step_flops = step_lib.compiled_flops(step.lower(state, frozen, batch).compile(quick))

  loss_fn = step_lib.make_loss_fn(model, loss_config=config.loss, class_counts=counts)
  rng = jax.random.key(0)
  fwd_flops = step_lib.compiled_flops(jax.jit(
      lambda t, f, b: loss_fn(t, f, b, rng, False)[0]).lower(state.params, frozen,
                                                            batch).compile(quick))
  # Reference that can fail: the gradient with respect to every parameter, backbone included.
  def full_loss(all_params, b):
    tr, fr = optim.split_params(all_params, optim.param_labels(all_params))
    params = optim.merge_params(tr, fr)
    out = step_lib.forward(model, params, b['image'], train=True, rng=rng)
    return losses.gcl_loss(out['logits'], b['label'], counts, noise=None)
  all_params = optim.merge_params(state.params, frozen)
  full_flops = step_lib.compiled_flops(
      jax.jit(jax.grad(full_loss)).lower(all_params, batch).compile(quick))
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
  model, state, frozen, step, counts = _setup(config, 6, mesh, quick=True)
  batch = _batch(config, 6)
  tx = _optimizer(config, 100)
  # Hand-built reference with the same pieces.
  loss_fn = step_lib.make_loss_fn(model, loss_config=config.loss, class_counts=counts)
  rng = jax.random.fold_in(jax.random.key(config.train.seed), 0)
  lr = optim.peak_learning_rate(config.optim, config.data.batch_size)
  wd = config.optim.weight_decay

  def reference(params, opt_state):
    eps = tx.perturbation(opt_state, params, 1.0)
    perturbed = jax.tree.map(jnp.add, params, eps)
    grads = jax.grad(lambda t: loss_fn(t, frozen, batch, rng, False)[0])(perturbed)
    return jax.tree.map(lambda p, g: p - lr * (g + wd * p), params, grads)

  expected = jax.jit(reference, compiler_options=train_utils.QUICK)(state.params, state.opt_state)
  initial_rng = np.asarray(state.opt_state.rng)
  new_state, metrics = step(state, frozen, batch)
  for path, a, b in zip(jax.tree_util.tree_leaves_with_path(expected),
                        jax.tree.leaves(expected), jax.tree.leaves(new_state.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=2e-6,
                               err_msg=optim.path_name(path[0]))
  assert int(new_state.step) == 1
  assert np.isfinite(float(metrics['loss']))
  # GNM's key advanced, and the frozen tree is untouched (it is never an output).
  assert not np.array_equal(np.asarray(new_state.opt_state.rng), initial_rng)


_EIGHT_DEVICES = textwrap.dedent('''
    import jax, numpy as np
    assert jax.device_count() == 8, jax.devices()
    import train_utils
    from ltdpt_jax import models, optim, train_step as step_lib
    from ltdpt_jax.models import ltdpt
    config = train_utils.tiny_config(batch_size=16)
    results = []
    for n in (1, 8):
      mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:n]), ('data',))
      model = models.build_model(config.model, 6, 16)
      params = ltdpt.init_params(model, jax.random.key(0), 16)
      tr, fr = optim.split_params(params, optim.param_labels(params))
      tx = optim.make_optimizer(config.optim, total_steps=10, global_batch=16,
                                seed=config.train.seed)
      counts = np.array([40, 30, 20, 10, 5, 3])
      step = step_lib.make_train_step(model, tx, loss_config=config.loss,
                                      seed=config.train.seed, class_counts=counts,
                                      drw_start_step=2, mesh=mesh)
      # Placed as train.Setup places them, so the step compiles once per mesh (arrays left
      # where init put them would make the second call compile it again).
      replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      state = jax.device_put(step_lib.init_train_state(tr, tx), replicated)
      fr = jax.device_put(fr, replicated)
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
  env = train_utils.subprocess_env(8)
  proc = fork_server.run([sys.executable, '-c', _EIGHT_DEVICES], env=env,
                         cwd=train_utils.REPO / 'tests', timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  assert 'EQUAL' in proc.stdout


def test_loss_goes_down_on_synthetic_long_tailed_stream():
  """A few hundred steps on the synthetic long-tailed stream drive the GCL loss down."""
  config = train_utils.tiny_config(image_size=16, batch_size=32, epochs=100)
  config.data.num_classes = 4
  config.data.num_train_max = 64
  config.optim.lr = 0.2
  info = data_lib.get_dataset_info(config.data)
  mesh = _mesh()
  model, state, frozen, _, _ = _setup(config, info.num_classes, mesh)
  tx = _optimizer(config, 240)
  state = step_lib.init_train_state(state.params, tx)
  step = _train_step(model, tx, config, info.class_counts, 200, mesh).lower(
      state, frozen, _batch(config, info.num_classes)).compile(train_utils.QUICK)
  it = data_lib.make_train_iterator(config.data, seed=config.train.seed, process_index=0,
                                    process_count=1)
  losses_seen, accs = [], []
  for _ in range(200):  # the schedule is for 240 steps; the loss is compared up to step 200
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


def _np_gcl_drw_orth(cosine, labels, counts, noise, trainable, lc, drw_on):
  """Eq. 7 in float64 numpy from the notes' formulas: GCL on the cosine logits with its Gaussian
  cloud, DRW's class weights when on, plus lambda times the orthogonality loss (Eq. 6)."""
  n = np.maximum(np.asarray(counts, np.float64), 1.0)
  m_j = np.log(n.max()) - np.log(n)
  xi = np.clip(np.asarray(noise, np.float64) / 3.0, -1.0, 1.0)
  x = cosine - lc.noise_mul * np.abs(xi) / m_j.max() * m_j[None, :]
  x[np.arange(len(labels)), labels] -= lc.m
  z = lc.s * x
  logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1,
                                                                                    keepdims=True))
  nll = -logp[np.arange(len(labels)), labels]
  if drw_on:
    w = (1 - lc.drw_beta) / (1 - lc.drw_beta ** n)
    w = w / w.sum() * len(n)
    lt = (w[labels] * nll).sum() / w[labels].sum()
  else:
    lt = nll.mean()
  g = np.asarray(trainable['br_prompts'], np.float64).reshape(
      trainable['br_prompts'].shape[0], -1)
  u = g / np.linalg.norm(g, axis=1, keepdims=True)
  gram = u @ u.T
  orth = gram.sum() - np.trace(gram)
  return lt + lc.orth_lambda * orth, lt, orth


def test_train_step_loss_is_eq7_in_numpy():
  """The loss the train step reports, before the DRW switch (step 0) and after it (step 1),
  equals numpy's Eq. 7 on the model's cosine logits at the step's parameters and the step's
  Gaussian-cloud draws (dropout 0 and GNM off, so the loss is taken at those parameters)."""
  config = train_utils.tiny_config()
  config.model.dropout = 0.0
  config.optim.gnm_rho = 0.0
  config.loss.orth_lambda = 0.7
  config.loss.noise_mul = 0.8
  mesh = _mesh()
  model, state, frozen, step, counts = _setup(config, 6, mesh, drw_start_step=1, quick=True)
  batch = _batch(config, 6, seed=5)
  labels = batch['label']
  parts = {}
  forward = jax.jit(lambda p, images: step_lib.forward(model, optim.merge_params(p, frozen),
                                                       images, train=False)['logits'],
                    compiler_options=train_utils.QUICK)
  for i, drw_on in ((0, False), (1, True)):
    params = jax.device_get(state.params)
    cosine = np.asarray(forward(params, batch['image']), np.float64)
    _, k_noise = jax.random.split(jax.random.fold_in(jax.random.key(config.train.seed), i))
    noise = np.asarray(jax.random.normal(k_noise, cosine.shape, jnp.float32))
    want, lt, orth = _np_gcl_drw_orth(cosine, labels, counts, noise, params, config.loss, drw_on)
    state, metrics = step(state, frozen, batch)
    assert float(metrics['drw']) == float(drw_on)
    np.testing.assert_allclose(float(metrics['loss']), want, rtol=2e-5)
    np.testing.assert_allclose(float(metrics['loss_lt']), lt, rtol=2e-5)
    np.testing.assert_allclose(float(metrics['loss_orth']), orth, rtol=1e-4, atol=1e-6)
    parts[i] = (cosine, noise, params)
  # Not vacuous: without the cloud, or with DRW off at step 1, the numbers are different.
  cosine, noise, params = parts[1]
  assert abs(_np_gcl_drw_orth(cosine, labels, counts, noise, params, config.loss, False)[1]
             - _np_gcl_drw_orth(cosine, labels, counts, noise, params, config.loss, True)[1]
             ) > 1e-3
  assert abs(_np_gcl_drw_orth(cosine, labels, counts, 0 * noise, params, config.loss, True)[1]
             - _np_gcl_drw_orth(cosine, labels, counts, noise, params, config.loss, True)[1]
             ) > 1e-3


# ---------------------------------------------------------------------------------------------
# Performance knobs: remat, bf16 (config.model.remat, config.model.dtype).
# ---------------------------------------------------------------------------------------------

def test_remat_gives_the_same_loss_and_gradients():
  """Each block rematerialised in the backward pass, under every policy of `vit.REMAT_POLICIES`,
  changes nothing but the schedule: the loss and the gradients of the trainable parameters equal
  those without remat (float32, to rounding), and the backward pass really recomputes the
  blocks, saving what that policy allows."""
  config = train_utils.tiny_config(image_size=16, batch_size=8)
  size = config.data.image_size
  base = models.build_model(config.model, 6, size)
  params = ltdpt.init_params(base, jax.random.key(0), size)
  trainable, frozen = optim.split_params(params, optim.param_labels(params))
  counts = np.linspace(50, 5, 6).astype(np.int64)
  batch = _batch(config, 6)
  rng = jax.random.key(3)
  results = {}
  for policy in (None, *vit_lib.REMAT_POLICIES):
    model = base if policy is None else base.clone(remat=True, remat_policy=policy)
    loss_fn = step_lib.make_loss_fn(model, loss_config=config.loss, class_counts=counts)
    value_fn = lambda t, m=loss_fn: m(t, frozen, batch, rng, False)[0]  # pylint: disable=unnecessary-lambda-assignment
    grad_fn = jax.value_and_grad(value_fn)
    # The backward pass recomputes each of the 2 blocks (jax.checkpoint's primitive: 'remat2'),
    # under the policy asked for.
    remats = [e for e in jax.make_jaxpr(grad_fn)(trainable).eqns if e.primitive.name == 'remat2']
    assert len(remats) == (0 if policy is None else 2)
    assert all(e.params['policy'] is vit_lib.REMAT_POLICIES[policy] for e in remats), policy
    results[policy] = jax.jit(grad_fn, compiler_options=train_utils.QUICK)(trainable)
  (loss0, grads0) = results[None]
  for policy in vit_lib.REMAT_POLICIES:
    loss, grads = results[policy]
    np.testing.assert_allclose(float(loss), float(loss0), rtol=1e-6)
    for path, a, b in zip(jax.tree_util.tree_leaves_with_path(grads0), jax.tree.leaves(grads0),
                          jax.tree.leaves(grads)):
      scale = float(np.abs(np.asarray(a)).max()) + 1e-30  # relative to the leaf's largest
      np.testing.assert_allclose(np.asarray(b) / scale, np.asarray(a) / scale, atol=2e-6,
                                 err_msg=f'{policy}: {optim.path_name(path[0])}')


def test_remat_orders_the_recomputation_for_the_platform_it_is_traced_for():
  """`vit.rematerialised` ties each block's recomputation to its output's cotangent: by a data
  dependence when the model is traced for a CPU, by an optimization barrier for a GPU or TPU.
  The platform is the one `vit.compiling_for` names (an ahead-of-time compile for a TPU on a
  CPU host must trace the TPU's program), else the default backend."""
  config = train_utils.tiny_config(image_size=16, batch_size=8)
  config.model.remat = True
  size = config.data.image_size
  model = models.build_model(config.model, 6, size)
  params = ltdpt.init_params(model.clone(remat=False), jax.random.key(0), size)
  trainable, frozen = optim.split_params(params, optim.param_labels(params))
  loss_fn = step_lib.make_loss_fn(model, loss_config=config.loss,
                                  class_counts=np.linspace(50, 5, 6).astype(np.int64))
  batch, rng = _batch(config, 6), jax.random.key(3)
  grad_fn = jax.grad(lambda t: loss_fn(t, frozen, batch, rng, False)[0])
  assert vit_lib.target_platform() == jax.default_backend() == 'cpu'
  barriers = {}
  for platform in ('cpu', 'tpu', 'gpu', None):
    if platform is None:
      text = str(jax.make_jaxpr(grad_fn)(trainable))
    else:
      with vit_lib.compiling_for(platform):
        assert vit_lib.target_platform() == platform
        text = str(jax.make_jaxpr(grad_fn)(trainable))
    barriers[platform] = text.count('optimization_barrier')
  assert vit_lib.target_platform() == 'cpu'  # the context is left
  assert barriers['cpu'] == barriers[None] == 0
  assert barriers['tpu'] == barriers['gpu'] == 2  # one per rematerialised block
  # attention='auto' picks cuDNN only where the traced-for platform is a GPU.
  with vit_lib.compiling_for('gpu'):
    assert vit_lib._cudnn_unavailable(jnp.bfloat16) is None  # pylint: disable=protected-access
  assert 'not an NVIDIA GPU' in vit_lib._cudnn_unavailable(jnp.bfloat16)  # pylint: disable=protected-access


# bf16 against float32 on the tiny model: the loss within 1% (relative), each trainable leaf's
# update within 5% (relative L2); measured 0.01% and 0.5-1.9% (bf16 keeps 8 significant bits).
BF16_LOSS_RTOL = 1e-2
BF16_UPDATE_RTOL = 5e-2


def test_bfloat16_step_agrees_with_float32_and_stores_the_backbone_in_bf16():
  """config.model.dtype='bfloat16': train.Setup stores the frozen backbone in bf16 once (the
  compiled step's backbone arguments are bf16, so no cast runs per step, and they take half the
  bytes), the trainable parameters and the optimiser state stay float32, and one step's loss
  and updates agree within the stated tolerance with the float32 step's (the same model in
  float32 on the same backbone values, state and batch)."""
  from ltdpt_jax import sharding  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import train  # pylint: disable=g-import-not-at-top
  config = train_utils.tiny_config(image_size=16, batch_size=8)
  config.model.dtype = 'bfloat16'
  setup = train.Setup(config)
  batch = sharding.to_global(_batch(config, setup.num_classes, seed=4), setup.batch_sharding)
  model32 = setup.model.clone(dtype=jnp.float32)
  steps = {
      'bfloat16': (setup.train_step, setup.frozen),
      'float32': (_train_step(model32, setup.tx, config, setup.info.class_counts,
                              setup.drw_start_step, setup.mesh),
                  jax.tree.map(lambda x: x.astype(jnp.float32), setup.frozen)),
  }
  before = jax.device_get(setup.state.params)
  out = {}
  for dtype, (step, frozen) in steps.items():
    state = jax.tree.map(jnp.copy, setup.state)  # the step donates it
    compiled = step.lower(state, frozen, batch).compile(train_utils.QUICK)
    (state_info, frozen_info, _), _ = compiled.args_info
    new_state, metrics = compiled(state, frozen, batch)
    out[dtype] = dict(
        loss=float(metrics['loss']), after=jax.device_get(new_state.params),
        frozen_args={str(a.dtype) for a in jax.tree.leaves(frozen_info)},
        state_args={str(a.dtype) for a in jax.tree.leaves(state_info)},
        arg_bytes=compiled.memory_analysis().argument_size_in_bytes,
        frozen_bytes=sum(x.nbytes for x in jax.tree.leaves(frozen)))
  f32, bf16 = out['float32'], out['bfloat16']
  assert {str(x.dtype) for x in jax.tree.leaves(setup.frozen)} == {'bfloat16'}
  assert bf16['frozen_args'] == {'bfloat16'} and f32['frozen_args'] == {'float32'}
  assert bf16['state_args'] == f32['state_args'] and 'bfloat16' not in bf16['state_args']
  assert {str(x.dtype) for x in jax.tree.leaves(bf16['after'])} == {'float32'}
  assert bf16['frozen_bytes'] * 2 == f32['frozen_bytes']
  assert f32['arg_bytes'] - bf16['arg_bytes'] == bf16['frozen_bytes']
  loss_err = abs(bf16['loss'] - f32['loss']) / abs(f32['loss'])
  print(f"loss float32 {f32['loss']:.5f}, bfloat16 {bf16['loss']:.5f} (rel {loss_err:.2e})")
  assert loss_err < BF16_LOSS_RTOL
  for path, b, a32, a16 in zip(jax.tree_util.tree_leaves_with_path(before),
                               jax.tree.leaves(before), jax.tree.leaves(f32['after']),
                               jax.tree.leaves(bf16['after'])):
    u32, u16 = np.asarray(a32, np.float64) - b, np.asarray(a16, np.float64) - b
    err = np.linalg.norm(u16 - u32) / max(np.linalg.norm(u32), 1e-30)
    print(f'{optim.path_name(path[0])}: update rel err {err:.2e}')
    assert err < BF16_UPDATE_RTOL, (optim.path_name(path[0]), err)
