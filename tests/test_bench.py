"""The benchmark (ltdpt_jax.bench): JSON fields and values, FLOP counts against the matmuls of
the traced programs, XLA and published ViT-B/16 counts, compiled buffers against the arrays
passed, the synthetic stand-in for a dataset, and the CLI on configs/demo.py."""

import json
import math
import sys

import jax
import numpy as np
import pytest
from jax.extend import core as jax_core

import fork_server
import train_utils
from ltdpt_jax import models
from ltdpt_jax import train
from ltdpt_jax import train_step as step_lib
from ltdpt_jax.bench import __main__ as bench
from ltdpt_jax.bench import memory as bench_memory
from ltdpt_jax.bench import parts as bench_parts
from ltdpt_jax.bench import programs as bench_programs
from ltdpt_jax.bench import record as bench_record
from ltdpt_jax.bench import report as bench_report
from ltdpt_jax.models import flops as flops_lib
from ltdpt_jax.models import ltdpt


# A low XLA CPU optimisation level halves compile times here; FLOP counts (from the HLO) are
# unchanged, and these tests check values, not speed.
FAST_COMPILE = {'xla_backend_optimization_level': 0}
# The demo with a 2-block random backbone (the shipped pretrained one has 4 blocks).
DEMO_OVERRIDES = ('--config.model.vit.num_layers=2', '--config.model.checkpoint=',
                  '--config.data.batch_size=16', '--config.data.eval_batch_size=50')


def _tiny(**kw):
  c = train_utils.tiny_config(image_size=16, batch_size=16, **kw)
  c.data.eval_batch_size = 16
  return c


def _cli(*args):
  env = train_utils.subprocess_env()
  env['XLA_FLAGS'] = train_utils.TEST_XLA_FLAGS
  return fork_server.run([sys.executable, '-m', 'ltdpt_jax.bench', *args], cwd=train_utils.REPO,
                         env=env, timeout=300)


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
  """(JSON record, stdout) of the CLI on configs/demo.py (2 blocks, batch 16), few steps, with
  1 TFLOP/s given as the peak (a CPU has none in the table)."""
  out = tmp_path_factory.mktemp('bench') / 'bench.json'
  proc = _cli('--config=configs/demo.py', '--steps=2', '--warmup=1', '--repeats=2',
              '--peak_tflops=1.0', f'--out={out}', *DEMO_OVERRIDES)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()), proc.stdout


def matmul_flops(jaxpr, dtypes=None) -> int:
  """2 x the multiply-adds of every dot_general and convolution of a jaxpr as traced (nested
  jaxprs included, a scan's body `length` times); `dtypes`: only those of these operand types.
  A dot's multiply-adds: its output size x the size of its contracted dimensions."""
  total = 0
  for eqn in jaxpr.eqns:
    lhs, rhs = (v.aval for v in eqn.invars[:2]) if len(eqn.invars) > 1 else (None, None)
    counted = dtypes is None or (lhs is not None and lhs.dtype in dtypes)
    out = math.prod(eqn.outvars[0].aval.shape) if eqn.outvars else 0
    if eqn.primitive.name == 'dot_general' and counted:
      (contract, _), _ = eqn.params['dimension_numbers']
      total += 2 * out * math.prod(lhs.shape[d] for d in contract)
    elif eqn.primitive.name == 'conv_general_dilated' and counted:
      spec = eqn.params['dimension_numbers'].rhs_spec  # (out features, in features, spatial...)
      total += 2 * out * math.prod(rhs.shape[d] for d in spec[1:])
    times = eqn.params['length'] if eqn.primitive.name == 'scan' else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, (jax_core.ClosedJaxpr, jax_core.Jaxpr)):
          total += times * matmul_flops(getattr(sub, 'jaxpr', sub), dtypes)
  return total


def traced_forward_flops(model, image_size: int, batch: int = 4) -> float:
  """`matmul_flops` per image of the model's forward (`train_step.forward`, logits) as traced,
  without Eq. 4's group similarities (B x D x G) and top-k weights (B x k x G) of 'fr_br': the
  analytic count leaves those out."""
  params = ltdpt.abstract_params(model, image_size)
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), np.uint8)
  jaxpr = jax.make_jaxpr(lambda p, i: step_lib.forward(model, p, i, train=False)['logits'])(
      params, images)
  routing = 0
  if model.method == 'fr_br':
    routing = 2 * model.num_groups * (model.hidden_size + model.top_k)
  return matmul_flops(jaxpr.jaxpr) / batch - routing


def nbytes(*trees) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(trees))


def _analytic(config, num_classes):
  model = models.build_model(config.model, num_classes, config.data.image_size)
  return flops_lib.analytic_flops(model, config.data.image_size)


def _xla_forward_per_image(config, num_classes):
  model = models.build_model(config.model, num_classes, config.data.image_size)
  params = ltdpt.abstract_params(model, config.data.image_size)
  s, b = config.data.image_size, config.data.batch_size
  images = jax.ShapeDtypeStruct((b, s, s, 3), np.uint8)
  compiled = jax.jit(lambda p, i: step_lib.forward(model, p, i, train=False)['logits']).lower(
      params, images).compile(compiler_options=FAST_COMPILE)
  return step_lib.compiled_flops(compiled) / b


# The record's fields, which launch/gpu_bench.sh and users read (the order too).
RECORD_FIELDS = {
    'config': ['file', 'dataset', 'synthetic', 'backbone', 'method', 'dtype', 'attention',
               'remat', 'num_fr_prompts', 'num_br_prompts', 'num_br_blocks', 'image_size',
               'batch_size', 'eval_batch_size', 'num_classes', 'checkpoint', 'crop_on_device'],
    'device': ['platform', 'device_kind', 'num_devices', 'num_processes', 'jax',
               'peak_tflops_per_device', 'peak_source', 'peak_note'],
    'host': ['before', 'after'],
    'timing': ['steps', 'warmup', 'repeats', 'setup_s', 'compile_s'],
    'train_step': ['images_per_s', 'step_time_ms', 'images_per_s_rounds',
                   'images_per_s_per_device', 'achieved_tflops_xla', 'achieved_tflops_model',
                   'mfu_model', 'mfu_xla'],
    'eval_step': ['images_per_s', 'step_time_ms', 'images_per_s_rounds',
                  'images_per_s_per_device', 'achieved_tflops_model', 'mfu_model'],
    'input_pipeline': ['images_per_s', 'workers', 'per', 'source', 'images_per_s_per_worker',
                       'source_ms_per_image'],
    'end_to_end': ['images_per_s', 'step_time_ms', 'workers', 'images_per_s_per_device',
                   'mfu_model', 'bottleneck'],
    'flops': ['train_step_xla_per_image', 'forward_xla_per_image', 'eval_step_xla_per_image',
              'step_over_forward_xla', 'analytic_forward_per_image', 'analytic_train_per_image',
              'analytic_dense_vit_forward_per_image', 'analytic_over_xla_forward',
              'analytic_attention_share', 'analytic_tokens_per_block_q_k', 'analytic_counts',
              'xla_note'],
    'memory': ['peak_bytes_in_use', 'bytes_in_use', 'bytes_limit', 'train_step_compiled',
               'eval_step_compiled'],
}


def _demo_config():
  """configs/demo.py with DEMO_OVERRIDES, as the CLI of `demo` runs it."""
  c = train_utils.load_config('demo')
  c.model.vit.num_layers, c.model.checkpoint = 2, ''
  c.data.batch_size, c.data.eval_batch_size = 16, 50
  return c


@pytest.mark.slow
def test_cli_demo_record_has_sane_values(demo):
  record, stdout = demo
  json.loads(json.dumps(record))
  assert list(record) == list(RECORD_FIELDS)
  for section, fields in RECORD_FIELDS.items():
    assert list(record[section]) == fields, section
  assert list(record['timing']['compile_s']) == ['train', 'eval', 'forward']
  for word in ('train step', 'eval step', 'input pipeline', 'end to end', 'FLOPs per image',
               'MFU', 'JSON written to'):
    assert word in stdout, word
  c = record['config']
  assert c['file'].endswith('demo.py') and c['batch_size'] == 16 and c['num_classes'] == 20
  assert c['backbone'].startswith('ViT(patch 4, width 64, depth 2')
  for part, images in (('train_step', 16), ('eval_step', 50), ('end_to_end', 16)):
    r = record[part]  # images/s and ms/step describe the same rate
    assert r['images_per_s'] * r['step_time_ms'] / 1e3 == pytest.approx(images), part
  t = record['train_step']
  assert len(t['images_per_s_rounds']) == 2
  assert t['images_per_s'] == pytest.approx(float(np.median(t['images_per_s_rounds'])))
  # The FLOPs and buffers against the programs of the same config set up here: the matmuls of
  # the traced programs, and the arrays the compiled steps take.
  setup = train.Setup(_demo_config())
  f = record['flops']
  assert f['analytic_forward_per_image'] == traced_forward_flops(setup.model, 32)
  batches = bench_programs.device_batches(setup)
  eval_step = bench_programs._eval_step(setup)  # pylint: disable=protected-access
  traced = {  # matmul FLOPs per image of each program as the benchmark compiles it
      'train_step_xla_per_image': matmul_flops(jax.make_jaxpr(setup.train_step)(
          setup.state, setup.frozen, batches['train']).jaxpr) / 16,
      'forward_xla_per_image': matmul_flops(jax.make_jaxpr(setup.predict_fn)(
          setup.state.params, setup.frozen, batches['forward_images']).jaxpr) / 16,
      'eval_step_xla_per_image': matmul_flops(jax.make_jaxpr(eval_step)(
          setup.state.params, setup.frozen, batches['eval']).jaxpr) / 50}
  for key, matmuls in traced.items():
    # XLA counts the matmuls and the elementwise work (LayerNorm, softmax, GELU, the saliency
    # FFT): 23% (train step) and 39% (forward) more at this width (64) and length (73 tokens).
    assert 1.0 < f[key] / matmuls < 1.5, (key, f[key] / matmuls)
  assert f['step_over_forward_xla'] == pytest.approx(
      f['train_step_xla_per_image'] / f['forward_xla_per_image'])
  m = record['memory']
  # The train step's arguments: state, frozen backbone, images and labels (uint8, int32); the
  # batch's ids are not used by the step and jit drops them. The eval step's: the trainable
  # parameters, the frozen ones, images, labels and the bool mask.
  assert m['train_step_compiled']['argument_size_in_bytes'] == (
      nbytes(setup.state, setup.frozen) + 16 * (32 * 32 * 3 + 4))
  assert m['eval_step_compiled']['argument_size_in_bytes'] == (
      nbytes(setup.state.params, setup.frozen) + 50 * (32 * 32 * 3 + 4 + 1))
  assert m['peak_bytes_in_use'] == bench_report.NA  # CPU: no allocator statistics
  # MFU = achieved FLOP/s / (given peak 1e12 FLOP/s x 1 device).
  assert record['device']['peak_tflops_per_device'] == 1.0
  assert record['device']['peak_source'] == 'flag'
  assert '.md' not in record['device']['peak_note']  # says what the peak is, cites no file
  assert t['mfu_model'] == pytest.approx(f['analytic_train_per_image'] * t['images_per_s'] / 1e12)
  assert t['mfu_xla'] == pytest.approx(f['train_step_xla_per_image'] * t['images_per_s'] / 1e12)
  assert record['device']['platform'] == 'cpu'
  assert record['input_pipeline']['workers'] == 0  # demo.py: data.num_workers = 0
  assert record['input_pipeline']['source'] == 'synthetic images generated on the fly'
  assert record['end_to_end']['bottleneck'] in ('input pipeline', 'device step')
  assert len(record['host']['before']['loadavg']) == 3


@pytest.mark.parametrize('method,skip', [('fr_br', True), ('fr_br', False), ('fr', True),
                                         ('vpt', True), ('vpt', False)])
def test_analytic_forward_equals_the_traced_matmuls(method, skip):
  """The analytic forward FLOPs are the matmuls of the forward as traced, to the FLOP, with and
  without `skip_dead_prompt_work` (3 blocks, 2 of them with BR prompts; 20 px: a 5 x 5 grid)."""
  c = train_utils.tiny_config(image_size=20, method=method)
  c.model.vit.num_layers, c.model.num_br_blocks = 3, 2
  c.model.num_fr_prompts, c.model.num_br_prompts = 3, 2
  c.model.skip_dead_prompt_work = skip
  model = models.build_model(c.model, 6, 20)
  analytic = flops_lib.analytic_flops(model, 20)
  assert analytic['forward'] == traced_forward_flops(model, 20)
  assert analytic['forward'] > 0


def test_synthetic_replaces_a_real_dataset():
  """A CIFAR-100-LT config -> 100 classes for the model, synthetic images of the config's size
  for the pipeline, and no dataset is ever opened (none is installed here). Pipeline part only
  (no compile); on CPU the peak, so the MFU, is n/a."""
  pipe, info = bench_parts.synthetic_stand_in(train_utils.load_config('cifar100_lt'))
  assert info.num_classes == 100 and len(info.class_counts) == 100
  assert info.class_counts[0] == 200 and info.class_counts[-1] == 2  # ratio 100 profile
  assert pipe.data.dataset == 'synthetic' and pipe.data.image_size == 224
  assert pipe.data.num_classes == 64
  c = _tiny()
  c.data.dataset = 'cifar100_lt'
  c.data.imbalance_ratio = 100.0  # with num_train_max 40 < 100: raised so no class is empty
  r = bench.run_benchmark(c, steps=2, warmup=1, repeats=1, synthetic=True, parts=('pipeline',))
  assert r['config']['num_classes'] == 100 and r['config']['synthetic']
  assert r['input_pipeline']['images_per_s'] > 0
  assert 'train_step' not in r and 'end_to_end' not in r and 'eval_step' not in r
  assert r['flops']['train_step_xla_per_image'] == bench_report.NA
  assert r['flops']['analytic_forward_per_image'] > 0
  assert r['device']['peak_tflops_per_device'] == bench_report.NA
  bench_report.format_table(r)  # copes with the missing parts
  with pytest.raises(ValueError, match='num_classes'):
    bench_parts.synthetic_stand_in(_tiny(), num_classes=1)
  with pytest.raises(ValueError, match='parts'):
    bench.run_benchmark(_tiny(), parts=('train', 'bogus'))


def test_analytic_forward_close_to_xla_for_a_plain_tiny_vit():
  """No saliency ('vpt'), width 128: XLA counts matmuls plus elementwise ops (LayerNorm, GELU,
  softmax, adds: O(N D) against the matmuls' O(N D^2)), so it is a few % above the matmuls."""
  c = train_utils.tiny_config(image_size=32, batch_size=4, method='vpt')
  c.model.vit.hidden_size, c.model.vit.mlp_dim, c.model.vit.num_heads = 128, 512, 2
  xla = _xla_forward_per_image(c, 6)
  analytic = _analytic(c, 6)['forward']
  assert 0.85 <= analytic / xla <= 1.15, analytic / xla
  assert analytic <= xla  # the elementwise work XLA also counts is not in the analytic count


def test_analytic_query_layout_matches_xla_difference():
  """The rows skipped by `skip_dead_prompt_work` are what the analytic count says they are:
  XLA's forward FLOPs drop by the analytic difference (within the elementwise overhead)."""
  c = train_utils.tiny_config(image_size=32, batch_size=4, method='vpt')
  c.model.vit.hidden_size, c.model.vit.mlp_dim, c.model.vit.num_heads = 128, 512, 2
  c.model.vit.num_layers = 3
  c.model.num_fr_prompts = 16
  full = c.copy_and_resolve_references()
  full.model.skip_dead_prompt_work = False
  xla_diff = _xla_forward_per_image(full, 6) - _xla_forward_per_image(c, 6)
  a_skip, a_full = _analytic(c, 6), _analytic(full, 6)
  assert a_full['forward'] == pytest.approx(a_full['dense_forward'] + 2 * 128 * 6)
  ratio = (a_full['forward'] - a_skip['forward']) / xla_diff
  assert 0.8 <= ratio <= 1.05, ratio
  # Last block: CLS + prompts as queries; earlier ones CLS + 64 patches; keys everything.
  assert a_skip['tokens_per_block_q_k'] == [(65, 81), (65, 81), (17, 81)]


@pytest.mark.parametrize('prompts,gmac', [(10, 18.49), (20, 19.41), (50, 22.22)])
def test_vit_b16_forward_matches_published_counts(prompts, gmac):
  """ViT-B/16 at 224 with P prompt tokens in every block, all rows computed: the published
  counts (e.g. Kim et al. 2023: 22.2 GMACs at 50 prompts)."""
  c = train_utils.load_config('cifar100_lt')
  c.model.method = 'vpt'
  c.model.num_fr_prompts = prompts
  c.model.skip_dead_prompt_work = False
  a = _analytic(c, 100)
  assert a['dense_forward'] / 2e9 == pytest.approx(gmac, abs=0.01)
  assert a['forward'] == pytest.approx(a['dense_forward'] + 2 * 768 * 100)
  if prompts == 20:  # forward + activation-only backward: 79.2 GFLOP
    assert a['train'] / 1e9 == pytest.approx(79.2, abs=0.1)


def test_peak_table():
  assert bench_record.peak_tflops_for('NVIDIA H200') == 989.4
  assert bench_record.peak_tflops_for('NVIDIA H100 80GB HBM3') == 989.4
  assert bench_record.peak_tflops_for('NVIDIA H100 PCIe') is None
  assert bench_record.peak_tflops_for('NVIDIA A100-SXM4-80GB') == 312.0
  assert bench_record.peak_tflops_for('TPU v4') == 275.0
  assert bench_record.peak_tflops_for('TPU v5 lite') == 197.0
  assert bench_record.peak_tflops_for('TPU v5') == 459.0
  assert bench_record.peak_tflops_for('TPU v5p') == 459.0
  assert bench_record.peak_tflops_for('TPU v6 lite') == 918.0
  assert bench_record.peak_tflops_for('cpu') is None


def test_memory_part_reports_buffers_and_what_remat_costs(monkeypatch):
  """--parts=memory (`bench_memory.memory_rows`): the step compiled for abstract arguments per
  device, with and without remat; its numbers add up, remat's FLOPs are reported against no
  remat, and the abstract step compiles to exactly the buffers of train.Setup's step."""
  from ltdpt_jax import sharding  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import train  # pylint: disable=g-import-not-at-top
  c = _tiny()
  c.model.dtype = 'bfloat16'
  setup = train.Setup(c)
  m = bench_memory.memory_rows(setup.config, setup.info, per_device_batches=(16,),
                               remat_policies=('nothing',), options=FAST_COMPILE)
  assert (m['dtype'], m['platform'], m['num_devices']) == ('bfloat16', 'cpu', 1)
  # In a process whose backend has started, XLA:CPU keeps its concurrency schedule (the CLI
  # switches it before), and the table says so.
  assert m['memory_minimising_schedule'] is False
  assert [(row['per_device_batch'], row['remat_policy']) for row in m['rows']] == [
      (16, 'none'), (16, 'nothing')]
  for row in m['rows']:
    assert row['total_bytes'] == (row['argument_bytes'] + row['output_bytes']
                                  - row['alias_bytes'] + row['temp_bytes'])
    assert row['bytes_per_image'] == pytest.approx(row['total_bytes'] / 16)
    assert row['alias_bytes'] > 0  # the donated state
  assert m['rows'][0]['flops_over_no_remat'] == 1.0
  assert 1.05 < m['rows'][1]['flops_over_no_remat'] < 1.6  # at most one more forward per block
  table = bench_report.format_memory_report(m)
  assert 'nothing' in table and 'concurrency schedule' in table
  # The abstract step is Setup's: the same step function on arguments of the same shapes and
  # dtypes (the frozen backbone in bf16), so the same program.
  step, args = bench_memory.abstract_train_step(setup.config, setup.info, setup.mesh)
  batch = sharding.to_global(bench_parts.random_batch(16, 16, setup.num_classes, 0,
                                                      eval_batch=False), setup.batch_sharding)
  real = (setup.state, setup.frozen, {k: batch[k] for k in ('image', 'label')})
  aval = lambda x: (tuple(x.shape), str(x.dtype))  # pylint: disable=unnecessary-lambda-assignment
  assert jax.tree.structure(args) == jax.tree.structure(real)
  assert jax.tree.map(aval, args) == jax.tree.map(aval, real)
  assert callable(step)
  with pytest.raises(ValueError, match='memory_remat_policies'):
    bench.run_benchmark(c, parts=('memory',), memory_remat_policies=('everything',))
  # Against the model's (analytic, matmul-only) FLOPs: XLA also counts the elementwise work.
  assert 1.0 < m['rows'][0]['flops_over_model'] < m['rows'][1]['flops_over_model']
  # The CLI's switch to the memory-minimising schedule: only before a backend starts.
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert not bench_memory.use_cpu_memory_schedule()
  monkeypatch.setenv('XLA_FLAGS', bench_memory.CPU_MEMORY_SCHEDULE_FLAG)
  assert bench_memory.use_cpu_memory_schedule() and bench_memory.cpu_memory_schedule_in_effect()


def test_memory_part_reports_a_program_that_does_not_fit(monkeypatch):
  """A compiler that refuses a program for the device's memory (TPU/GPU: RESOURCE_EXHAUSTED)
  gives a 'does not fit' row with its message, not a crash; the other rows are still made.
  Other compile errors still raise."""
  from ltdpt_jax import train  # pylint: disable=g-import-not-at-top
  setup = train.Setup(_tiny())
  real = bench_programs.compile_step
  message = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO '
             'temporaries (17.15G) exceeds available HBM (15.75G).')

  def refuse_without_remat(step, *args, options=None):  # the first program: remat 'none'
    if refuse_without_remat.calls == 0:
      refuse_without_remat.calls += 1
      raise RuntimeError(message + '\nmore detail')
    return real(step, *args, options=options)
  refuse_without_remat.calls = 0
  monkeypatch.setattr(bench_programs, 'compile_step', refuse_without_remat)
  m = bench_memory.memory_rows(setup.config, setup.info, per_device_batches=(16,),
                               remat_policies=('nothing',), options=FAST_COMPILE)
  first, second = m['rows']
  assert first['remat_policy'] == 'none' and first['does_not_fit'] == message
  assert 'total_bytes' not in first
  assert second['remat_policy'] == 'nothing' and second['total_bytes'] > 0
  assert second['flops_over_no_remat'] == bench_report.NA  # nothing to compare with
  table = bench_report.format_memory_report(m)
  assert f'does not fit: {message}' in table
  monkeypatch.setattr(bench_programs, 'compile_step',
                      lambda *a, **k: (_ for _ in ()).throw(RuntimeError('INTERNAL: bad')))
  with pytest.raises(RuntimeError, match='INTERNAL'):
    bench_memory.memory_rows(setup.config, setup.info, per_device_batches=(16,),
                             remat_policies=(), options=FAST_COMPILE)


def _has_libtpu() -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  return importlib.util.find_spec('libtpu') is not None


@pytest.mark.skipif(_has_libtpu(), reason='libtpu is installed (the next test runs instead)')
def test_memory_topology_without_libtpu_says_what_to_install():
  with pytest.raises(ValueError, match=r"pip install 'jax\[tpu\]>=0.10,<0.13'.*v5e:2x2"):
    bench_memory.topology_mesh('v5e:2x2')
  with pytest.raises(ValueError, match='add memory to --parts'):
    bench.run_benchmark(_tiny(), parts=('train',), memory_topology='v5e:2x2')


@pytest.mark.skipif(not _has_libtpu(),
                    reason="needs libtpu (pip install 'jax[tpu]>=0.10,<0.13'; no TPU)")
def test_memory_topology_compiles_for_a_tpu_chip_ahead_of_time():
  """--memory_topology: the memory part compiled by the TPU compiler for a v5e chip, on a host
  without one; the model traced for the TPU (remat's optimization barriers), per device."""
  from ltdpt_jax import train  # pylint: disable=g-import-not-at-top
  c = train_utils.tiny_config(image_size=32, batch_size=16)
  c.data.eval_batch_size = 16
  c.model.dtype = 'bfloat16'
  # 64 tokens, width 64, 4 blocks, batch 512: the activations, not the TPU's tiled layouts of
  # small arrays, are the bulk of the temporaries (259 MB without remat, 48 with 'nothing'; at
  # 16 px and width 32 'nothing' needed more than none).
  c.model.vit.hidden_size, c.model.vit.mlp_dim, c.model.vit.num_layers = 64, 256, 4
  # The crop on the TPU (auto's choice there) adds fixed temporaries; the ViT-B/16 report with
  # it is in docs/performance.md.
  c.data.crop_on_device = False
  setup = train.Setup(c)
  mesh = bench_memory.topology_mesh('v5e:2x2')
  assert mesh.size == 1 and mesh.devices.flat[0].platform == 'tpu'
  m = bench_memory.memory_rows(setup.config, setup.info, per_device_batches=(512,),
                               remat_policies=('nothing',), mesh=mesh)
  assert (m['platform'], m['device_kind'], m['num_devices']) == ('tpu', 'TPU v5 lite', 1)
  none, nothing = m['rows']
  assert 0 < nothing['temp_bytes'] < none['temp_bytes'] / 2
  assert nothing['flops_over_no_remat'] > 1.0
  assert 'TPU v5 lite' in bench_report.format_memory_report(m)
  with pytest.raises(ValueError, match="cannot describe that TPU.*such as 'v5e:2x2'"):
    bench_memory.topology_mesh('v5e:banana')


def _has_cuda_plugin() -> bool:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  return any(d.metadata['Name'].startswith('jax-cuda') for d in metadata.distributions())


def test_gpu_targets_are_shipped_and_name_their_device():
  """The target configs of --memory_topology=h100/h200 are package data, each naming its GPU
  and its memory (what XLA's deviceless compile reports as the device)."""
  expected = {'h100': ('"NVIDIA H100 80GB HBM3"', 85520809984),
              'h200': ('"NVIDIA H200"', 150754820096)}
  assert set(bench_memory.GPU_TARGETS) == set(expected)
  for name, (kind, memory) in expected.items():
    assert bench_memory.is_gpu_target(name) and bench_memory.is_gpu_target(name.upper())
    with open(f'{bench_memory.GPU_TARGET_DIR}/{bench_memory.GPU_TARGETS[name]}') as f:
      text = f.read()
    assert f'device_description_str: {kind}' in text
    assert f'device_memory_size: {memory}' in text and 'major: 9' in text
  assert not bench_memory.is_gpu_target('v5e:2x2')


@pytest.mark.skipif(_has_cuda_plugin(), reason='the CUDA plugin is installed (next test runs)')
def test_gpu_memory_topology_without_the_cuda_plugin_says_what_to_install():
  with pytest.raises(ValueError, match=r"cannot describe that GPU.*jax\[cuda13\]>=0.10,<0.13"):
    bench_memory.topology_mesh('h200')


@pytest.mark.skipif(not _has_cuda_plugin(),
                    reason="needs the CUDA plugin (pip install 'jax[cuda13]>=0.10,<0.13'; no GPU)")
def test_memory_topology_compiles_for_an_h200_ahead_of_time_with_cudnn_attention():
  """--memory_topology=h200: XLA's deviceless GPU compile; attention 'auto' with bf16 traced for
  the GPU takes cuDNN's fused attention with the saliency bias (padded to a multiple of 8) in
  every block: one forward and one backward call per block, and one more forward per block
  when remat 'nothing' recomputes it."""
  import os  # pylint: disable=g-import-not-at-top
  os.environ.setdefault(bench_memory.SKIP_CUDA_CHECK_ENV, '1')
  from ltdpt_jax import train  # pylint: disable=g-import-not-at-top
  c = _tiny()
  c.model.dtype = 'bfloat16'
  setup = train.Setup(c)
  mesh = bench_memory.topology_mesh('h200')
  assert mesh.devices.flat[0].platform == 'gpu'
  # auto crops on the GPU: the step compiled here includes the integer crop matmuls.
  _, (_, _, batch) = bench_memory.abstract_train_step(setup.config, setup.info, mesh)
  assert 'crop' in batch
  m = bench_memory.memory_rows(setup.config, setup.info, per_device_batches=(16,),
                               remat_policies=('nothing',), mesh=mesh)
  assert (m['platform'], m['device_kind']) == ('gpu', 'NVIDIA H200')
  layers = setup.model.arch.num_layers
  none, nothing = m['rows']
  assert none['cudnn_attention_calls'] == 2 * layers
  assert nothing['cudnn_attention_calls'] == 3 * layers
  assert 0 < nothing['total_bytes'] and 0 < none['total_bytes']
