"""The benchmark record's sections that describe a run, and what XLA, the device and the host say.

* `config_record`, `device_record`, `flops_record`, `memory_record`: sections of the JSON record.
* `PEAK_BF16_TFLOPS`, `peak_tflops_for`, `resolve_peak`, `mfu`: the model FLOP utilisation.
* `xla_flops_per_image`, `memory_analysis`, `device_memory`, `host`: what XLA, the allocator and
  the host report.
"""

from __future__ import annotations

import os
from typing import Any

import jax

from ltdpt_jax import data as data_lib
from ltdpt_jax import train_step as step_lib
from ltdpt_jax.bench.report import NA

# Dense bf16 matmul peak TFLOP/s of one chip (the vendors' figures without sparsity), matched in
# order against the lower-cased jax `device_kind`; `None` = known not to be the listed part
# (pass --peak_tflops).
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
PEAK_NOTE = ("the chip's dense bf16 matmul peak (the vendor's figure without sparsity), also "
             'for float32 runs')


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


def mfu(flops_per_image: float | None, images_per_s: float | None,
        peak_total: float | None) -> float | str:
  """Achieved FLOP/s over the peak of all devices (`peak_total` FLOP/s), or 'n/a'.

  The record has two: 'model' from the analytic FLOPs (the usual definition: recomputation and
  elementwise work do not count) and 'xla' from XLA's count of the compiled program.
  """
  if not flops_per_image or not images_per_s or not peak_total:
    return NA
  return flops_per_image * images_per_s / peak_total


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


def config_record(setup, config_name: str, synthetic: bool) -> dict[str, Any]:
  """What was measured: the model and data of `setup` (a `train.Setup`)."""
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


def device_record(peak_tflops: float | None, peak_source: str) -> dict[str, Any]:
  """The devices the run used, and the peak its MFUs are against."""
  device = jax.devices()[0]
  return {
      'platform': device.platform, 'device_kind': device.device_kind,
      'num_devices': jax.device_count(), 'num_processes': jax.process_count(),
      'jax': jax.__version__, 'peak_tflops_per_device': peak_tflops if peak_tflops else NA,
      'peak_source': peak_source, 'peak_note': PEAK_NOTE,
  }


def flops_record(compiled: dict[str, Any], analytic: dict[str, Any], data) -> dict[str, Any]:
  """XLA's FLOPs per image of the `compiled` programs ('n/a' where not compiled) next to the
  analytic counts (`flops.analytic_flops`: the matmuls of the model's actual token layout);
  `data`: the config's data section (the batch sizes)."""
  n_dev = jax.device_count()
  batch, eval_batch = int(data.batch_size), int(data.eval_batch_size)
  step = xla_flops_per_image(compiled['train'], batch, n_dev)
  fwd = xla_flops_per_image(compiled['forward'], batch, n_dev)
  ev = xla_flops_per_image(compiled['eval'], eval_batch, n_dev)
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


def memory_record(compiled: dict[str, Any]) -> dict[str, Any]:
  """The allocator's statistics after the parts ran, and the compiled train and eval steps'
  own buffer sizes ('n/a' where not compiled)."""
  return {**device_memory(),
          **{f'{k}_step_compiled': memory_analysis(compiled[k]) if compiled[k] else NA
             for k in ('train', 'eval')}}
