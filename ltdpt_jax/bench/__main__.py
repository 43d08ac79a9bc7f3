r"""Throughput, FLOPs, MFU and memory of the LT-DPT train step, eval step and input pipeline.

  python -m ltdpt_jax.bench --config=configs/demo.py --steps=20 --out=bench.json
  python -m ltdpt_jax.bench --config=configs/cifar100_lt.py --synthetic \
      --config.model.checkpoint='' --config.model.dtype=bfloat16 --out=b16_bf16.json

A timing loop over the `train.Setup` that training uses, one part at a time (`--parts`): the JSON
record of `run_benchmark` goes to `--out` (or stdout), its table (`report.format_table`) to
stdout (stderr when the JSON goes there).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ltdpt_jax import cli
from ltdpt_jax import train
from ltdpt_jax.bench import memory
from ltdpt_jax.bench import parts as parts_lib
from ltdpt_jax.bench import programs
from ltdpt_jax.bench import record
from ltdpt_jax.bench import report
from ltdpt_jax.models import flops as flops_lib

# train: the compiled train step alone on one device-resident batch fed again and again; eval:
# the eval step of the config.train.best_metric evaluator the same way; pipeline: the grain
# training iterator alone; end_to_end: that iterator into the train step as the train loop runs
# it; flops: XLA's FLOP counts of the train step and the forward (the analytic counts are always
# there); memory: the memory report (`memory.memory_rows`: several compiles, so not a default).
PARTS = ('train', 'eval', 'pipeline', 'end_to_end', 'flops', 'memory')
DEFAULT_PARTS = ('train', 'eval', 'pipeline', 'end_to_end', 'flops')


def run_benchmark(config, *, steps: int = 20, warmup: int = 3, repeats: int = 3,
                  peak_tflops: float | None = None, synthetic: bool = False,
                  num_classes: int | None = None, workers: int | None = None,
                  parts: Sequence[str] = DEFAULT_PARTS, config_name: str = '',
                  compiler_options: dict[str, Any] | None = None,
                  memory_batches: Sequence[int] = memory.BATCHES,
                  memory_remat_policies: Sequence[str] | None = None,
                  memory_topology: str | None = None) -> dict[str, Any]:
  """Runs the benchmark parts `parts` (from PARTS) for `config`; returns the JSON record.

  The arguments are the CLI's flags; `compiler_options` go to every compile (the tests pass a
  low XLA:CPU optimisation level: faster compiles, the same FLOP counts and buffers). Raises
  ValueError for unknown parts, bad counts or an invalid config.
  """
  _check_counts(parts, steps, warmup, repeats)
  memory_settings = memory.settings(config, parts, memory_batches, memory_remat_policies,
                                    memory_topology)
  config, info = _benchmark_config(config, workers, synthetic, num_classes)
  host_before = record.host()
  t0 = time.perf_counter()
  setup = train.Setup(config, info=info)
  setup_s = time.perf_counter() - t0
  logging.info('Benchmark: %d device(s) [%s], %d process(es); %s; batch %d, eval batch %d.',
               jax.device_count(), jax.devices()[0].device_kind, jax.process_count(),
               setup.info.name, int(config.data.batch_size), int(config.data.eval_batch_size))
  compiled, compile_s, batches = programs.compile_programs(setup, parts, compiler_options)
  analytic = flops_lib.analytic_flops(setup.model, setup.image_size)
  flops = record.flops_record(compiled, analytic, config.data)
  peak, peak_source = record.resolve_peak(peak_tflops, jax.devices()[0])
  run = parts_lib.Run(setup, parts_lib.StepRunner(compiled['train'], setup.state, setup.frozen),
                      steps, warmup, repeats, analytic,
                      peak * 1e12 * jax.device_count() if peak else None)
  results = parts_lib.timed_parts(run, parts, compiled, batches, flops, synthetic)
  memory_report = (memory.report(config, setup.info, memory_settings, compiler_options)
                   if 'memory' in parts else None)
  jax.block_until_ready(run.runner.state)
  out = {
      'config': record.config_record(setup, config_name, synthetic),
      'device': record.device_record(peak, peak_source),
      'host': {'before': host_before, 'after': record.host()},
      'timing': {'steps': steps, 'warmup': warmup, 'repeats': repeats, 'setup_s': setup_s,
                 'compile_s': compile_s},
      **results,
      'flops': flops,
      'memory': record.memory_record(compiled),
  }
  if memory_report is not None:
    out['memory_report'] = memory_report
  return out


def _check_counts(parts: Sequence[str], steps: int, warmup: int, repeats: int) -> None:
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    raise ValueError(f'Unknown benchmark parts {unknown}; choose from {PARTS}.')
  if steps < 1 or warmup < 0 or repeats < 1:
    raise ValueError(f'Need steps >= 1, warmup >= 0, repeats >= 1; got {steps}, {warmup}, '
                     f'{repeats}.')


def _benchmark_config(config, workers, synthetic, num_classes):
  """(config, DatasetInfo or None): a validated copy with `workers`, and with `synthetic` the
  synthetic stand-in for its dataset (`parts.synthetic_stand_in`)."""
  config = copy.deepcopy(config)
  if workers is not None:
    config.data.num_workers = int(workers)
  cli.validate_config(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  if synthetic:
    return parts_lib.synthetic_stand_in(config, num_classes)
  if num_classes is not None:
    raise ValueError('--num_classes only applies with --synthetic.')
  return config, None


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
  flags.DEFINE_list('memory_batches', [str(b) for b in memory.BATCHES],
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
  if 'memory' in f.parts:  # before any JAX backend starts
    memory.prepare_process(f.memory_topology)
  try:
    out = run_benchmark(f.config, steps=f.steps, warmup=f.warmup, repeats=f.repeats,
                        peak_tflops=f.peak_tflops, synthetic=f.synthetic,
                        num_classes=f.num_classes, workers=f.workers, parts=f.parts,
                        config_name=_config_name(f),
                        memory_batches=[int(b) for b in f.memory_batches],
                        memory_remat_policies=f.memory_remat_policies,
                        memory_topology=f.memory_topology)
  except ValueError as e:
    cli.fail(f'Invalid benchmark settings: {e}', cli.EXIT_BAD_INPUT)
  if jax.process_index() == 0:
    report.write(out, f.out)


def _config_name(f) -> str:
  try:
    return config_flags.get_config_filename(f['config'])
  except Exception:  # pylint: disable=broad-except
    return ''


if __name__ == '__main__':
  define_flags()
  app.run(main)
