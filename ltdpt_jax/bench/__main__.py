r"""Throughput, FLOPs, MFU and memory of the LT-DPT train step, eval step and input pipeline.

  python -m ltdpt_jax.bench --config=configs/demo.py --steps=20 --out=bench.json
  python -m ltdpt_jax.bench --config=configs/cifar100_lt.py --synthetic \
      --config.model.checkpoint='' --config.model.dtype=bfloat16 --out=b16_bf16.json

A timing loop over the `train.Setup` that training uses (mesh, model, frozen backbone, state,
jitted train step, the evaluators' eval step), measured one part at a time (`--parts`) with the
pieces of `bench/parts.py`, the FLOP model of `models/flops.py` and the table of
`bench/report.py`:

* train: the compiled train step alone on one device-resident batch (uniform random uint8
  images, random labels) fed again and again; `--warmup` untimed steps, then `--repeats` rounds of
  `--steps` steps, each round timed from the first dispatch to `jax.block_until_ready` of the
  last step's outputs (compilation excluded; the median round is reported).
* eval: the compiled eval step of the `config.train.best_metric` evaluator the same way, on an
  eval batch (`config.data.eval_batch_size`).
* pipeline: the config's grain training iterator alone (`make_train_iterator`, worker processes
  from `config.data.num_workers` or `--workers`), `--warmup` batches untimed, `--steps` timed.
* end_to_end: that same iterator through `sharding.prefetch_to_device` into the compiled train
  step, as the train loop runs it (without its periodic metric fetches), `--steps` timed.
* flops: XLA's FLOP counts of the compiled train step and forward (below). The analytic counts
  are always reported; the train step is compiled whenever train, end_to_end or flops runs.

FLOPs per image: XLA's count of the compiled train step and of a compiled forward (saliency +
normalisation + model, `train_step.forward`) via `cost_analysis` (XLA reports the per-device
program, so per image = count / per-device batch), and `flops.analytic_flops`: the matmul FLOPs
of the model's actual token layout (see its docstring for what is counted). MFU = achieved
FLOP/s / (dense bf16 peak per chip x chips): `--peak_tflops`, else the peak of the device kind
(`bench_parts.PEAK_BF16_TFLOPS`, perf-anchors.md section 2), else 'n/a' (CPU). Two MFUs: 'model'
uses the analytic FLOPs (the usual definition: recomputation and elementwise work do not count),
'xla' XLA's count.

Memory: `peak_bytes_in_use` of device 0 (memory_stats; 'n/a' where the backend has none, e.g.
CPU) after all parts ran, and the compiled train step's own sizes (`memory_analysis`).

* memory (not in the default parts: it compiles several programs): the memory report. The train
  step compiled for abstract arguments (`bench_parts.abstract_train_step`: nothing allocated)
  at each per-device batch of `--memory_batches` (default 128,512), without remat and with each
  policy of `--memory_remat_policies` (default the config's `model.remat_policy`): arguments,
  temporaries, outputs, total and bytes per image from `memory_analysis`, and XLA's FLOPs with
  remat over those without (what remat costs). It runs on a CPU too (that is how the README's
  table was made), approximating the accelerator's program; there the CLI switches XLA:CPU to
  its memory-minimising scheduler (`bench_parts.use_cpu_memory_schedule`: the default one
  hoists every recomputation and so hides what remat saves), which also applies to the other
  parts of that run: time them in a run of their own. `--memory_topology=v5e:2x2` compiles
  these programs ahead of time for a TPU chip instead (the first chip of that topology, from
  `jax.experimental.topologies`; needs libtpu, `pip install "jax[tpu]>=0.10,<0.13"`, but no
  TPU), `--memory_topology=h200` (or h100) for that NVIDIA GPU (XLA's deviceless GPU compile;
  needs `pip install "jax[cuda13]>=0.10,<0.13"`, but no GPU): the accelerator compiler's own
  memory figures, on any host.

`--synthetic` replaces the dataset by synthetic data of the config's image size
(`bench_parts.synthetic_stand_in`: a config whose data section is synthetic, and the dataset info
`train.Setup(config, info=...)` builds from): the model, the loss and the steps get the real
dataset's class count (`data.NUM_CLASSES`, or `--num_classes`) with an exponential long-tailed
profile; the pipeline generates `data.dataset='synthetic'` images (at most
`synthetic.MAX_CLASSES` = 64 shape/colour classes, enough to exercise it: its cost does not
depend on the class count). No network and no dataset files are needed with --synthetic and
`--config.model.checkpoint=''` (random frozen backbone).

A readable table goes to stdout (stderr when the JSON does) and the JSON to `--out` (or stdout).
The host's load average before and after is recorded: timings on a shared machine vary.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ltdpt_jax.bench import parts as parts_lib
from ltdpt_jax import config_lib
from ltdpt_jax import data as data_lib
from ltdpt_jax import sharding
from ltdpt_jax import train
from ltdpt_jax.bench.report import format_table
from ltdpt_jax.bench.report import NA
from ltdpt_jax.models import flops as flops_lib
from ltdpt_jax.models import vit as vit_lib

PARTS = ('train', 'eval', 'pipeline', 'end_to_end', 'flops', 'memory')
DEFAULT_PARTS = ('train', 'eval', 'pipeline', 'end_to_end', 'flops')
MEMORY_BATCHES = (128, 512)


def run_benchmark(config, *, steps: int = 20, warmup: int = 3, repeats: int = 3,
                  peak_tflops: float | None = None, synthetic: bool = False,
                  num_classes: int | None = None, workers: int | None = None,
                  parts: Sequence[str] = DEFAULT_PARTS, config_name: str = '',
                  compiler_options: dict[str, Any] | None = None,
                  memory_batches: Sequence[int] = MEMORY_BATCHES,
                  memory_remat_policies: Sequence[str] | None = None,
                  memory_topology: str | None = None) -> dict[str, Any]:
  """Runs the benchmark parts `parts` (subset of PARTS) for `config`; returns the JSON record.

  Compiles only what the parts need: the train step for train / end_to_end / flops, the eval
  step for eval, the forward for flops (XLA counts of uncompiled steps are 'n/a'; the analytic
  counts are always there), and for memory the step at each of `memory_batches` (per device)
  without remat and with each of `memory_remat_policies` (default: config.model.remat_policy).
  `compiler_options` go to every `.compile()` (the tests pass a low XLA CPU optimisation
  level: faster compiles, the same FLOP counts and buffers). `memory_topology` ('v5e:2x2',
  'h200', ...) compiles the memory part ahead of time for the first chip of that TPU topology
  or for that GPU instead of this backend's devices (`bench_parts.topology_mesh`; needs libtpu
  or the CUDA plugin, not the chip). Raises ValueError for unknown parts, bad counts or an
  invalid config.
  """
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    raise ValueError(f'Unknown benchmark parts {unknown}; choose from {PARTS}.')
  if steps < 1 or warmup < 0 or repeats < 1:
    raise ValueError(f'Need steps >= 1, warmup >= 0, repeats >= 1; got {steps}, {warmup}, '
                     f'{repeats}.')
  if memory_remat_policies is None:
    memory_remat_policies = (config.model.get('remat_policy', 'dots_with_no_batch_dims'),)
  bad = sorted(set(memory_remat_policies) - set(vit_lib.REMAT_POLICIES))
  if bad or not memory_batches or min(int(b) for b in memory_batches) < 1:
    raise ValueError(f'Need --memory_batches >= 1 and --memory_remat_policies from '
                     f'{tuple(vit_lib.REMAT_POLICIES)}; got {list(memory_batches)}, {bad}.')
  memory_mesh = None
  if memory_topology:
    if 'memory' not in parts:
      raise ValueError('--memory_topology applies to the memory part: add memory to --parts.')
    memory_mesh = parts_lib.topology_mesh(memory_topology)
  config = copy.deepcopy(config)
  if workers is not None:
    config.data.num_workers = int(workers)
  config_lib.validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  host_before = parts_lib.host()
  info = None
  if synthetic:
    config, info = parts_lib.synthetic_stand_in(config, num_classes)
  elif num_classes is not None:
    raise ValueError('--num_classes only applies with --synthetic.')

  t0 = time.perf_counter()
  setup = train.Setup(config, info=info)
  setup_s = time.perf_counter() - t0
  device = jax.devices()[0]
  n_dev = jax.device_count()
  batch, eval_batch = int(config.data.batch_size), int(config.data.eval_batch_size)
  logging.info('Benchmark: %d device(s) [%s], %d process(es); %s; batch %d, eval batch %d.',
               n_dev, device.device_kind, jax.process_count(), setup.info.name, batch,
               eval_batch)
  compiled, compile_s, batches = _compile(setup, parts, compiler_options)
  analytic = flops_lib.analytic_flops(setup.model, setup.image_size)
  flops = _flops_record(compiled, analytic, batch, eval_batch, n_dev)

  peak_tflops, peak_source = parts_lib.resolve_peak(peak_tflops, device)
  peak_total = peak_tflops * 1e12 * n_dev if peak_tflops else None
  timing = dict(steps=steps, warmup=warmup, repeats=repeats)
  runner = parts_lib.StepRunner(compiled['train'], setup.state, setup.frozen)
  results: dict[str, Any] = {}
  if 'train' in parts:
    results['train_step'] = _train_step_part(runner, batches['train'], batch, n_dev, analytic,
                                             flops, peak_total, **timing)
  if 'eval' in parts:
    results['eval_step'] = _eval_step_part(compiled['eval'], runner.state.params, setup.frozen,
                                           batches['eval'], eval_batch, n_dev, analytic,
                                           peak_total, **timing)
  if 'pipeline' in parts or 'end_to_end' in parts:
    results.update(_input_parts(setup, runner, parts, results, synthetic, n_dev, analytic,
                                peak_total, steps=steps, warmup=warmup))
  memory_report = None
  if 'memory' in parts:
    memory_report = parts_lib.memory_rows(
        config, setup.info, per_device_batches=[int(b) for b in memory_batches],
        remat_policies=list(memory_remat_policies), options=compiler_options,
        log=lambda line: logging.info('%s', line), mesh=memory_mesh)
  jax.block_until_ready(runner.state)
  record = {
      'config': _config_record(setup, config_name, synthetic),
      'device': {
          'platform': device.platform, 'device_kind': device.device_kind,
          'num_devices': n_dev, 'num_processes': jax.process_count(), 'jax': jax.__version__,
          'peak_tflops_per_device': peak_tflops if peak_tflops else NA,
          'peak_source': peak_source,
          'peak_note': 'dense bf16 peak (perf-anchors.md section 2), also for float32 runs',
      },
      'host': {'before': host_before, 'after': parts_lib.host()},
      'timing': {**timing, 'setup_s': setup_s, 'compile_s': compile_s},
      **results,
      'flops': flops,
      'memory': {**parts_lib.device_memory(),
                 **{f'{k}_step_compiled': parts_lib.memory_analysis(compiled[k])
                    if compiled[k] else NA for k in ('train', 'eval')}},
  }
  if memory_report is not None:
    record['memory_report'] = memory_report
  return record


def _config_record(setup: train.Setup, config_name: str, synthetic: bool) -> dict[str, Any]:
  """What was measured: the config's model and data."""
  m, d = setup.config.model, setup.config.data
  return {
      'file': config_name, 'dataset': setup.info.name, 'synthetic': bool(synthetic),
      'backbone': setup.model.arch.describe(), 'method': m.method, 'dtype': m.dtype,
      'attention': m.get('attention', 'auto'), 'remat': bool(m.get('remat', False)),
      'num_fr_prompts': int(m.num_fr_prompts), 'num_br_prompts': int(m.num_br_prompts),
      'num_br_blocks': int(m.num_br_blocks), 'image_size': setup.image_size,
      'batch_size': int(d.batch_size), 'eval_batch_size': int(d.eval_batch_size),
      'num_classes': setup.num_classes, 'checkpoint': m.checkpoint,
      'crop_on_device': data_lib.crop_on_device(d),
  }


def _compile(setup: train.Setup, parts: Sequence[str], options: dict[str, Any] | None):
  """The programs the parts need (train step, the primary evaluator's eval step, the forward)
  compiled for one random device batch each; (compiled, compile seconds, batches)."""
  n_proc, size, seed = jax.process_count(), setup.image_size, 1234 + jax.process_index()
  data = setup.config.data
  # With data.crop_on_device the train batch is the pipeline's: stored images + crop numbers.
  stored = (data_lib.train_batch_shapes(data)['image'][0] if data_lib.crop_on_device(data)
            else None)
  batches = {
      'train': sharding.to_global(parts_lib.random_batch(
          int(data.batch_size) // n_proc, size, setup.num_classes, seed, eval_batch=False,
          stored_shape=stored, crop_min_scale=float(data.crop_min_scale)),
                                  setup.batch_sharding),
      'eval': sharding.to_global(parts_lib.random_batch(
          int(data.eval_batch_size) // n_proc, size, setup.num_classes, seed + 1,
          eval_batch=True), setup.batch_sharding)}
  batches['forward_images'] = batches['train']['image']
  if stored is not None:  # the forward takes cropped images
    batches['forward_images'] = sharding.to_global(parts_lib.random_batch(
        int(data.batch_size) // n_proc, size, setup.num_classes, seed, eval_batch=False),
                                                   setup.batch_sharding)['image']
  compiled: dict[str, Any] = {'train': None, 'eval': None, 'forward': None}
  compile_s: dict[str, float | str] = {'train': NA, 'eval': NA, 'forward': NA}
  state, frozen = setup.state, setup.frozen
  if {'train', 'end_to_end', 'flops'} & set(parts):
    compiled['train'], compile_s['train'] = parts_lib.compile_step(
        setup.train_step, state, frozen, batches['train'], options=options)
  if 'eval' in parts:
    name = train.best_metric(setup.config)[0]
    evaluator = next(ev.evaluator for ev in setup.evaluators(None) if ev.name == name)
    compiled['eval'], compile_s['eval'] = parts_lib.compile_step(
        evaluator.eval_step, state.params, frozen, batches['eval'], options=options)
  if 'flops' in parts:
    forward = jax.jit(lambda t, f, images: setup.predict_fn(t, f, images)['logits'],
                      in_shardings=(setup.replicated, setup.replicated, setup.batch_sharding))
    compiled['forward'], compile_s['forward'] = parts_lib.compile_step(
        forward, state.params, frozen, batches['forward_images'], options=options)
  return compiled, compile_s, batches


def _flops_record(compiled, analytic, batch: int, eval_batch: int, n_dev: int) -> dict[str, Any]:
  """XLA's FLOPs per image of the compiled programs next to the analytic counts."""
  step = parts_lib.xla_flops_per_image(compiled['train'], batch, n_dev)
  fwd = parts_lib.xla_flops_per_image(compiled['forward'], batch, n_dev)
  ev = parts_lib.xla_flops_per_image(compiled['eval'], eval_batch, n_dev)
  na = lambda x: NA if x is None else x  # pylint: disable=unnecessary-lambda-assignment
  return {
      'train_step_xla_per_image': na(step),
      'forward_xla_per_image': na(fwd),
      'eval_step_xla_per_image': na(ev),
      'step_over_forward_xla': step / fwd if step and fwd else NA,
      'analytic_forward_per_image': analytic['forward'],
      'analytic_train_per_image': analytic['train'],
      'analytic_dense_vit_forward_per_image': analytic['dense_forward'],
      'analytic_over_xla_forward': analytic['forward'] / fwd if fwd else NA,
      'analytic_attention_share': analytic['attention_share_of_forward'],
      'analytic_tokens_per_block_q_k': analytic['tokens_per_block_q_k'],
      'analytic_counts': analytic['counted'],
      'xla_note': 'XLA cost_analysis of the per-device program / per-device batch; counts '
                  'elementwise ops and the saliency FFT too',
  }


def _train_step_part(runner, train_batch, batch, n_dev, analytic, flops, peak_total, *, steps,
                     warmup, repeats) -> dict[str, Any]:
  """The compiled train step alone, on one device-resident batch fed again and again."""
  same_batch = itertools.repeat(train_batch)
  r = parts_lib.rate(batch, steps, parts_lib.timed_rounds(
      lambda n: runner.run(n, same_batch), steps, warmup, repeats))
  ips = r['images_per_s']
  step_flops = flops['train_step_xla_per_image']
  step_flops = None if step_flops == NA else step_flops
  r.update(images_per_s_per_device=ips / n_dev,
           achieved_tflops_xla=step_flops * ips / 1e12 if step_flops else NA,
           achieved_tflops_model=analytic['train'] * ips / 1e12,
           mfu_model=parts_lib.mfu(analytic['train'], ips, peak_total),
           mfu_xla=parts_lib.mfu(step_flops, ips, peak_total))
  return r


def _eval_step_part(compiled, params, frozen, eval_batch_dev, eval_batch, n_dev, analytic,
                    peak_total, *, steps, warmup, repeats) -> dict[str, Any]:
  """The compiled eval step alone, the same way."""

  def run_eval(n):
    out = None
    for _ in range(n):
      out = compiled(params, frozen, eval_batch_dev)
    return out

  r = parts_lib.rate(eval_batch, steps, parts_lib.timed_rounds(run_eval, steps, warmup, repeats))
  ips = r['images_per_s']
  r.update(images_per_s_per_device=ips / n_dev,
           achieved_tflops_model=analytic['forward'] * ips / 1e12,
           mfu_model=parts_lib.mfu(analytic['forward'], ips, peak_total))
  return r


def _input_parts(setup, runner, parts, results, synthetic, n_dev, analytic, peak_total, *,
                 steps, warmup) -> dict[str, Any]:
  """The grain training iterator alone, then through `prefetch_to_device` into the compiled
  train step as the train loop runs it (without its periodic metric fetches)."""
  data = setup.config.data
  n_proc, batch = jax.process_count(), int(data.batch_size)
  workers = data_lib.num_workers(int(data.num_workers))
  out = {}
  it = data_lib.make_train_iterator(data, seed=setup.config.train.seed)
  try:
    if 'pipeline' in parts:
      source = ('synthetic images generated on the fly' if synthetic or
                data.dataset == 'synthetic' else
                'image files decoded with Pillow' if data.dataset in ('folder', 'list') else
                data.dataset)
      out['input_pipeline'] = parts_lib.pipeline_record(
          it, rows=batch // n_proc, steps=steps, warmup=warmup, workers=workers, source=source,
          data=data)
    if 'end_to_end' in parts:
      stream = (b for b, _ in sharding.prefetch_to_device(it, setup.batch_sharding))
      r = parts_lib.rate(batch, steps, parts_lib.timed_rounds(
          lambda n: runner.run(n, stream), steps, warmup, 1))
      r.pop('images_per_s_rounds')
      ips = r['images_per_s']
      r.update(workers=workers, images_per_s_per_device=ips / n_dev,
               mfu_model=parts_lib.mfu(analytic['train'], ips, peak_total))
      if 'train_step' in results and 'input_pipeline' in out:
        pipe_ips = out['input_pipeline']['images_per_s'] * n_proc
        r['bottleneck'] = ('input pipeline' if pipe_ips < results['train_step']['images_per_s']
                           else 'device step')
      out['end_to_end'] = r
  finally:
    it.close()
  return out


# ---------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------

def define_flags() -> None:
  """Defines the CLI flags (only when run as a program, so importing this module defines none
  and cannot clash with other modules' flags of the same names)."""
  config_flags.DEFINE_config_file(
      'config', None, 'Experiment config file (configs/*.py), optionally `file.py:arg`.',
      lock_config=True)
  flags.DEFINE_integer('steps', 20, 'Timed steps (batches) per round.')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps (batches) first.')
  flags.DEFINE_integer('repeats', 3, 'Timed rounds of the train/eval steps (median reported).')
  flags.DEFINE_float('peak_tflops', None, 'Peak TFLOP/s per device for the MFU (default: the '
                     'dense bf16 peak of the device kind; n/a on CPU).')
  flags.DEFINE_string('out', None, 'Write the JSON here (default: stdout, table to stderr).')
  flags.DEFINE_bool('synthetic', False, 'Replace the dataset by synthetic data of the '
                    "config's image size and class count.")
  flags.DEFINE_integer('num_classes', None, 'With --synthetic: class count (default: the '
                       "config dataset's).")
  flags.DEFINE_integer('workers', None, 'grain worker processes for the pipeline parts '
                       '(default config.data.num_workers; -1 = from the core count).')
  flags.DEFINE_list('parts', list(DEFAULT_PARTS), f'Parts to run, from {PARTS}.')
  flags.DEFINE_list('memory_batches', [str(b) for b in MEMORY_BATCHES],
                    'Per-device batches of the memory part.')
  flags.DEFINE_list('memory_remat_policies', None, 'Remat policies of the memory part (besides '
                    'no remat), from models/vit.py REMAT_POLICIES; default the config\'s '
                    'model.remat_policy.')
  flags.DEFINE_string('memory_topology', None, 'Compile the memory part ahead of time for the '
                      "first chip of this TPU topology (e.g. 'v5e:2x2' for TPU v5e; needs "
                      "libtpu: pip install 'jax[tpu]>=0.10,<0.13') or for this NVIDIA GPU "
                      "('h100', 'h200'; needs the CUDA plugin: pip install "
                      "'jax[cuda13]>=0.10,<0.13') instead of this host's devices; no TPU or "
                      'GPU is needed.')
  flags.mark_flags_as_required(['config'])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if 'memory' in f.parts:  # before any JAX backend starts (see bench_parts)
    parts_lib.use_cpu_memory_schedule()
    if f.memory_topology and parts_lib.is_gpu_target(f.memory_topology):
      os.environ.setdefault(parts_lib.SKIP_CUDA_CHECK_ENV, '1')
  try:
    name = config_flags.get_config_filename(f['config'])
  except Exception:  # pylint: disable=broad-except
    name = ''
  try:
    record = run_benchmark(f.config, steps=f.steps, warmup=f.warmup, repeats=f.repeats,
                           peak_tflops=f.peak_tflops, synthetic=f.synthetic,
                           num_classes=f.num_classes, workers=f.workers, parts=f.parts,
                           config_name=name,
                           memory_batches=[int(b) for b in f.memory_batches],
                           memory_remat_policies=f.memory_remat_policies,
                           memory_topology=f.memory_topology)
  except ValueError as e:
    print(f'Invalid benchmark settings: {e}', file=sys.stderr)
    sys.exit(2)
  if jax.process_index() != 0:
    return
  text = json.dumps(record, indent=1)
  if f.out:
    print(format_table(record), flush=True)
    directory = os.path.dirname(f.out)
    if directory:
      os.makedirs(directory, exist_ok=True)
    with open(f.out, 'w') as fh:
      fh.write(text + '\n')
    print(f'JSON written to {f.out}')
  else:
    print(format_table(record), file=sys.stderr, flush=True)
    print(text)


if __name__ == '__main__':
  define_flags()
  app.run(main)
