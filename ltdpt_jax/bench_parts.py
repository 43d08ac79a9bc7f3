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
from ltdpt_jax import train_step as step_lib
from ltdpt_jax.bench_report import NA
from ltdpt_jax.data import files as files_lib
from ltdpt_jax.data import synthetic as synthetic_lib

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

def synthetic_stand_in(config, num_classes: int | None = None
                       ) -> tuple[Any, data_lib.DatasetInfo]:
  """(config, DatasetInfo) with config's dataset replaced by synthetic data.

  The returned config is a copy whose data section is `data.dataset = 'synthetic'` at
  config.data.image_size, with min(num_classes, 64) shape/colour classes (the synthetic
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
  info = data_lib.DatasetInfo(
      name=f'synthetic[{num_classes} classes, {d.image_size}px]', num_classes=int(num_classes),
      class_counts=counts, num_train=int(counts.sum()),
      num_eval=int(num_classes) * int(d.num_test_per_class), image_size=int(d.image_size))
  return stand_in, info


# ---------------------------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------------------------

def random_batch(rows: int, size: int, num_classes: int, seed: int, *, eval_batch: bool
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
