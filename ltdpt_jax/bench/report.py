"""The readable table of a benchmark record (`bench.run_benchmark`), its number formats, and
`write`: the record and its table to a file and stdout."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

NA = 'n/a'  # what the record holds where a number is not available


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


def _gib(x) -> str:
  return f'{x / 2**30:,.2f}' if isinstance(x, (int, float)) else str(x)


def format_memory_report(report: dict[str, Any]) -> str:
  """The memory part (`memory.memory_rows`) as a table, GiB per device."""
  lines = [
      f"memory report ({report['platform']} {report.get('device_kind', '')}, "
      f"{report['dtype']}, attention "
      f"{report['attention']}, {report['image_size']}px, per device of "
      f"{report['num_devices']}): GiB from the compiled train step's memory_analysis"
      + ('' if report.get('memory_minimising_schedule', True) else
         ' [XLA:CPU concurrency schedule: remat rows overstate the memory]'),
      f"{'batch/dev':>9} {'remat':<24}{'args':>8}{'temp':>9}{'output':>8}{'total':>9}"
      f"{'MiB/image':>11}{'FLOPs x':>9}{'x model':>9}",
  ]
  for r in report['rows']:
    if 'does_not_fit' in r:
      lines.append(f"{r['per_device_batch']:>9} {r['remat_policy']:<24}does not fit: "
                   f"{r['does_not_fit']}")
      continue
    ratio = r['flops_over_no_remat']
    lines.append(
        f"{r['per_device_batch']:>9} {r['remat_policy']:<24}{_gib(r.get('argument_bytes')):>8}"
        f"{_gib(r.get('temp_bytes')):>9}{_gib(r.get('output_bytes')):>8}"
        f"{_gib(r.get('total_bytes')):>9}"
        f"{_num(r.get('bytes_per_image', NA) / 2**20 if 'bytes_per_image' in r else NA, '.1f'):>11}"
        f"{_num(ratio, '.3f'):>9}{_num(r.get('flops_over_model', NA), '.3f'):>9}")
  return '\n'.join(lines)


def format_table(record: dict[str, Any]) -> str:
  """A human-readable summary of a `run_benchmark` record."""
  lines = [*_header(record), '', *_rates(record), '', *_flops(record['flops']),
           _memory(record['memory'])]
  if 'memory_report' in record:
    lines += ['', format_memory_report(record['memory_report'])]
  lines.append(_compile(record['timing']))
  return '\n'.join(lines)


def _header(record: dict[str, Any]) -> list[str]:
  """What ran where: the config, the devices and the host's load."""
  c, dv, h = record['config'], record['device'], record['host']
  return [
      f"LT-DPT benchmark {c['file']}: {c['backbone']}, {c['method']}, {c['dtype']}, "
      f"{c['image_size']}px, batch {c['batch_size']} (eval {c['eval_batch_size']}), "
      f"{c['num_classes']} classes, data {c['dataset']}",
      f"device: {dv['num_devices']} x {dv['device_kind']} ({dv['platform']}, "
      f"{dv['num_processes']} process(es), jax {dv['jax']}), peak "
      f"{dv['peak_tflops_per_device']} TFLOP/s/device ({dv['peak_source']})",
      f"host: {h['before']['cpus_usable']} usable CPUs, load average (1/5/15 min) before "
      + '/'.join(f'{x:.2f}' for x in h['before']['loadavg']) + ', after '
      + '/'.join(f'{x:.2f}' for x in h['after']['loadavg']),
  ]


def _rates(record: dict[str, Any]) -> list[str]:
  """One row per timed part, and what bounds the end-to-end rate."""
  lines = [f"{'part':<24}{'images/s':>12}{'img/s/dev':>12}{'ms/step':>10}{'TFLOP/s':>10}"
           f"{'MFU':>8}{'MFU xla':>9}"]
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
  return lines


def _flops(f: dict[str, Any]) -> list[str]:
  """XLA's and the analytic FLOPs per image."""
  ratio = f['step_over_forward_xla']
  return [
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


def _memory(mem: dict[str, Any]) -> str:
  """The allocator's peak and the compiled train step's buffers."""
  tc = mem['train_step_compiled']
  return (
      f"memory: peak in use {_mib(mem['peak_bytes_in_use'])} (limit {_mib(mem['bytes_limit'])});"
      + (f" train step compiled: arguments {_mib(tc.get('argument_size_in_bytes'))}, temp "
         f"{_mib(tc.get('temp_size_in_bytes'))}, output {_mib(tc.get('output_size_in_bytes'))}"
         if isinstance(tc, dict) else ''))


def _compile(tm: dict[str, Any]) -> str:
  """Compile and set-up seconds, and how the parts were timed."""
  cs = tm['compile_s']
  return (f"compile: train {_num(cs['train'], '.1f')} s, eval {_num(cs['eval'], '.1f')} s, "
          f"forward {_num(cs['forward'], '.1f')} s; setup {tm['setup_s']:.1f} s; "
          f"{tm['steps']} timed steps x {tm['repeats']} rounds after {tm['warmup']} warm-up")


def write(record: dict[str, Any], path: str | None) -> None:
  """The table to stdout and the JSON to `path`, or without one the table to stderr and the
  JSON to stdout."""
  text = json.dumps(record, indent=1)
  if not path:
    print(format_table(record), file=sys.stderr, flush=True)
    print(text)
    return
  print(format_table(record), flush=True)
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as fh:
    fh.write(text + '\n')
  print(f'JSON written to {path}')
