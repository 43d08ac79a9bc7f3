r"""Throughput, FLOPs, MFU and memory of the LT-DPT train step, eval step and input pipeline.

  python -m ltdpt_jax.bench --config=configs/demo.py --steps=20 --out=bench.json
  python -m ltdpt_jax.bench --config=configs/cifar100_lt.py --synthetic \
      --config.model.checkpoint='' --config.model.dtype=bfloat16 --out=b16_bf16.json

Everything is built like training builds it (`train.Setup`: mesh, model, frozen backbone, state,
jitted steps), then measured one part at a time (`--parts`):

* train: the compiled train step alone on one device-resident batch (uniform random uint8
  images, random labels) fed again and again; `--warmup` untimed steps, then `--repeats` rounds of
  `--steps` steps, each round timed from the first dispatch to `jax.block_until_ready` of the
  last step's outputs (compilation excluded; the median round is reported).
* eval: the compiled eval step the same way, on an eval batch (`config.data.eval_batch_size`).
* pipeline: the config's grain training iterator alone (`make_train_iterator`, worker processes
  from `config.data.num_workers` or `--workers`), `--warmup` batches untimed, `--steps` timed.
* end_to_end: that same iterator through `train.prefetch_to_device` into the compiled train
  step, as the train loop runs it (without its periodic metric fetches), `--steps` timed.
* flops: XLA's FLOP counts of the compiled train step and forward (below). The analytic counts
  are always reported; the train step is compiled whenever train, end_to_end or flops runs.

FLOPs per image: XLA's count of the compiled train step and of a compiled forward (saliency +
normalisation + model, `train_step.forward`) via `cost_analysis` (XLA reports the per-device
program, so per image = count / per-device batch), and `analytic_flops`: the matmul FLOPs of the
model's actual token layout (see its docstring for what is counted). MFU = achieved FLOP/s /
(dense bf16 peak per chip x chips): `--peak_tflops`, else `PEAK_BF16_TFLOPS` by device kind
(perf-anchors.md section 2), else 'n/a' (CPU). Two MFUs: 'model' uses the analytic FLOPs (the
usual definition: recomputation and elementwise work do not count), 'xla' XLA's count.

Memory: `peak_bytes_in_use` of device 0 (memory_stats; 'n/a' where the backend has none, e.g.
CPU) after all parts ran, and the compiled train step's own sizes (`memory_analysis`).

`--synthetic` replaces the dataset by synthetic data of the config's image size: the model, the
loss and the steps get the real dataset's class count (`KNOWN_NUM_CLASSES`, or `--num_classes`)
with an exponential long-tailed profile; the pipeline generates `data.dataset='synthetic'` images
(at most `synthetic.MAX_CLASSES` = 64 shape/colour classes, enough to exercise it: its cost does
not depend on the class count). No network and no dataset files are needed with --synthetic and
`--config.model.checkpoint=''` (random frozen backbone).

A readable table goes to stdout (stderr when the JSON does) and the JSON to `--out` (or stdout).
The host's load average before and after is recorded: timings on a shared machine vary.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ltdpt_jax import config_lib
from ltdpt_jax import data as data_lib
from ltdpt_jax import optim
from ltdpt_jax import train as train_lib
from ltdpt_jax import train_step as step_lib
from ltdpt_jax.data import pipeline as pipeline_lib
from ltdpt_jax.data import synthetic as synthetic_lib
from ltdpt_jax.models import ltdpt
from ltdpt_jax.models import vit as vit_lib

PARTS = ('train', 'eval', 'pipeline', 'end_to_end', 'flops')
NA = 'n/a'

# Classes of each real dataset (what --synthetic gives the model when --num_classes is unset).
KNOWN_NUM_CLASSES = {'cifar100_lt': 100, 'imagenet_lt': 1000, 'places_lt': 365, 'inat2018': 8142}

# Dense bf16 peak TFLOP/s per chip (perf-anchors.md section 2), matched in order against the
# lower-cased jax `device_kind`; `None` = known not to be the listed part (pass --peak_tflops).
PEAK_BF16_TFLOPS: tuple[tuple[str, float | None], ...] = (
    ('h100 pcie', None),   # PCIe H100 is clocked lower than the SXM part listed below.
    ('h100 nvl', None),
    ('h200', 989.4),
    ('h100', 989.4),       # SXM
    ('a100', 312.0),
    ('tpu v6 lite', 918.0),
    ('tpu v6e', 918.0),
    ('tpu v5 lite', 197.0),
    ('tpu v5e', 197.0),
    ('tpu v5p', 459.0),
    ('tpu v5', 459.0),     # jax calls v5p 'TPU v5'
    ('tpu v4', 275.0),
)


def peak_tflops_for(device_kind: str) -> float | None:
  """Dense bf16 peak TFLOP/s of one chip of `device_kind` from PEAK_BF16_TFLOPS (None: unknown)."""
  kind = device_kind.lower()
  for needle, peak in PEAK_BF16_TFLOPS:
    if needle in kind:
      return peak
  return None


# ---------------------------------------------------------------------------------------------
# Analytic FLOPs.
# ---------------------------------------------------------------------------------------------

def analytic_flops(config, num_classes: int) -> dict[str, Any]:
  """Matmul FLOPs per image of the LT-DPT forward and train step (1 MAC = 2 FLOPs).

  Counted: the patch embedding (m * p^2 * 3 * D MACs), and per block l with Nq query rows and
  Nk key/value rows: Q and out projections 2 * Nq * D^2, K and V projections 2 * Nk * D^2,
  Q K^T and P V 2 * Nq * Nk * D, MLP 2 * Nq * D * mlp; plus the cosine head (D * C) and the
  BR prompt construction (G * H * n_b * D). Nk = 1 + m + prompts of block l (n_f, plus n_b in
  the last H blocks for 'fr_br'); Nq follows `LTDPT`'s layout: all Nk rows without
  `skip_dead_prompt_work`; else CLS + patches (all rows under prompt_mode 'carry') in blocks
  before the last, and CLS (+ the prompts for feature 'cls_prompt_mean') in the last block.
  Not counted: LayerNorm, softmax, GELU, residual adds, biases, the saliency FFT, the loss.

  'train' = forward + activation-only backward (the backbone is frozen): each weight matmul
  once more (dX only), the attention matmuls twice (both operands), head and BR construction
  twice; the patch embedding has no backward (images get no gradient). This is perf-anchors.md
  section 1's convention (about 2.04 x forward for ViT-B/16) and the 'model FLOPs' of the MFU.

  'dense_forward' is perf-anchors' plain formula for comparison: every token (CLS, patches, all
  prompts of the block) through every block, per block (8 D^2 + 4 D mlp) N + 4 N^2 D FLOPs
  (= 24 N D^2 + 4 N^2 D for mlp = 4 D), plus the patch embedding.
  """
  model = ltdpt.build_model(config, num_classes)
  arch = vit_lib.arch_from_config(config)
  ph, pw = arch.patch_size
  size = int(config.data.image_size)
  m = (size // ph) * (size // pw)
  d, mlp, layers = arch.hidden_size, arch.mlp_dim, arch.num_layers
  n_img = 1 + m
  b0 = model.first_br_block
  carry = model.prompt_mode == 'carry'
  embed = m * ph * pw * 3 * d
  weight_macs = attn_macs = 0
  dense = 0
  tokens = []
  for l in range(layers):
    prompts = model.num_fr_prompts + (model.num_br_prompts if l >= b0 else 0)
    nk = n_img + prompts
    if not model.skip_dead_prompt_work:
      nq = nk
    elif l == layers - 1:
      nq = 1 + (prompts if model.feature == 'cls_prompt_mean' else 0)
    else:
      nq = nk if carry else n_img
    tokens.append((nq, nk))
    weight_macs += d * d * (2 * nq + 2 * nk) + 2 * nq * d * mlp
    attn_macs += 2 * nq * nk * d
    dense += 2 * ((4 * d * d + 2 * d * mlp) * nk + 2 * nk * nk * d)
  other = d * int(num_classes)
  if model.method == 'fr_br':
    other += model.num_groups * (layers - b0) * model.num_br_prompts * d
  forward = 2 * (embed + weight_macs + attn_macs + other)
  backward = 2 * (weight_macs + 2 * attn_macs + 2 * other)
  return {
      'forward': float(forward),
      'train': float(forward + backward),
      'dense_forward': float(2 * embed + dense),
      'attention_share_of_forward': float(2 * attn_macs / forward),
      'tokens_per_block_q_k': tokens,
      'counted': 'matmul FLOPs (2 per MAC) of patch embedding, QKV/out projections, QK^T, PV, '
                 'MLP, cosine head and BR prompt construction with the actual query/key rows '
                 'per block; train = forward + activation-only backward (no backbone weight '
                 'gradients, no patch-embedding backward); elementwise ops, saliency FFT and '
                 'loss not counted',
  }


# ---------------------------------------------------------------------------------------------
# Synthetic stand-in for the dataset.
# ---------------------------------------------------------------------------------------------

def synthetic_data(config, num_classes: int | None = None
                   ) -> tuple[Any, data_lib.DatasetInfo]:
  """(pipeline config, DatasetInfo) replacing config's dataset by synthetic data.

  The DatasetInfo (what the model, loss and steps are built from) has `num_classes` classes
  (default: the real dataset's, `KNOWN_NUM_CLASSES`, or config.data.num_classes for a synthetic
  config) with the exponential profile of config.data.{num_train_max, imbalance_ratio}
  (num_train_max raised to the ratio if smaller, so that no class is empty). The
  returned config has data.dataset = 'synthetic' at config.data.image_size with
  min(num_classes, 64) classes (the synthetic generator's limit), for the grain pipeline.
  """
  d = config.data
  if num_classes is None:
    if d.dataset == 'synthetic':
      num_classes = int(d.num_classes)
    elif d.dataset in KNOWN_NUM_CLASSES:
      num_classes = KNOWN_NUM_CLASSES[d.dataset]
    else:
      raise ValueError(f'Unknown class count of config.data.dataset={d.dataset!r}; pass '
                       '--num_classes.')
  if num_classes < 2:
    raise ValueError(f'--num_classes={num_classes} must be >= 2.')
  # At least one image in the rarest class (n_max >= ratio), for the model's GCL and the
  # synthetic generator alike.
  n_max = max(int(d.num_train_max), int(np.ceil(float(d.imbalance_ratio))))
  counts = data_lib.exponential_counts(float(n_max), float(d.imbalance_ratio),
                                       int(num_classes))
  if counts.sum() < d.batch_size:
    raise ValueError(f'The synthetic profile has {counts.sum()} training images, fewer than '
                     f'config.data.batch_size={d.batch_size}; raise config.data.num_train_max.')
  pipe = copy.deepcopy(config)
  pipe.data.dataset = 'synthetic'
  pipe.data.num_classes = min(int(num_classes), synthetic_lib.MAX_CLASSES)
  pipe.data.num_train_max = n_max
  info = data_lib.DatasetInfo(
      name=f'synthetic[{num_classes} classes, {d.image_size}px]', num_classes=int(num_classes),
      class_counts=counts, num_train=int(counts.sum()),
      num_eval=int(num_classes) * int(d.num_test_per_class), image_size=int(d.image_size))
  return pipe, info


@contextlib.contextmanager
def _dataset_info(info: data_lib.DatasetInfo | None):
  """Makes `train.Setup` see `info` instead of reading the dataset (None: unchanged).

  Setup reads `train.data_lib.get_dataset_info(config)`; a `Setup(config, info=...)` argument
  would make this unnecessary.
  """
  if info is None:
    yield
    return
  module = train_lib.data_lib
  original = module.get_dataset_info
  module.get_dataset_info = lambda config: info
  try:
    yield
  finally:
    module.get_dataset_info = original


# ---------------------------------------------------------------------------------------------
# Measurements.
# ---------------------------------------------------------------------------------------------

def _random_batch(rows: int, size: int, num_classes: int, seed: int, *, eval_batch: bool
                  ) -> dict[str, np.ndarray]:
  """A host batch shaped and typed like the pipeline's (train: image/label/id; eval: +mask)."""
  rs = np.random.RandomState(seed)
  batch = {'image': rs.randint(0, 256, (rows, size, size, 3), dtype=np.uint8),
           'label': rs.randint(0, num_classes, (rows,)).astype(np.int32)}
  if eval_batch:
    batch['mask'] = np.ones((rows,), np.bool_)
  else:
    batch['id'] = np.arange(rows, dtype=np.int64)
  return batch


def _timed_rounds(run_steps: Callable[[int], Any], steps: int, warmup: int,
                  repeats: int) -> list[float]:
  """Seconds of each of `repeats` rounds of `run_steps(steps)` after `run_steps(warmup)`."""
  if warmup:
    jax.block_until_ready(run_steps(warmup))
  rounds = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(run_steps(steps))
    rounds.append(time.perf_counter() - t0)
  return rounds


def _rate(images_per_step: int, steps: int, rounds: Sequence[float]) -> dict[str, Any]:
  per_round = [images_per_step * steps / t for t in rounds]
  median = statistics.median(per_round)
  return {'images_per_s': median, 'step_time_ms': 1e3 * images_per_step / median,
          'images_per_s_rounds': per_round}


def _compile(jitted, *args, options: dict[str, Any] | None = None) -> tuple[Any, float]:
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile(compiler_options=options)
  return compiled, time.perf_counter() - t0


def _memory_analysis(compiled) -> dict[str, Any] | str:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return NA
  if m is None:
    return NA
  names = ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
           'temp_size_in_bytes', 'generated_code_size_in_bytes')
  return {n: int(getattr(m, n)) for n in names if hasattr(m, n)}


def _device_memory() -> dict[str, Any]:
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  stats = stats or {}
  return {k: int(stats[k]) if k in stats else NA
          for k in ('peak_bytes_in_use', 'bytes_in_use', 'bytes_limit')}


def _host() -> dict[str, Any]:
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  return {'cpus': os.cpu_count(), 'cpus_usable': cores, 'loadavg': list(os.getloadavg())}


def _mfu(flops_per_image: float | None, images_per_s: float | None,
         peak_total: float | None) -> float | str:
  if not flops_per_image or not images_per_s or not peak_total:
    return NA
  return flops_per_image * images_per_s / peak_total


def run_benchmark(config, *, steps: int = 20, warmup: int = 3, repeats: int = 3,
                  peak_tflops: float | None = None, synthetic: bool = False,
                  num_classes: int | None = None, workers: int | None = None,
                  parts: Sequence[str] = PARTS, config_name: str = '',
                  compiler_options: dict[str, Any] | None = None) -> dict[str, Any]:
  """Runs the benchmark parts `parts` (subset of PARTS) for `config`; returns the JSON record.

  Compiles only what the parts need: the train step for train / end_to_end / flops, the eval
  step for eval, the forward for flops (XLA counts of uncompiled steps are 'n/a'; the analytic
  counts are always there). `compiler_options` go to every `.compile()` (the tests pass a low
  XLA CPU optimisation level: faster compiles, the same FLOP counts). Raises ValueError for
  unknown parts, bad counts or an invalid config.
  """
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    raise ValueError(f'Unknown benchmark parts {unknown}; choose from {PARTS}.')
  if steps < 1 or warmup < 0 or repeats < 1:
    raise ValueError(f'Need steps >= 1, warmup >= 0, repeats >= 1; got {steps}, {warmup}, '
                     f'{repeats}.')
  config = copy.deepcopy(config)
  if workers is not None:
    config.data.num_workers = int(workers)
  config_lib.validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  host_before = _host()

  info = None
  pipe_config = config
  if synthetic:
    pipe_config, info = synthetic_data(config, num_classes)
  elif num_classes is not None:
    raise ValueError('--num_classes only applies with --synthetic.')

  t0 = time.perf_counter()
  with _dataset_info(info):
    setup = train_lib.Setup(config)
  setup_s = time.perf_counter() - t0
  n_classes = setup.num_classes
  n_dev, n_proc = jax.device_count(), jax.process_count()
  size = int(config.data.image_size)
  batch, eval_batch = int(config.data.batch_size), int(config.data.eval_batch_size)
  device = jax.devices()[0]
  logging.info('Benchmark: %d device(s) [%s], %d process(es); %s; batch %d, eval batch %d.',
               n_dev, device.device_kind, n_proc, setup.info.name, batch, eval_batch)

  seed = 1234 + jax.process_index()
  train_batch = train_lib.to_global(
      _random_batch(batch // n_proc, size, n_classes, seed, eval_batch=False),
      setup.batch_sharding)
  eval_host = _random_batch(eval_batch // n_proc, size, n_classes, seed + 1, eval_batch=True)
  eval_dev = train_lib.to_global(eval_host, setup.batch_sharding)

  # --- Compile what the parts need: train step, eval step, forward (FLOPs only) -------------
  state, frozen = setup.state, setup.frozen
  model = setup.model
  train_c = eval_c = fwd_c = None
  compile_s: dict[str, float | str] = {'train': NA, 'eval': NA, 'forward': NA}
  if {'train', 'end_to_end', 'flops'} & set(parts):
    train_c, compile_s['train'] = _compile(setup.train_step, state, frozen, train_batch,
                                           options=compiler_options)
  if 'eval' in parts:
    eval_c, compile_s['eval'] = _compile(setup.eval_step, state.params, frozen, eval_dev,
                                         options=compiler_options)
  if 'flops' in parts:
    def fwd(trainable, frozen_params, images):
      params = optim.merge_params(trainable, frozen_params)
      return step_lib.forward(model, params, images, train=False)['logits']

    fwd_jit = jax.jit(fwd, in_shardings=(setup.replicated, setup.replicated,
                                         setup.batch_sharding))
    fwd_c, compile_s['forward'] = _compile(fwd_jit, state.params, frozen, train_batch['image'],
                                           options=compiler_options)

  def xla_flops(compiled, rows):
    """XLA's FLOPs per image of a compiled step over `rows` global rows (None: unknown)."""
    count = step_lib.compiled_flops(compiled) if compiled is not None else None
    return count / (rows / n_dev) if count else None

  step_flops = xla_flops(train_c, batch)
  fwd_flops = xla_flops(fwd_c, batch)
  eval_flops = xla_flops(eval_c, eval_batch)
  analytic = analytic_flops(config, n_classes)
  na = lambda x: NA if x is None else x  # pylint: disable=unnecessary-lambda-assignment
  flops = {
      'train_step_xla_per_image': na(step_flops),
      'forward_xla_per_image': na(fwd_flops),
      'eval_step_xla_per_image': na(eval_flops),
      'step_over_forward_xla': step_flops / fwd_flops if step_flops and fwd_flops else NA,
      'analytic_forward_per_image': analytic['forward'],
      'analytic_train_per_image': analytic['train'],
      'analytic_dense_vit_forward_per_image': analytic['dense_forward'],
      'analytic_over_xla_forward': analytic['forward'] / fwd_flops if fwd_flops else NA,
      'analytic_attention_share': analytic['attention_share_of_forward'],
      'analytic_tokens_per_block_q_k': analytic['tokens_per_block_q_k'],
      'analytic_counts': analytic['counted'],
      'xla_note': 'XLA cost_analysis of the per-device program / per-device batch; counts '
                  'elementwise ops and the saliency FFT too',
  }

  peak_source = 'flag' if peak_tflops else 'table'
  if not peak_tflops:
    peak_tflops = peak_tflops_for(device.device_kind) if device.platform != 'cpu' else None
  peak_total = peak_tflops * 1e12 * n_dev if peak_tflops else None

  results: dict[str, Any] = {}

  # --- Train step alone --------------------------------------------------------------------
  holder = {'state': state}

  def run_train(n):
    s, metrics = holder['state'], None
    for _ in range(n):
      s, metrics = train_c(s, frozen, train_batch)
    holder['state'] = s
    return s, metrics

  if 'train' in parts:
    rounds = _timed_rounds(run_train, steps, warmup, repeats)
    r = _rate(batch, steps, rounds)
    ips = r['images_per_s']
    r.update(images_per_s_per_device=ips / n_dev,
             achieved_tflops_xla=step_flops * ips / 1e12 if step_flops else NA,
             achieved_tflops_model=analytic['train'] * ips / 1e12,
             mfu_model=_mfu(analytic['train'], ips, peak_total),
             mfu_xla=_mfu(step_flops, ips, peak_total))
    results['train_step'] = r

  # --- Eval step alone ---------------------------------------------------------------------
  if 'eval' in parts:
    params = holder['state'].params

    def run_eval(n):
      out = None
      for _ in range(n):
        out = eval_c(params, frozen, eval_dev)
      return out

    rounds = _timed_rounds(run_eval, steps, warmup, repeats)
    r = _rate(eval_batch, steps, rounds)
    ips = r['images_per_s']
    r.update(images_per_s_per_device=ips / n_dev,
             achieved_tflops_model=analytic['forward'] * ips / 1e12,
             mfu_model=_mfu(analytic['forward'], ips, peak_total))
    results['eval_step'] = r

  # --- Input pipeline alone, then end to end on the same iterator ---------------------------
  if 'pipeline' in parts or 'end_to_end' in parts:
    workers_used = pipeline_lib.num_workers(int(pipe_config.data.num_workers))
    it = data_lib.make_train_iterator(pipe_config)
    try:
      if 'pipeline' in parts:
        def run_pipeline(n):
          for _ in range(n):
            host_batch = next(it)
          return host_batch['image']

        rounds = _timed_rounds(run_pipeline, steps, warmup, 1)
        r = _rate(batch // n_proc, steps, rounds)
        r.pop('images_per_s_rounds')
        r.pop('step_time_ms')
        r.update(workers=workers_used, per='process',
                 source=('synthetic images generated on the fly' if synthetic or
                         pipe_config.data.dataset == 'synthetic' else pipe_config.data.dataset))
        results['input_pipeline'] = r
      if 'end_to_end' in parts:
        stream = train_lib.prefetch_to_device(it, setup.batch_sharding)

        def run_e2e(n):
          s, metrics = holder['state'], None
          for _ in range(n):
            dev_batch, _ = next(stream)
            s, metrics = train_c(s, frozen, dev_batch)
          holder['state'] = s
          return s, metrics

        rounds = _timed_rounds(run_e2e, steps, warmup, 1)
        r = _rate(batch, steps, rounds)
        r.pop('images_per_s_rounds')
        ips = r['images_per_s']
        r.update(workers=workers_used, images_per_s_per_device=ips / n_dev,
                 mfu_model=_mfu(analytic['train'], ips, peak_total))
        if 'train_step' in results and 'input_pipeline' in results:
          pipe_ips = results['input_pipeline']['images_per_s'] * n_proc
          r['bottleneck'] = ('input pipeline' if pipe_ips < results['train_step']['images_per_s']
                             else 'device step')
        results['end_to_end'] = r
    finally:
      it.close()

  jax.block_until_ready(holder['state'])
  record = {
      'config': {
          'file': config_name, 'dataset': setup.info.name, 'synthetic': bool(synthetic),
          'backbone': vit_lib.arch_from_config(config).describe(),
          'method': config.model.method, 'dtype': config.model.dtype,
          'num_fr_prompts': int(config.model.num_fr_prompts),
          'num_br_prompts': int(config.model.num_br_prompts),
          'num_br_blocks': int(config.model.num_br_blocks),
          'image_size': size, 'batch_size': batch, 'eval_batch_size': eval_batch,
          'num_classes': n_classes, 'checkpoint': config.model.checkpoint,
      },
      'device': {
          'platform': device.platform, 'device_kind': device.device_kind,
          'num_devices': n_dev, 'num_processes': n_proc, 'jax': jax.__version__,
          'peak_tflops_per_device': peak_tflops if peak_tflops else NA,
          'peak_source': (peak_source if peak_tflops else NA),
          'peak_note': 'dense bf16 peak (perf-anchors.md section 2), also for float32 runs',
      },
      'host': {'before': host_before, 'after': _host()},
      'timing': {'steps': steps, 'warmup': warmup, 'repeats': repeats, 'setup_s': setup_s,
                 'compile_s': compile_s},
      **results,
      'flops': flops,
      'memory': {**_device_memory(),
                 'train_step_compiled': _memory_analysis(train_c) if train_c else NA,
                 'eval_step_compiled': _memory_analysis(eval_c) if eval_c else NA},
  }
  return record


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------

def _si(x, unit: str = '') -> str:
  if not isinstance(x, (int, float)):
    return str(x)
  for factor, prefix in ((1e15, 'P'), (1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(x) >= factor:
      return f'{x / factor:.3g} {prefix}{unit}'
  return f'{x:.3g} {unit}'.rstrip()


def _num(x, fmt: str) -> str:
  """Formats a number; '' for None, the value itself otherwise (e.g. 'n/a')."""
  if x is None:
    return ''
  return format(x, fmt) if isinstance(x, (int, float)) else str(x)


def _pct(x) -> str:
  return f'{100 * x:.1f}%' if isinstance(x, (int, float)) else str(x)


def _mib(x) -> str:
  return f'{x / 2**20:,.1f} MiB' if isinstance(x, (int, float)) else str(x)


def format_table(record: dict[str, Any]) -> str:
  """A human-readable summary of a `run_benchmark` record."""
  c, dv, h, f = record['config'], record['device'], record['host'], record['flops']
  lines = [
      f"LT-DPT benchmark {c['file']}: {c['backbone']}, {c['method']}, {c['dtype']}, "
      f"{c['image_size']}px, batch {c['batch_size']} (eval {c['eval_batch_size']}), "
      f"{c['num_classes']} classes, data {c['dataset']}",
      f"device: {dv['num_devices']} x {dv['device_kind']} ({dv['platform']}, "
      f"{dv['num_processes']} process(es), jax {dv['jax']}), peak "
      f"{dv['peak_tflops_per_device']} TFLOP/s/device ({dv['peak_source']})",
      f"host: {h['before']['cpus_usable']} usable CPUs, load average (1/5/15 min) before "
      + '/'.join(f'{x:.2f}' for x in h['before']['loadavg']) + ', after '
      + '/'.join(f'{x:.2f}' for x in h['after']['loadavg']),
      '',
      f"{'part':<24}{'images/s':>12}{'img/s/dev':>12}{'ms/step':>10}{'TFLOP/s':>10}"
      f"{'MFU':>8}{'MFU xla':>9}",
  ]
  rows = (('train step', 'train_step', 'achieved_tflops_model'),
          ('eval step', 'eval_step', 'achieved_tflops_model'),
          ('input pipeline', 'input_pipeline', None),
          ('end to end', 'end_to_end', None))
  for label, key, tkey in rows:
    r = record.get(key)
    if r is None:
      continue
    if 'workers' in r:
      label = f"{label} (w={r['workers']})"
    lines.append(f"{label:<24}{_num(r.get('images_per_s'), ',.1f'):>12}"
                 f"{_num(r.get('images_per_s_per_device'), ',.1f'):>12}"
                 f"{_num(r.get('step_time_ms'), '.2f'):>10}"
                 f"{_num(r.get(tkey) if tkey else None, '.4g'):>10}"
                 f"{_pct(r['mfu_model']) if 'mfu_model' in r else '':>8}"
                 f"{_pct(r['mfu_xla']) if 'mfu_xla' in r else '':>9}")
  if 'end_to_end' in record and 'bottleneck' in record['end_to_end']:
    lines.append(f"end to end bound by: {record['end_to_end']['bottleneck']}")
  ratio = f['step_over_forward_xla']
  lines += [
      '',
      'FLOPs per image: train step (XLA) ' + _si(f['train_step_xla_per_image'], 'FLOP')
      + ', forward (XLA) ' + _si(f['forward_xla_per_image'], 'FLOP') + ', step/forward '
      + (f'{ratio:.2f}' if isinstance(ratio, float) else ratio),
      'analytic (matmuls, actual token layout): forward ' + _si(f['analytic_forward_per_image'],
                                                                'FLOP')
      + ' (' + (f"{f['analytic_over_xla_forward']:.2f}"
                if isinstance(f['analytic_over_xla_forward'], float) else NA)
      + ' x XLA forward), train ' + _si(f['analytic_train_per_image'], 'FLOP')
      + '; dense ViT formula (all tokens every block) ' + _si(
          f['analytic_dense_vit_forward_per_image'], 'FLOP'),
  ]
  mem = record['memory']
  tc = mem['train_step_compiled']
  lines.append(
      f"memory: peak in use {_mib(mem['peak_bytes_in_use'])} (limit {_mib(mem['bytes_limit'])});"
      + (f" train step compiled: arguments {_mib(tc.get('argument_size_in_bytes'))}, temp "
         f"{_mib(tc.get('temp_size_in_bytes'))}, output {_mib(tc.get('output_size_in_bytes'))}"
         if isinstance(tc, dict) else ''))
  tm = record['timing']
  cs = tm['compile_s']
  lines.append(f"compile: train {_num(cs['train'], '.1f')} s, eval {_num(cs['eval'], '.1f')} s, "
               f"forward {_num(cs['forward'], '.1f')} s; setup {tm['setup_s']:.1f} s; "
               f"{tm['steps']} timed steps x {tm['repeats']} rounds after {tm['warmup']} warm-up")
  return '\n'.join(lines)


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
  flags.DEFINE_list('parts', list(PARTS), f'Parts to run, from {PARTS}.')
  flags.mark_flags_as_required(['config'])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  try:
    name = config_flags.get_config_filename(f['config'])
  except Exception:  # pylint: disable=broad-except
    name = ''
  try:
    record = run_benchmark(f.config, steps=f.steps, warmup=f.warmup, repeats=f.repeats,
                           peak_tflops=f.peak_tflops, synthetic=f.synthetic,
                           num_classes=f.num_classes, workers=f.workers, parts=f.parts,
                           config_name=name)
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
