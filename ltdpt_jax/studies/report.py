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
  """One entry per cell (of `cells`, default all): its runs (`read_run`) per seed and what each
  did differently from `wanted[cell]` (the study's config of the cell as a dict; nothing for a
  run not started)."""
  out = []
  reference = reference_of(study)
  for cell in study.expand(cells):
    runs = {}
    for seed in seeds:
      run = read_run(spec_lib.cell_workdir(workdir, cell, seed))
      run['deviations'] = [] if run['config'] is None else deviations(
          run, wanted[cell.name], devices=study.devices, reference=reference)
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
        flags.setdefault(phrase, []).append(seed)
    row['deviations'] = flags
    row['runs'] = {str(k): {m: done[k].get(m) for m in spec_lib.METRICS + ('step', 'epoch')}
                   for k in sorted(done)}
    attention = [_last(runs[k], 'attention') for k in sorted(done)]
    row['shares'] = {key: summarize([a.get(key) for a in attention if a])
                     for key in SHARE_KEYS} if any(attention) else {}
    rows.append(row)
  demo = any(_get(e.get('wanted'), 'data.dataset') == 'synthetic' for e in gathered)
  report = {'study': study.name, 'title': study.title, 'notes': study.notes,
            'config': study.config, 'reference': reference_of(study), 'demo': demo,
            **(meta or {}), 'rows': rows}
  if study.select == 'val':
    report['best'] = best_cell(rows)
  if study.paired:
    report['paired'] = [paired(rows, a, b) for a, b in study.paired]
  return report


# The attention evaluator's foreground shares a report shows (config.train.attention_stats):
# overall and per group, of Grad-CAM (true class), FR and BR prompt attention, and the object's
# own share of the image (what a map spread evenly scores).
SHARE_MAPS = ('gradcam_true', 'fr_attention', 'br_attention', 'foreground_area')
SHARE_KEYS = tuple(f'{g}{m}' for g in ('', 'head_', 'medium_', 'tail_') for m in SHARE_MAPS)


def paired(rows: Sequence[Mapping[str, Any]], a: str, b: str) -> dict[str, Any]:
  """Cell `a` against cell `b` over the seeds both finished: per metric the mean of the per-seed
  differences a - b (in [0, 1]) and its standard error (sample std / sqrt(n); None for n < 2)."""
  by_name = {r['cell']: r for r in rows}
  ra, rb = by_name[a], by_name[b]
  seeds = sorted(set(ra['runs']) & set(rb['runs']), key=int)
  out: dict[str, Any] = {'a': a, 'b': b, 'label_a': ra['label'], 'label_b': rb['label'],
                         'seeds': [int(s) for s in seeds]}
  for metric in spec_lib.METRICS:
    d = [ra['runs'][s][metric] - rb['runs'][s][metric] for s in seeds
         if ra['runs'][s][metric] is not None and rb['runs'][s][metric] is not None]
    se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
    out[metric] = {'mean': float(np.mean(d)) if d else None, 'se': se, 'n': len(d)}
  return out


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
  # What every run of every cell did differently is said once.
  everywhere = set.intersection(*(
      {p for p, seeds in r['deviations'].items()
       if set(seeds) == set(r['seeds']) | set(r['missing_seeds'])} for r in rows)) if rows else set()
  if all(r['deviations'] for r in rows) and everywhere:
    first = rows[0]['deviations']
    notes.append(f'- every run: {"; ".join(p for p in first if p in everywhere)}')
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
      if phrase not in everywhere:
        by_seeds.setdefault(tuple(seeds), []).append(phrase)
    for seeds, phrases in by_seeds.items():
      notes.append(f'- {r["label"]}: {"; ".join(phrases)} (seed{"s" if len(seeds) > 1 else ""} '
                   f'{", ".join(map(str, seeds))})')
  text = '\n'.join(lines) + '\n'
  if report.get('demo'):
    text = (f'On a demo task (synthetic shapes, {report.get("config", "configs/demo.py")}), not '
            'a dataset of the paper.\n\n' + text)
  if notes:
    text += (f'\n(!) Not the {report.get("reference", "paper")}\'s settings:\n'
             + '\n'.join(notes) + '\n')
  for p in report.get('paired', ()):
    parts = []
    for metric, column in zip(spec_lib.METRICS, spec_lib.COLUMNS):
      v = p[metric]
      if v['mean'] is not None:
        se = '' if v['se'] is None else f' ± {100 * v["se"]:.2f}'
        parts.append(f'{column} {100 * v["mean"]:+.2f}{se}')
    text += (f'\nPaired, {p["label_a"]} minus {p["label_b"]} over the same {len(p["seeds"])} '
             f'seed(s) (mean ± standard error, points): {", ".join(parts)}.\n')
  if any(r['shares'] for r in rows):
    text += '\n' + shares_markdown(rows)
  best = report.get('best')
  if best:
    text += (f'\nBest cell by validation top-1: {best["label"]} (val {_pct(best["val_accuracy"])};'
             f' eval top-1 {_pct(best["accuracy"])}, head {_pct(best["head_accuracy"])}, medium '
             f'{_pct(best["medium_accuracy"])}, tail {_pct(best["tail_accuracy"])}).\n')
  return text


def shares_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
  """The foreground shares of each cell's maps at its last evaluation (mean over seeds): overall
  and head / medium / tail, beside the object's own share of the image."""
  head = ['method', 'Grad-CAM', 'FR attention', 'BR attention', 'object area',
          'Grad-CAM h / m / t', 'FR h / m / t', 'BR h / m / t']
  lines = ['Foreground shares (attention evaluator, last evaluation, mean over seeds):', '',
           '| ' + ' | '.join(head) + ' |', '|---|' + '---:|' * (len(head) - 1)]

  def mean(row, key):
    s = row['shares'].get(key) or {}
    return 'n/a' if s.get('mean') is None else f'{s["mean"]:.2f}'

  for r in rows:
    if not r['shares']:
      continue
    cells = [r['label'], *(mean(r, m) for m in SHARE_MAPS)]
    for m in SHARE_MAPS[:3]:
      cells.append(' / '.join(mean(r, f'{g}_{m}') for g in ('head', 'medium', 'tail')))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'
