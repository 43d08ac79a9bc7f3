"""The memory report (`--parts=memory`): the train step compiled for abstract arguments, with and
without remat, at several per-device batches.

* `memory_rows`: the report; `abstract_train_step`: the step from shapes only.
* `topology_mesh`: a mesh of a TPU chip or NVIDIA GPU (GPU_TARGETS) this host need not have.
* `use_cpu_memory_schedule`, `prepare_process`: XLA:CPU's memory-minimising scheduler.
* `settings`, `report`: the `--memory_*` flags checked, and the report of a benchmark run.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from absl import logging

from ltdpt_jax import data as data_lib
from ltdpt_jax import models
from ltdpt_jax import optim
from ltdpt_jax import sharding
from ltdpt_jax import train_step as step_lib
from ltdpt_jax.bench import programs
from ltdpt_jax.bench import record
from ltdpt_jax.bench.report import NA
from ltdpt_jax.models import flops as flops_lib
from ltdpt_jax.models import ltdpt
from ltdpt_jax.models import vit as vit_lib

BATCHES = (128, 512)  # the default per-device batches (--memory_batches)
GIB = 2**30

# ---------------------------------------------------------------------------------------------
# XLA:CPU's scheduler and the compile targets.
# ---------------------------------------------------------------------------------------------

# XLA:CPU's default scheduler orders the program for thread concurrency and so runs every
# rematerialised block's recomputation right after the forward pass, keeping them all live:
# remat then saves nothing on a CPU (with policy 'nothing' the ViT-B/16 bf16 step at batch 128
# even needs more than without remat). The accelerators' schedulers are memory-aware (each
# recomputation just before its use), so the report's CPU programs use XLA:CPU's
# memory-minimising scheduler. XLA reads this flag from XLA_FLAGS only (not from per-compile
# options), before the backend starts.
CPU_MEMORY_SCHEDULE_FLAG = '--xla_cpu_enable_concurrency_optimized_scheduler=false'

TOPOLOGY_EXAMPLES = "'v5e:2x2' (TPU v5e), 'v6e:2x2', 'v4:2x2x1', 'v5p:2x2x1', 'h100', 'h200'"
# NVIDIA GPUs a memory report can be compiled for without one: name -> XLA GpuTargetConfig.
GPU_TARGETS = {'h100': 'h100.txtpb', 'h200': 'h200.txtpb'}
GPU_TARGET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gpu_targets')
# Set before the backend starts, for a GPU target on a host without a GPU driver (the CUDA
# plugin's version checks load driver libraries; compiling needs none of them).
SKIP_CUDA_CHECK_ENV = 'JAX_SKIP_CUDA_CONSTRAINTS_CHECK'


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


def prepare_process(topology: str | None) -> None:
  """What a process running the memory part sets before any JAX backend starts: XLA:CPU's
  memory-minimising schedule (which also applies to the run's other parts: time them in a run
  of their own), and for a GPU `topology` the skipped CUDA driver checks."""
  use_cpu_memory_schedule()
  if topology and is_gpu_target(topology):
    os.environ.setdefault(SKIP_CUDA_CHECK_ENV, '1')


def is_gpu_target(topology: str) -> bool:
  return topology.lower() in GPU_TARGETS


def topology_mesh(topology: str) -> jax.sharding.Mesh:
  """A one-device mesh for ahead-of-time compiles for a chip this host need not have: the
  first chip of the TPU topology `topology` (e.g. 'v5e:2x2'; `jax.experimental.topologies`
  with libtpu), or the NVIDIA GPU of GPU_TARGETS ('h100', 'h200': XLA's deviceless GPU compile
  from the target config in gpu_targets/, with the CUDA plugin). The memory report is per
  device, and a data-parallel step on more chips adds only the all-reduce of the prompts'
  gradients. Raises ValueError naming what is missing."""
  try:
    desc = _topology_desc(topology)
  except Exception as e:  # pylint: disable=broad-except  # plugin missing, unknown name, ...
    gpu = is_gpu_target(topology)
    raise ValueError(
        f'--memory_topology={topology!r}: cannot describe that {"GPU" if gpu else "TPU"} '
        f'({type(e).__name__}: {e}). It needs {_what_to_install(gpu)} and a name such as '
        f'{TOPOLOGY_EXAMPLES}.') from e
  return jax.sharding.Mesh(np.asarray(desc.devices[:1]), ('data',))


def _topology_desc(topology: str):
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  if not is_gpu_target(topology):
    return topologies.get_topology_desc(topology_name=topology, platform='tpu')
  with open(os.path.join(GPU_TARGET_DIR, GPU_TARGETS[topology.lower()])) as f:
    return topologies.get_topology_desc(platform='cuda', target_config=f.read(),
                                        topology='1x1x1')


def _what_to_install(gpu: bool) -> str:
  if gpu:
    return ("the CUDA plugin in this environment (pip install 'jax[cuda13]>=0.10,<0.13'; no "
            f'GPU is needed to compile; without a GPU driver set {SKIP_CUDA_CHECK_ENV}=1, '
            'which the bench CLI does)')
  return ("libtpu in this environment (pip install 'jax[tpu]>=0.10,<0.13'; no TPU is needed "
          'to compile)')


# ---------------------------------------------------------------------------------------------
# The benchmark's memory part.
# ---------------------------------------------------------------------------------------------

class Settings(NamedTuple):
  """The memory part's per-device batches, remat policies and mesh (None: this host's)."""
  batches: list[int]
  remat_policies: list[str]
  mesh: jax.sharding.Mesh | None


def settings(config, parts: Sequence[str], batches: Sequence[int],
             remat_policies: Sequence[str] | None, topology: str | None) -> Settings:
  """The `--memory_*` settings checked (ValueError); the policies default to the config's
  model.remat_policy, and `topology` ('v5e:2x2', 'h200', ...) gives the mesh."""
  if remat_policies is None:
    remat_policies = (config.model.get('remat_policy', 'dots_with_no_batch_dims'),)
  bad = sorted(set(remat_policies) - set(vit_lib.REMAT_POLICIES))
  if bad or not batches or min(int(b) for b in batches) < 1:
    raise ValueError(f'Need --memory_batches >= 1 and --memory_remat_policies from '
                     f'{tuple(vit_lib.REMAT_POLICIES)}; got {list(batches)}, {bad}.')
  if topology and 'memory' not in parts:
    raise ValueError('--memory_topology applies to the memory part: add memory to --parts.')
  return Settings([int(b) for b in batches], list(remat_policies),
                  topology_mesh(topology) if topology else None)


def report(config, info: data_lib.DatasetInfo, s: Settings,
           options: dict[str, Any] | None) -> dict[str, Any]:
  """`memory_rows` of `config` with the settings `s`, each row logged."""
  return memory_rows(config, info, per_device_batches=s.batches,
                     remat_policies=s.remat_policies, options=options,
                     log=lambda line: logging.info('%s', line), mesh=s.mesh)


# ---------------------------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------------------------

def abstract_train_step(config, info: data_lib.DatasetInfo, mesh) -> tuple[Any, tuple]:
  """(jitted train step, abstract (state, frozen, batch)) of `config` as `train.Setup` builds
  them (model, frozen partition in the compute dtype, optimiser, step), from shapes only:
  nothing is initialised or allocated, so a ViT-B/16 step at any batch compiles on a laptop.
  With the crop on the device (`data.crop_on_device(config.data)`) the batch is the stored
  images and their crop numbers, and the step crops them.
  tests/test_bench.py checks that it compiles to the same buffers as Setup's step."""
  size, batch = int(config.data.image_size), int(config.data.batch_size)
  model = models.build_model(config.model, info.num_classes, size)
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


def memory_rows(config, info: data_lib.DatasetInfo, *, per_device_batches: Sequence[int],
                remat_policies: Sequence[str], options: dict[str, Any] | None = None,
                log: Callable[[str], None] | None = None,
                mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """The compiled train step's memory (`memory_analysis`) and XLA FLOPs for each per-device
  batch, without remat and with each policy of `remat_policies` (vit.REMAT_POLICIES).

  Rows: per_device_batch, remat_policy ('none' without remat), on a GPU cudnn_attention_calls
  (the program's cuDNN fused-attention calls, forward and backward), argument / output / alias
  / temp bytes, total_bytes (`_total_bytes`), bytes_per_image and temp_bytes_per_image,
  xla_flops_per_image, flops_over_no_remat (the FLOPs remat adds), flops_over_model (over the
  analytic train-step FLOPs), compile_s; or, where the compiler refuses the program for the
  device's memory, does_not_fit (its message) and compile_s. Everything per device: the
  programs are compiled for `mesh` (default: every device; batch = per-device batch x
  devices), which may hold devices this process does not run on (`topology_mesh`); the model
  is then traced for their platform (`vit.compiling_for`).
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  device = mesh.devices.flat[0]
  log = log or (lambda line: None)
  memory_schedule = device.platform != 'cpu' or cpu_memory_schedule_in_effect()
  if not memory_schedule:
    log('memory: XLA:CPU runs with its concurrency-optimised scheduler, under which remat saves '
        f'no memory; run the memory part alone from the CLI (or set XLA_FLAGS='
        f'{CPU_MEMORY_SCHEDULE_FLAG}) for the memory-minimising schedule.')
  model_flops = _model_train_flops(config, info)
  rows = [row for per_device in per_device_batches for row in _batch_rows(
      config, info, mesh, int(per_device), remat_policies, options, model_flops, log)]
  return {
      'dtype': config.model.dtype, 'attention': config.model.attention,
      'image_size': int(config.data.image_size), 'num_devices': mesh.size,
      'platform': device.platform, 'device_kind': device.device_kind,
      'memory_minimising_schedule': memory_schedule, 'rows': rows,
      'note': 'XLA memory_analysis of the train step compiled for the devices of the mesh '
              '(per device; this backend, or a TPU topology ahead of time; '
              'the frozen backbone in the compute dtype, state donated). A CPU compile '
              '(memory-minimising schedule) approximates the accelerator programs: other '
              'fusions, and XLA:CPU computes bf16 matmuls in float32, keeping float32 copies '
              'of the weights and of some activations that a TPU or GPU does not have',
  }


def _model_train_flops(config, info: data_lib.DatasetInfo) -> float:
  """The analytic train-step FLOPs per image (`flops.analytic_flops`) of `config`'s model."""
  size = int(config.data.image_size)
  return flops_lib.analytic_flops(models.build_model(config.model, info.num_classes, size),
                                  size)['train']


def _batch_rows(config, info, mesh, per_device: int, remat_policies, options, model_flops,
                log) -> list[dict[str, Any]]:
  """The rows of one per-device batch: without remat ('none'), then with each policy."""
  rows, base_flops = [], None
  for policy in ('none', *remat_policies):
    head = {'per_device_batch': per_device, 'remat_policy': policy}
    try:
      compiled, seconds = _compile(_variant(config, per_device * mesh.size, policy), info, mesh,
                                   options)
    except _DoesNotFit as e:
      rows.append({**head, 'does_not_fit': e.message, 'compile_s': e.seconds})
    else:
      flops = step_lib.compiled_flops(compiled)
      base_flops = flops if policy == 'none' else base_flops
      rows.append({**head, **_sizes(compiled, mesh, per_device),
                   **_flops_fields(flops, base_flops, per_device, model_flops),
                   'compile_s': seconds})
    log(_describe(rows[-1]))
  return rows


def _variant(config, batch: int, policy: str):
  """`config` with global batch `batch` and remat `policy` ('none': no remat)."""
  c = copy.deepcopy(config)
  c.data.batch_size = batch
  c.model.remat = policy != 'none'
  if policy != 'none':
    c.model.remat_policy = policy
  return c


class _DoesNotFit(Exception):
  """The compiler refused the program for the device's memory (the TPU compiler does)."""

  def __init__(self, message: str, seconds: float):
    super().__init__(message)
    self.message, self.seconds = message, seconds


def _compile(config, info, mesh, options) -> tuple[Any, float]:
  """(compiled, seconds) of `config`'s abstract train step for `mesh`; _DoesNotFit where the
  compiler says RESOURCE_EXHAUSTED, other compile errors raise."""
  t0 = time.perf_counter()
  try:
    with vit_lib.compiling_for(mesh.devices.flat[0].platform):
      step, args = abstract_train_step(config, info, mesh)
      return programs.compile_step(step, *args, options=options)
  except RuntimeError as e:  # jax.errors.JaxRuntimeError is one
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    raise _DoesNotFit(str(e).strip().splitlines()[0], time.perf_counter() - t0) from e


def _sizes(compiled, mesh, per_device: int) -> dict[str, Any]:
  """The row's buffer sizes (and on a GPU, which attention ran: cuDNN's fused kernels are
  custom calls)."""
  out = {}
  if mesh.devices.flat[0].platform == 'gpu':
    out['cudnn_attention_calls'] = compiled.as_text().count('custom_call_target="__cudnn$fmha')
  m = record.memory_analysis(compiled)
  if isinstance(m, dict):
    total = _total_bytes(m)
    out.update({k.replace('_size_in_bytes', '_bytes'): v for k, v in m.items()
                if k != 'generated_code_size_in_bytes'})
    out.update(total_bytes=total, total_gib=total / GIB, bytes_per_image=total / per_device,
               temp_bytes_per_image=m['temp_size_in_bytes'] / per_device)
  return out


def _total_bytes(m: dict[str, int]) -> int:
  """What the program holds at its peak by XLA's accounting: arguments + outputs - the outputs
  aliased to (donated) arguments + temporaries."""
  return (m['argument_size_in_bytes'] + m['output_size_in_bytes'] - m['alias_size_in_bytes']
          + m['temp_size_in_bytes'])


def _flops_fields(flops, base_flops, per_device: int, model_flops) -> dict[str, Any]:
  """XLA's FLOPs per image, over those without remat, and over the model's matmul FLOPs (an
  accelerator compiler may rematerialise on its own to fit its memory, which the 'none' row
  then includes)."""
  return {
      'xla_flops_per_image': flops / per_device if flops else NA,
      'flops_over_no_remat': flops / base_flops if flops and base_flops else NA,
      'flops_over_model': flops / per_device / model_flops if flops and model_flops else NA,
  }


def _describe(row: dict[str, Any]) -> str:
  """One log line of a row."""
  head = f"memory: per-device batch {row['per_device_batch']}, remat {row['remat_policy']}: "
  if 'does_not_fit' in row:
    return head + f"does not fit ({row['does_not_fit']})"
  size = f"{row['total_gib']:.2f} GiB" if 'total_gib' in row else 'n/a'
  return head + f"{size} ({row['compile_s']:.0f} s to compile)"
