"""A study's report: its cells' results as mean +- std over seeds beside the paper's numbers,
with every setting that differed from the paper's flagged.

`gather` reads each cell's run (results.json, config.json, run_info.json), `deviations` lists
what a run did differently from the config the study asks for, `build` makes the table (JSON)
and `markdown` its text; `best_cell` is the model selection of a grid by validation top-1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath
import ml_collections
import numpy as np

from ltdpt_jax import config_lib
from ltdpt_jax import optim
from ltdpt_jax.data import splits
from ltdpt_jax.studies import spec as spec_lib


def _read_json(path: epath.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (FileNotFoundError, json.JSONDecodeError, OSError):
    return None


def read_run(workdir: str) -> dict[str, Any]:
  """{'results', 'config', 'run_info'} of a run directory (None where a file is missing: a run
  not started, or not finished when 'results' is None)."""
  root = epath.Path(workdir)
  return {name: _read_json(root / f'{name}.json') for name in ('results', 'config', 'run_info')}


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
  """{'mean', 'std' (sample, ddof 1; None for one value), 'n'} of the non-None values."""
  xs = [float(v) for v in values if v is not None]
  if not xs:
    return {'mean': None, 'std': None, 'n': 0}
  std = float(np.std(xs, ddof=1)) if len(xs) > 1 else None
  return {'mean': float(np.mean(xs)), 'std': std, 'n': len(xs)}


def _get(d: Mapping[str, Any] | None, dotted: str) -> Any:
  for part in dotted.split('.'):
    if not isinstance(d, Mapping) or part not in d:
      return None
    d = d[part]
  return d


def _peak_lr(config: Mapping[str, Any]) -> float | None:
  o, batch = config.get('optim'), _get(config, 'data.batch_size')
  if not o or 'lr' not in o or batch is None:
    return None
  return optim.peak_learning_rate(ml_collections.ConfigDict(o), int(batch))


# (label, dotted key) of the settings compared value for value.
_SETTINGS = (('global batch', 'data.batch_size'), ('epochs', 'train.epochs'),
             ('DRW epochs', 'train.drw_epochs'), ('image size', 'data.image_size'),
             ('dataset', 'data.dataset'))


def deviations(run: Mapping[str, Any], wanted: Mapping[str, Any], *,
               devices: int | None = None, reference: str = 'paper') -> list[str]:
  """What the run (`read_run`'s) did differently from the `wanted` config (the study's cell
  config without the command line's overrides), one short phrase each: global batch, epochs,
  DRW epochs, image size, dataset (the demo task named as such), learning rate after batch
  scaling, backbone file (its SHA-256 against the published one, where known), the OLTR split
  files (their SHA-256 against the published ones), and the number of devices (when the study
  states one). `reference` names what `wanted` is in the phrases ('paper', or 'study' for a
  study without the paper's numbers)."""
  config, info = run.get('config') or {}, run.get('run_info') or {}
  out = []
  demo = _get(config, 'data.dataset') == 'synthetic'
  if demo and _get(wanted, 'data.dataset') != 'synthetic':
    out.append('the demo task (synthetic shapes), not a paper dataset')
  for label, key in _SETTINGS:
    got, want = _get(config, key), _get(wanted, key)
    if got != want and not (key == 'data.dataset' and demo):
      out.append(f'{label} {got} ({reference} {want})')
  got_lr, want_lr = _peak_lr(config), _peak_lr(wanted)
  if got_lr is not None and want_lr is not None and not np.isclose(got_lr, want_lr, rtol=1e-9):
    out.append(f'learning rate {got_lr:.4g} after batch scaling ({reference} {want_lr:.4g})')
  out += _backbone_deviation(config, info, wanted, reference)
  for name, got in sorted((info.get('split_files') or {}).items()):
    want = splits.SPLIT_FILES.get(name, (None,))[0]
    if want is not None and got != want:
      out.append(f'split file {name} sha256 {got[:12]} (published {want[:12]})')
  got_devices = info.get('devices')
  if devices is not None and got_devices is not None and got_devices != devices:
    out.append(f'{got_devices} devices ({reference} {devices})')
  return out


def _backbone_deviation(config, info, wanted, reference) -> list[str]:
  got, want = _get(config, 'model.checkpoint'), _get(wanted, 'model.checkpoint')
  got_sha = info.get('backbone_sha256')
  want_sha = config_lib.CHECKPOINT_SHA256.get(want or '')
  if want_sha:
    if got_sha and got_sha != want_sha:
      return [f'backbone sha256 {got_sha[:12]} ({reference}\'s file {want_sha[:12]})']
    return []
  if got != want:
    return [f'backbone {got or "random init"} ({reference} {want})']
  return []


def reference_of(study: spec_lib.Study) -> str:
  """'paper' for a study with the paper's numbers, else 'study'."""
  return 'paper' if any(c.paper for c in study.expand()) else 'study'


def gather(study: spec_lib.Study, workdir: str, seeds: Sequence[int],
           wanted: Mapping[str, Mapping[str, Any]], *, cells: Sequence[str] | None = None
           ) -> list[dict[str, Any]]:
  """One entry per cell: its runs (`read_run`) per seed and what each did differently from
  `wanted[cell]` (the study's config of the cell as a dict)."""
  out = []
  reference = reference_of(study)
  for cell in study.expand():
    if cells is not None and cell.name not in cells:
      continue
    runs = {}
    for seed in seeds:
      run = read_run(spec_lib.cell_workdir(workdir, cell, seed))
      run['deviations'] = deviations(run, wanted[cell.name], devices=study.devices,
                                     reference=reference)
      runs[seed] = run
    out.append({'cell': cell, 'runs': runs, 'wanted': wanted[cell.name]})
  return out


def _last(run: Mapping[str, Any], evaluator: str = 'eval') -> dict[str, Any] | None:
  results = run.get('results') or {}
  by_name = results.get('last_by_evaluator') or {}
  if evaluator in by_name:
    return by_name[evaluator]
  return results.get('last') if evaluator == 'eval' else None


def build(study: spec_lib.Study, gathered: Sequence[Mapping[str, Any]],
          meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The report as JSON: per cell its label, finished seeds, each metric's summary (accuracy in
  [0, 1]) and the paper's number with the difference (in points), the validation top-1 where
  there is one, the deviations (phrase -> seeds), and per seed the metrics; plus 'best' (the
  cell of best validation top-1) when the study selects by it."""
  rows = []
  for entry in gathered:
    cell, runs = entry['cell'], entry['runs']
    done = {s: _last(r) for s, r in runs.items() if _last(r) is not None}
    row: dict[str, Any] = {'cell': cell.name, 'label': cell.label,
                           'overrides': dict(cell.overrides), 'seeds': sorted(done),
                           'missing_seeds': sorted(set(runs) - set(done))}
    for metric in spec_lib.METRICS:
      s = summarize([done[k].get(metric) for k in sorted(done)])
      p = cell.paper.get(metric)
      s['paper'] = p
      s['difference'] = (None if p is None or s['mean'] is None
                         else round(100 * s['mean'] - p, 6))
      row[metric] = s
    val = {k: _last(runs[k], 'val') for k in done}
    row['val_accuracy'] = summarize([v.get('accuracy') for v in val.values() if v])
    flags: dict[str, list[int]] = {}
    for seed in sorted(runs):
      for phrase in runs[seed]['deviations']:
        if runs[seed].get('config') is not None:
          flags.setdefault(phrase, []).append(seed)
    row['deviations'] = flags
    row['runs'] = {str(k): {m: done[k].get(m) for m in spec_lib.METRICS + ('step', 'epoch')}
                   for k in sorted(done)}
    rows.append(row)
  demo = any(_get(e.get('wanted'), 'data.dataset') == 'synthetic' for e in gathered)
  report = {'study': study.name, 'title': study.title, 'notes': study.notes,
            'reference': reference_of(study), 'demo': demo, **(meta or {}), 'rows': rows}
  if study.select == 'val':
    report['best'] = best_cell(rows)
  return report


def best_cell(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
  """The row of the highest mean validation top-1 (the first on ties), with its eval-set
  accuracy per group: {'cell', 'val_accuracy', <metric>: mean}; None without validation."""
  scored = [r for r in rows if r['val_accuracy']['mean'] is not None]
  if not scored:
    return None
  best = max(scored, key=lambda r: r['val_accuracy']['mean'])
  return {'cell': best['cell'], 'label': best['label'],
          'val_accuracy': best['val_accuracy']['mean'],
          **{m: best[m]['mean'] for m in spec_lib.METRICS}}


def _pct(value: float | None) -> str:
  return 'n/a' if value is None else f'{100 * value:.2f}'


def _cell_text(s: Mapping[str, Any]) -> str:
  if s['mean'] is None:
    return 'n/a'
  text = _pct(s['mean'])
  return text if s['std'] is None else f'{text} ± {100 * s["std"]:.2f}'


def _paper_text(s: Mapping[str, Any]) -> str:
  if s['paper'] is None:
    return ''
  diff = '' if s['difference'] is None else f' ({s["difference"]:+.2f})'
  return f'{s["paper"]:.1f}{diff}'


def markdown(report: Mapping[str, Any]) -> str:
  """The report's table: one row per cell, accuracy in % as mean ± std over the seeds; with the
  paper's numbers (and our difference) where the study has them; the deviations below."""
  rows = report['rows']
  has_paper = any(r[m]['paper'] is not None for r in rows for m in spec_lib.METRICS)
  has_val = any(r['val_accuracy']['mean'] is not None for r in rows)
  head = ['method', *spec_lib.COLUMNS, 'seeds']
  if has_val:
    head.insert(1, 'val top-1')
  if has_paper:
    head += [f'paper {c} (ours - paper)' for c in spec_lib.COLUMNS]
  lines = ['| ' + ' | '.join(head) + ' |', '|---|' + '---:|' * (len(head) - 1)]
  notes = []
  for r in rows:
    mark = ' (!)' if r['deviations'] else ''
    cells = [f'{r["label"]}{mark}']
    if has_val:
      cells.append(_cell_text(r['val_accuracy']))
    cells += [_cell_text(r[m]) for m in spec_lib.METRICS]
    cells.append(str(len(r['seeds'])) + (f' of {len(r["seeds"]) + len(r["missing_seeds"])}'
                                          if r['missing_seeds'] else ''))
    if has_paper:
      cells += [_paper_text(r[m]) for m in spec_lib.METRICS]
    lines.append('| ' + ' | '.join(cells) + ' |')
    by_seeds: dict[tuple[int, ...], list[str]] = {}
    for phrase, seeds in r['deviations'].items():
      by_seeds.setdefault(tuple(seeds), []).append(phrase)
    for seeds, phrases in by_seeds.items():
      notes.append(f'- {r["label"]}: {"; ".join(phrases)} (seed{"s" if len(seeds) > 1 else ""} '
                   f'{", ".join(map(str, seeds))})')
  text = '\n'.join(lines) + '\n'
  if report.get('demo'):
    text = ('On the demo task (synthetic shapes, configs/demo.py), not a dataset of the paper.'
            '\n\n' + text)
  if notes:
    text += (f'\n(!) Not the {report.get("reference", "paper")}\'s settings:\n'
             + '\n'.join(notes) + '\n')
  best = report.get('best')
  if best:
    text += (f'\nBest cell by validation top-1: {best["label"]} (val {_pct(best["val_accuracy"])};'
             f' eval top-1 {_pct(best["accuracy"])}, head {_pct(best["head_accuracy"])}, medium '
             f'{_pct(best["medium_accuracy"])}, tail {_pct(best["tail_accuracy"])}).\n')
  return text
