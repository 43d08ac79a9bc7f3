"""The parts the benchmark (`ltdpt_jax.bench`) is built from: each measures one thing.

* `synthetic_stand_in(config)`: the config with its dataset replaced by synthetic data of the
  same image size, and the `DatasetInfo` of the real class count that `train.Setup(config,
  info=...)` builds the model, loss and steps from.
* `timed_rounds` / `rate`: rounds of n steps, each timed from the first dispatch to
  `jax.block_until_ready` of the last step's outputs; the median round is reported.
* `StepRunner`: the compiled train step applied to a stream of batches, keeping the donated state.
* `xla_flops_per_image`, `memory_analysis`, `device_memory`, `host`, `mfu`, `peak_tflops_for`:
  what XLA, the device and the host report.
* `pipeline_record` / `source_ms_per_image`: the input pipeline alone (grain iterator images/s
  per process and per worker; for the synthetic source what generating one image costs, for an
  image folder or list what decoding one file costs, to tell the source from the transforms).
* `abstract_train_step` / `memory_rows`: the train step of a config compiled for abstract
  arguments (nothing allocated, any per-device batch) and its `memory_analysis` with and without
  remat, for the memory report (`--parts=memory`).
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import jax
import numpy as np

from ltdpt_jax import data as data_lib
from ltdpt_jax import optim
from ltdpt_jax import sharding
from ltdpt_jax import train_step as step_lib
from ltdpt_jax.models import flops as flops_lib
from ltdpt_jax.models import ltdpt
from ltdpt_jax.models import vit as vit_lib
from ltdpt_jax.bench.report import NA
from ltdpt_jax.data import files as files_lib
from ltdpt_jax.data import synthetic as synthetic_lib
from ltdpt_jax.data import transforms

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


def resolve_peak(flag: float | None, device) -> tuple[float | None, str]:
  """(peak TFLOP/s per device, where it came from): the flag, else the table for accelerators;
  (None, 'n/a') for a CPU or an unknown part."""
  if flag:
    return float(flag), 'flag'
  peak = peak_tflops_for(device.device_kind) if device.platform != 'cpu' else None
  return peak, 'table' if peak else NA


# ---------------------------------------------------------------------------------------------
# The synthetic stand-in for a dataset.
# ---------------------------------------------------------------------------------------------

# Datasets whose images are all stored at one size (the stand-in generates that size, so the
# host work per image is the real dataset's: CIFAR's 32 px upsampled to data.image_size).
STORED_IMAGE_SIZE = {'cifar100_lt': 32}


def synthetic_stand_in(config, num_classes: int | None = None
                       ) -> tuple[Any, data_lib.DatasetInfo]:
  """(config, DatasetInfo) with config's dataset replaced by synthetic data.

  The returned config is a copy whose data section is `data.dataset = 'synthetic'`, generated
  at the real dataset's stored size where it has one (`STORED_IMAGE_SIZE`: CIFAR-100-LT's 32 px,
  cropped and upsampled to config.data.image_size as CIFAR is) or else at
  config.data.image_size (data.synthetic_image_size, where set, wins), with min(num_classes, 64) shape/colour classes (the synthetic
  generator's limit; its cost does not depend on the class count), for the input pipeline. The
  DatasetInfo, what the model, loss and steps are built from, has `num_classes` classes
  (default: the real dataset's, `data.NUM_CLASSES`, or config.data.num_classes for a synthetic
  config) with the exponential profile of config.data.{num_train_max, imbalance_ratio}
  (num_train_max raised to the ratio if smaller, so that no class is empty).
  """
  d = config.data
  if num_classes is None:
    if d.dataset == 'synthetic':
      num_classes = int(d.num_classes)
    elif d.dataset in data_lib.NUM_CLASSES:
      num_classes = data_lib.NUM_CLASSES[d.dataset]
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
  stand_in = copy.deepcopy(config)
  stand_in.data.dataset = 'synthetic'
  stand_in.data.num_classes = min(int(num_classes), synthetic_lib.MAX_CLASSES)
  stand_in.data.num_train_max = n_max
  if d.dataset in STORED_IMAGE_SIZE and not d.get('synthetic_image_size', 0):
    stand_in.data.synthetic_image_size = STORED_IMAGE_SIZE[d.dataset]
  generated = int(stand_in.data.get('synthetic_image_size', 0) or d.image_size)
  size = (f'{d.image_size}px' if generated == int(d.image_size) else
          f'{generated}px cropped to {d.image_size}px')
  info = data_lib.DatasetInfo(
      name=f'synthetic[{num_classes} classes, {size}]', num_classes=int(num_classes),
      class_counts=counts, num_train=int(counts.sum()),
      num_eval=int(num_classes) * int(d.num_test_per_class), image_size=int(d.image_size))
  return stand_in, info


# ---------------------------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------------------------

def random_batch(rows: int, size: int, num_classes: int, seed: int, *, eval_batch: bool,
                 stored_shape: tuple[int, ...] | None = None, crop_min_scale: float = 0.08
                 ) -> dict[str, np.ndarray]:
  """A host batch shaped and typed like the pipeline's (train: image/label/id; eval: +mask).
  `stored_shape` (H, W, 3): a training batch of config.data.crop_on_device, images of that
  shape plus 'crop' numbers drawn as the pipeline draws them (`transforms.train_crop`)."""
  rs = np.random.RandomState(seed)
  shape = (size, size, 3) if stored_shape is None else tuple(stored_shape)
  batch = {'image': rs.randint(0, 256, (rows, *shape), dtype=np.uint8),
           'label': rs.randint(0, num_classes, (rows,)).astype(np.int32)}
  if eval_batch:
    batch['mask'] = np.ones((rows,), np.bool_)
  else:
    batch['id'] = np.arange(rows, dtype=np.int64)
  if stored_shape is not None and not eval_batch:
    batch['crop'] = np.stack([
        transforms.train_crop(shape[0], shape[1], np.random.default_rng([seed, r]),
                              min_scale=crop_min_scale) for r in range(rows)])
  return batch


def timed_rounds(run_steps: Callable[[int], Any], steps: int, warmup: int,
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


def rate(images_per_step: int, steps: int, rounds: Sequence[float]) -> dict[str, Any]:
  """Median images/s over the rounds, the step time it implies, and every round's images/s."""
  per_round = [images_per_step * steps / t for t in rounds]
  median = statistics.median(per_round)
  return {'images_per_s': median, 'step_time_ms': 1e3 * images_per_step / median,
          'images_per_s_rounds': per_round}


def compile_step(jitted, *args, options: dict[str, Any] | None = None) -> tuple[Any, float]:
  """(compiled, seconds) of `jitted` for `args`."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile(compiler_options=options)
  return compiled, time.perf_counter() - t0


class StepRunner:
  """The compiled train step applied to batches, keeping the (donated) state between calls."""

  def __init__(self, compiled, state, frozen):
    self.compiled, self.state, self.frozen = compiled, state, frozen

  def run(self, n: int, batches: Iterator[Any]) -> tuple[Any, Any]:
    metrics = None
    for _ in range(n):
      self.state, metrics = self.compiled(self.state, self.frozen, next(batches))
    return self.state, metrics


# ---------------------------------------------------------------------------------------------
# What XLA, the device and the host report.
# ---------------------------------------------------------------------------------------------

def xla_flops_per_image(compiled, rows: int, num_devices: int) -> float | None:
  """XLA's FLOPs per image of a compiled step over `rows` global rows (None: unknown).

  `cost_analysis` counts the per-device program, so per image = count / per-device rows.
  """
  count = step_lib.compiled_flops(compiled) if compiled is not None else None
  return count / (rows / num_devices) if count else None


def memory_analysis(compiled) -> dict[str, Any] | str:
  """The compiled program's buffer sizes (`memory_analysis`), or 'n/a'."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return NA
  if m is None:
    return NA
  names = ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
           'temp_size_in_bytes', 'generated_code_size_in_bytes')
  return {n: int(getattr(m, n)) for n in names if hasattr(m, n)}


def device_memory() -> dict[str, Any]:
  """Allocator statistics of local device 0 ('n/a' where the backend has none, e.g. CPU)."""
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  stats = stats or {}
  return {k: int(stats[k]) if k in stats else NA
          for k in ('peak_bytes_in_use', 'bytes_in_use', 'bytes_limit')}


def host() -> dict[str, Any]:
  """CPU counts and load average: timings on a shared machine vary with the load."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  return {'cpus': os.cpu_count(), 'cpus_usable': cores, 'loadavg': list(os.getloadavg())}


def mfu(flops_per_image: float | None, images_per_s: float | None,
        peak_total: float | None) -> float | str:
  """Achieved FLOP/s over the peak of all devices, or 'n/a'."""
  if not flops_per_image or not images_per_s or not peak_total:
    return NA
  return flops_per_image * images_per_s / peak_total


# ---------------------------------------------------------------------------------------------
# The input pipeline.
# ---------------------------------------------------------------------------------------------

def source_ms_per_image(data, n: int = 50) -> float | None:
  """Milliseconds to read one training image of the config's source on one thread: generating
  it (synthetic) or decoding its file (image folders and lists: the JPEG/PNG decode a worker
  pays before the augmentation); None for tfds sources."""
  src = data_lib.get_sources(data).train
  if not isinstance(src, (synthetic_lib.SyntheticLT, files_lib.ImageFiles)):
    return None
  src[0]  # pylint: disable=pointless-statement  (the synthetic background pool, file caches)
  t0 = time.perf_counter()
  for i in range(n):
    src[(i * 7) % len(src)]  # pylint: disable=expression-not-assigned
  return (time.perf_counter() - t0) / n * 1e3


def pipeline_record(it, *, rows: int, steps: int, warmup: int, workers: int,
                    source: str, data) -> dict[str, Any]:
  """Images/s of this process's training iterator `it` alone (`rows` images per batch)."""

  def run_pipeline(n):
    host_batch = None
    for _ in range(n):
      host_batch = next(it)
    return host_batch['image']

  r = rate(rows, steps, timed_rounds(run_pipeline, steps, warmup, 1))
  r.pop('images_per_s_rounds')
  r.pop('step_time_ms')
  r.update(workers=workers, per='process', source=source,
           images_per_s_per_worker=r['images_per_s'] / max(workers, 1))
  ms = source_ms_per_image(data)
  if ms is not None:
    r['source_ms_per_image'] = ms
  return r


# ---------------------------------------------------------------------------------------------
# The memory report: the compiled step for abstract arguments, with and without remat.
# ---------------------------------------------------------------------------------------------

GIB = 2**30
# XLA:CPU's default scheduler orders the program for thread concurrency and so runs every
# rematerialised block's recomputation right after the forward pass, keeping them all live:
# remat then saves nothing on a CPU (measured: ViT-B/16 bf16 at batch 128 needs more with
# policy 'nothing' than without remat). The accelerators' schedulers are memory-aware (each
# recomputation just before its use), so the memory report's CPU programs use XLA:CPU's
# memory-minimising scheduler. XLA reads this flag from XLA_FLAGS only (not from per-compile
# options), before the backend starts: `use_cpu_memory_schedule` sets it from the CLI.
CPU_MEMORY_SCHEDULE_FLAG = '--xla_cpu_enable_concurrency_optimized_scheduler=false'


def use_cpu_memory_schedule() -> bool:
  """Adds CPU_MEMORY_SCHEDULE_FLAG to XLA_FLAGS if no JAX backend has started yet (it has no
  effect on GPU/TPU programs); returns whether the flag is in effect."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  flags = os.environ.get('XLA_FLAGS', '')
  if CPU_MEMORY_SCHEDULE_FLAG in flags:
    return True
  if xla_bridge.backends_are_initialized():
    return False
  os.environ['XLA_FLAGS'] = f'{flags} {CPU_MEMORY_SCHEDULE_FLAG}'.strip()
  return True


def cpu_memory_schedule_in_effect() -> bool:
  return CPU_MEMORY_SCHEDULE_FLAG in os.environ.get('XLA_FLAGS', '')


def abstract_train_step(config, info: data_lib.DatasetInfo, mesh) -> tuple[Any, tuple]:
  """(jitted train step, abstract (state, frozen, batch)) of `config` as `train.Setup` builds
  them (model, frozen partition in the compute dtype, optimiser, step), from shapes only:
  nothing is initialised or allocated, so a ViT-B/16 step at any batch compiles on a laptop.
  With the crop on the device (`data.crop_on_device(config.data)`) the batch is the stored
  images and their crop numbers, and the step crops them.
  tests/test_bench.py checks that it compiles to the same buffers as Setup's step."""
  size, batch = int(config.data.image_size), int(config.data.batch_size)
  model = ltdpt.build_model(config.model, info.num_classes, size)
  shapes = ltdpt.abstract_params(model, size)
  trainable, frozen = optim.split_params(
      shapes, optim.param_labels(shapes, tuple(config.optim.frozen_patterns)))
  frozen = ltdpt.cast_frozen(frozen, model)
  tx = optim.make_optimizer(config.optim, total_steps=1000, global_batch=batch,
                            seed=int(config.train.seed))
  state = jax.eval_shape(lambda t: step_lib.init_train_state(t, tx), trainable)
  step = step_lib.make_train_step(model, tx, loss_config=config.loss,
                                  seed=int(config.train.seed), class_counts=info.class_counts,
                                  drw_start_step=500, mesh=mesh, image_size=size)
  platform = mesh.devices.flat[0].platform  # auto resolves for the chip compiled for
  batch_shapes = data_lib.train_batch_shapes(
      config.data, crop=data_lib.crop_on_device(config.data, platform))
  batch_shapes.pop('id')  # the step does not take the example ids
  return step, (state, frozen, {k: jax.ShapeDtypeStruct((batch, *shape), dtype)
                                for k, (shape, dtype) in batch_shapes.items()})


TOPOLOGY_EXAMPLES = "'v5e:2x2' (TPU v5e), 'v6e:2x2', 'v4:2x2x1', 'v5p:2x2x1', 'h100', 'h200'"
# NVIDIA GPUs a memory report can be compiled for without one: name -> XLA GpuTargetConfig.
GPU_TARGETS = {'h100': 'h100.txtpb', 'h200': 'h200.txtpb'}
GPU_TARGET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gpu_targets')
# Set by the CLI before the backend starts, for a GPU target on a host without a GPU driver
# (the CUDA plugin's version checks load driver libraries; compiling needs none of them).
SKIP_CUDA_CHECK_ENV = 'JAX_SKIP_CUDA_CONSTRAINTS_CHECK'


def is_gpu_target(topology: str) -> bool:
  return topology.lower() in GPU_TARGETS


def topology_mesh(topology: str) -> jax.sharding.Mesh:
  """A one-device mesh for ahead-of-time compiles for a chip this host need not have: the
  first chip of the TPU topology `topology` (e.g. 'v5e:2x2'; `jax.experimental.topologies`
  with libtpu, `pip install "jax[tpu]>=0.10,<0.13"`), or the NVIDIA GPU of GPU_TARGETS
  ('h100', 'h200': XLA's deviceless GPU compile from the target config in
  bench/gpu_targets, with the CUDA plugin, `pip install "jax[cuda13]>=0.10,<0.13"`). The
  memory report is per device, and a data-parallel step on more chips adds only the all-reduce
  of the prompts' gradients. Raises ValueError naming what is missing."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  gpu = is_gpu_target(topology)
  try:
    if gpu:
      with open(os.path.join(GPU_TARGET_DIR, GPU_TARGETS[topology.lower()])) as f:
        desc = topologies.get_topology_desc(platform='cuda', target_config=f.read(),
                                            topology='1x1x1')
    else:
      desc = topologies.get_topology_desc(topology_name=topology, platform='tpu')
  except Exception as e:  # pylint: disable=broad-except  # plugin missing, unknown name, ...
    need = ("the CUDA plugin in this environment (pip install 'jax[cuda13]>=0.10,<0.13'; no "
            f'GPU is needed to compile; without a GPU driver set {SKIP_CUDA_CHECK_ENV}=1, '
            'which the bench CLI does)' if gpu else
            "libtpu in this environment (pip install 'jax[tpu]>=0.10,<0.13'; no TPU is needed "
            'to compile)')
    raise ValueError(
        f'--memory_topology={topology!r}: cannot describe that {"GPU" if gpu else "TPU"} '
        f'({type(e).__name__}: {e}). It needs {need} and a name such as '
        f'{TOPOLOGY_EXAMPLES}.') from e
  return jax.sharding.Mesh(np.asarray(desc.devices[:1]), ('data',))


def _total_bytes(m: dict[str, int]) -> int:
  """What the program holds at its peak by XLA's accounting: arguments + outputs - the outputs
  aliased to (donated) arguments + temporaries."""
  return (m['argument_size_in_bytes'] + m['output_size_in_bytes'] - m['alias_size_in_bytes']
          + m['temp_size_in_bytes'])


def memory_rows(config, info: data_lib.DatasetInfo, *, per_device_batches: Sequence[int],
                remat_policies: Sequence[str], options: dict[str, Any] | None = None,
                log: Callable[[str], None] | None = None,
                mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """The compiled train step's memory (`memory_analysis`) and XLA FLOPs for each per-device
  batch, without remat and with each policy of `remat_policies` (vit.REMAT_POLICIES).

  Rows: per_device_batch, remat_policy ('none' without remat), argument / output / alias /
  temp bytes, total_bytes (arguments + outputs - aliased + temporaries), bytes_per_image and
  temp_bytes_per_image (over the per-device batch), xla_flops_per_image, flops_over_no_remat
  (the FLOPs remat adds, from the compiled programs), flops_over_model (over the analytic
  train-step FLOPs, `flops.analytic_flops`), compile_s, and on a GPU cudnn_attention_calls
  (the compiled program's cuDNN fused-attention calls, forward and backward); or, where the
  compiler refuses the program for the device's memory (RESOURCE_EXHAUSTED: the TPU compiler
  does), does_not_fit (its message) and compile_s. Everything per device (the programs are
  compiled for `mesh`, default the mesh of every device, batch = per-device batch x devices).
  `mesh` may hold devices this process does not run on (`topology_mesh`: a TPU chip or a GPU
  compiled for ahead of time); the model is then traced for their platform
  (`vit.compiling_for`).
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  n_dev = mesh.size
  device = mesh.devices.flat[0]
  platform = device.platform
  memory_schedule = platform != 'cpu' or cpu_memory_schedule_in_effect()
  if log is not None and not memory_schedule:
    log('memory: XLA:CPU runs with its concurrency-optimised scheduler, under which remat saves '
        f'no memory; run the memory part alone from the CLI (or set XLA_FLAGS='
        f'{CPU_MEMORY_SCHEDULE_FLAG}) for the memory-minimising schedule.')
  model_flops = flops_lib.analytic_flops(
      ltdpt.build_model(config.model, info.num_classes, int(config.data.image_size)),
      int(config.data.image_size))['train']
  rows = []
  for per_device in per_device_batches:
    base_flops = None
    for policy in ('none', *remat_policies):
      c = copy.deepcopy(config)
      c.data.batch_size = int(per_device) * n_dev
      c.model.remat = policy != 'none'
      if policy != 'none':
        c.model.remat_policy = policy
      row = {'per_device_batch': int(per_device), 'remat_policy': policy}
      t0 = time.perf_counter()
      try:
        with vit_lib.compiling_for(platform):
          step, args = abstract_train_step(c, info, mesh)
          compiled, seconds = compile_step(step, *args, options=options)
      except RuntimeError as e:  # jax.errors.JaxRuntimeError is one
        if 'RESOURCE_EXHAUSTED' not in str(e):
          raise
        # An accelerator compiler refuses a program larger than the device's memory.
        row.update(does_not_fit=str(e).strip().splitlines()[0],
                   compile_s=time.perf_counter() - t0)
        rows.append(row)
        if log is not None:
          log(f'memory: per-device batch {per_device}, remat {policy}: does not fit '
              f'({row["does_not_fit"]})')
        continue
      m = memory_analysis(compiled)
      flops = step_lib.compiled_flops(compiled)
      if platform == 'gpu':  # which attention ran: cuDNN's fused kernels are custom calls
        row['cudnn_attention_calls'] = compiled.as_text().count('custom_call_target="__cudnn$fmha')
      if isinstance(m, dict):
        total = _total_bytes(m)
        row.update({k.replace('_size_in_bytes', '_bytes'): v for k, v in m.items()
                    if k != 'generated_code_size_in_bytes'})
        row.update(total_bytes=total, total_gib=total / GIB,
                   bytes_per_image=total / per_device,
                   temp_bytes_per_image=m['temp_size_in_bytes'] / per_device)
      row['xla_flops_per_image'] = flops / per_device if flops else NA
      if policy == 'none':
        base_flops = flops
      row['flops_over_no_remat'] = flops / base_flops if flops and base_flops else NA
      # Against the model's matmul FLOPs: an accelerator compiler may rematerialise on its
      # own to fit its memory, which the 'none' row then includes.
      row['flops_over_model'] = (flops / per_device / model_flops if flops and model_flops
                                 else NA)
      row['compile_s'] = seconds
      rows.append(row)
      if log is not None:
        log(f'memory: per-device batch {per_device}, remat {policy}: '
            + (f'{row["total_gib"]:.2f} GiB' if 'total_gib' in row else 'n/a')
            + f' ({seconds:.0f} s to compile)')
  return {
      'dtype': config.model.dtype, 'attention': config.model.attention,
      'image_size': int(config.data.image_size), 'num_devices': n_dev,
      'platform': platform, 'device_kind': device.device_kind,
      'memory_minimising_schedule': memory_schedule, 'rows': rows,
      'note': 'XLA memory_analysis of the train step compiled for the devices of the mesh '
              '(per device; this backend, or a TPU topology ahead of time; '
              'the frozen backbone in the compute dtype, state donated). A CPU compile '
              '(memory-minimising schedule) approximates the accelerator programs: other '
              'fusions, and XLA:CPU computes bf16 matmuls in float32, keeping float32 copies '
              'of the weights and of some activations that a TPU or GPU does not have',
  }
