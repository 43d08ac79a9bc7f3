r"""The paper's ablation (Table 4) in miniature: several methods x seeds on one config, one table.

  python -m ltdpt_jax.tools.ablate --config=configs/demo.py --seeds=3 --workdir=runs/ablate

Each cell (row x seed) is a normal training run in `<workdir>/<row>/seed_<s>` (rerunning resumes
an interrupted cell and returns the finished ones at once). `run_ablation` writes the table of
each cell's last evaluation, mean +- sample std over the seeds, to `<workdir>/ablation.md` and
`ablation.json`. The rows (`ROWS`) differ from the config in the method alone.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ltdpt_jax import cli
from ltdpt_jax import metrics as metrics_lib
from ltdpt_jax import run_dir
from ltdpt_jax import train

# row -> (label, {dotted config key: value}), each a set of overrides on top of --config (and its
# --config.x=v flags). 'vpt', 'fr', 'fr_br' are Table 4's (A), (B), (C), all with the GNM-PT
# recipe (GCL + DRW, SGD + GNM); 'carry' goes beyond the paper (every block's bias matters);
# 'vpt_plain' is Table 4's first row, VPT with plain cross-entropy and no GNM or DRW (opt-in).
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    'linear': ('Linear probe (head only)', {'model.method': 'linear'}),
    'vpt': ('VPT + GNM-PT recipe (A)', {'model.method': 'vpt'}),
    'fr': ('(A) + FR prompts (B)', {'model.method': 'fr'}),
    'fr_br': ('FR + BR: LT-DPT (C)', {'model.method': 'fr_br'}),
    'carry': ('LT-DPT, prompt_mode=carry', {'model.method': 'fr_br',
                                            'model.prompt_mode': 'carry'}),
    'vpt_plain': ('VPT, cross-entropy, no GNM/DRW', {
        'model.method': 'vpt', 'optim.gnm_rho': 0.0, 'loss.m': 0.0, 'loss.noise_mul': 0.0,
        'train.drw_epochs': 0}),
}
DEFAULT_ROWS = ('linear', 'vpt', 'fr', 'fr_br', 'carry')
METRICS = ('accuracy', 'head_accuracy', 'medium_accuracy', 'tail_accuracy')
_COLUMNS = ('top-1', 'head', 'medium', 'tail')


def parse_rows(rows: str | Sequence[str]) -> tuple[str, ...]:
  """'linear,fr_br' -> ('linear', 'fr_br'); ValueError naming an unknown row."""
  names = [r.strip() for r in (rows.split(',') if isinstance(rows, str) else rows) if r.strip()]
  unknown = [r for r in names if r not in ROWS]
  if unknown or not names:
    raise ValueError(f'--rows={",".join(names)}: unknown or no rows {unknown}; choose from '
                     f'{", ".join(ROWS)}.')
  if len(set(names)) != len(names):
    raise ValueError(f'--rows={",".join(names)} names a row twice.')
  return tuple(names)


def cell_config(config, row: str, seed: int):
  """`config` with the overrides of `row` and train.seed = `seed` (a copy)."""
  c = copy.deepcopy(config)
  for key, value in ROWS[row][1].items():
    node = c
    *path, field = key.split('.')
    for part in path:
      node = node[part]
    node[field] = type(node[field])(value)
  c.train.seed = int(seed)
  return c


def cell_workdir(workdir: str, row: str, seed: int) -> str:
  return os.path.join(workdir, row, f'seed_{seed}')


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
  """{'mean', 'std' (sample, ddof 1; None for one value), 'n'} of the non-None values."""
  xs = [float(v) for v in values if v is not None]
  if not xs:
    return {'mean': None, 'std': None, 'n': 0}
  std = float(np.std(xs, ddof=1)) if len(xs) > 1 else None
  return {'mean': float(np.mean(xs)), 'std': std, 'n': len(xs)}


def _cell(value: dict[str, Any]) -> str:
  if value['mean'] is None:
    return 'n/a'
  text = f'{100 * value["mean"]:.2f}'
  return text if value['std'] is None else f'{text} ± {100 * value["std"]:.2f}'


def markdown_table(table: dict[str, Any]) -> str:
  """The Markdown table of `build_table`'s result (accuracies in %)."""
  lines = ['| method | ' + ' | '.join(_COLUMNS) + ' | seeds |',
           '|---|' + '---:|' * len(_COLUMNS) + '---:|']
  for row in table['rows']:
    cells = [_cell(row[m]) for m in METRICS]
    lines.append(f'| {row["label"]} | ' + ' | '.join(cells) + f' | {len(row["seeds"])} |')
  return '\n'.join(lines) + '\n'


def build_table(cells: dict[str, dict[int, dict[str, Any]]], meta: dict[str, Any]
                ) -> dict[str, Any]:
  """{'rows': [{row, label, seeds, <metric>: summarize(...), cells}], **meta} from the last
  evaluation records of every (row, seed)."""
  rows = []
  for row, by_seed in cells.items():
    entry = {'row': row, 'label': ROWS[row][0], 'overrides': ROWS[row][1],
             'seeds': sorted(by_seed)}
    for metric in METRICS:
      entry[metric] = summarize([by_seed[s].get(metric) for s in sorted(by_seed)])
    entry['cells'] = {str(s): {m: by_seed[s].get(m) for m in METRICS + ('step', 'epoch')}
                      for s in sorted(by_seed)}
    rows.append(entry)
  return {**meta, 'rows': rows}


def run_ablation(config, workdir: str, *, rows: Sequence[str] = DEFAULT_ROWS, seeds: int = 3,
                 first_seed: int | None = None, allow_config_change: bool = False,
                 config_file: str = '') -> dict[str, Any]:
  """Trains and evaluates every (row, seed) cell (resuming), writes ablation.json / .md into
  `workdir` and returns the table, or {'stopped_at': (row, seed, step)} when a signal stopped a
  cell. Seeds: `train.seed` = first_seed (default the config's) .. first_seed + seeds - 1; the
  seed sets the prompt/head init, the data order and augmentation, dropout and the GCL/GNM
  noise, while the data set itself (`data.seed`) stays the same. Raises run_dir.SetupError for
  bad rows, seeds or cell configs (before any training) and for a cell's bad input,
  FloatingPointError when a cell diverges."""
  try:
    rows = parse_rows(rows)
  except ValueError as e:
    raise run_dir.SetupError(str(e)) from None
  if seeds < 1:
    raise run_dir.SetupError(f'--seeds={seeds} must be >= 1.')
  first_seed = int(config.train.seed if first_seed is None else first_seed)
  seed_list = list(range(first_seed, first_seed + int(seeds)))
  for row in rows:  # every cell's config is checked before the first one trains
    try:
      cli.validate_config(cell_config(config, row, first_seed), num_devices=jax.device_count(),
                          num_processes=jax.process_count())
    except ValueError as e:
      raise run_dir.SetupError(f'invalid config for row {row!r}: {e}') from None
  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  cells: dict[str, dict[int, dict[str, Any]]] = {}
  seconds: dict[str, float] = {}
  for row in rows:
    for seed in seed_list:
      wd = cell_workdir(workdir, row, seed)
      logging.info('Ablation cell %s, seed %d: %s', row, seed, wd)
      t = time.perf_counter()
      results = train.train_and_evaluate(cell_config(config, row, seed), wd,
                                         allow_config_change=allow_config_change)
      seconds[f'{row}/seed_{seed}'] = time.perf_counter() - t
      if 'stopped_at' in results:
        return {'stopped_at': (row, seed, results['stopped_at'])}
      cells.setdefault(row, {})[seed] = results.get('last') or {}
  meta = {'config_file': config_file, 'workdir': os.path.abspath(workdir),
          'seeds': seed_list, 'record': 'last evaluation of each run (results.json "last")',
          'date': datetime.datetime.now().isoformat(timespec='seconds'),
          'host': {'cpus': os.cpu_count(), 'machine': platform.machine(),
                   'processor': _cpu_model(), 'loadavg': list(os.getloadavg())},
          'seconds': {'total': time.perf_counter() - t0, **seconds}}
  table = build_table(cells, meta)
  text = markdown_table(table)
  metrics_lib.write_json(os.path.join(workdir, 'ablation.json'), table)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'ablation.md'), 'w') as f:
      f.write(text)
  table['markdown'] = text
  return table


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


# ---------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------

def define_flags():
  """The CLI's flags (defined only when run as a program)."""
  config_flags.DEFINE_config_file(
      'config', None, 'Experiment config file (e.g. configs/demo.py); --config.x=v overrides '
      'apply to every cell.', lock_config=True)
  flags.DEFINE_string('workdir', 'runs/ablate', 'Root of the cells\' workdirs and the table.')
  flags.DEFINE_integer('seeds', 3, 'Seeds per row (train.seed = first_seed, first_seed + 1, ...).')
  flags.DEFINE_integer('first_seed', None, 'The first seed (default: the config\'s train.seed).')
  flags.DEFINE_string('rows', ','.join(DEFAULT_ROWS), f'Comma-separated rows of {list(ROWS)}.')
  flags.DEFINE_bool('allow_config_change', False, 'Passed to every cell (see ltdpt_jax.main).')
  flags.mark_flags_as_required(['config'])


def main(argv):
  cli.start(argv)
  f = flags.FLAGS
  config = cli.load_config(f['config'])
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):  # seeds after the first start faster
    jax.config.update('jax_compilation_cache_dir',
                      os.path.abspath(os.path.join(f.workdir, 'xla_cache')))
  try:
    config_file = config_flags.get_config_filename(f['config'])
  except Exception:  # pylint: disable=broad-except
    config_file = ''

  table = cli.run_guarded(lambda: run_ablation(
      config, f.workdir, rows=f.rows, seeds=f.seeds, first_seed=f.first_seed,
      allow_config_change=f.allow_config_change, config_file=config_file), f.workdir)
  if 'stopped_at' in table:
    row, seed, step = table['stopped_at']
    logging.warning('Stopped in cell %s seed %d at step %d; rerun the same command to resume.',
                    row, seed, step)
    sys.exit(cli.EXIT_STOPPED)
  total = table['seconds']['total']
  print(f'\nAblation of {config_file or "the config"} ({len(table["seeds"])} seed(s), last '
        f'evaluation, accuracy in %), {math.floor(total / 60)} min {total % 60:.0f} s:\n')
  print(table['markdown'])
  print(f'Written: {os.path.join(f.workdir, "ablation.md")}, '
        f'{os.path.join(f.workdir, "ablation.json")}')


def run_cli():
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run_cli()
