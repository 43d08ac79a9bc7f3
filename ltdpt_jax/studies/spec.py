"""What a study is: a base config, named cells of config overrides, seeds, the paper's numbers.

A study file (`configs/studies/<name>.py`) defines `get_study() -> Study`. `load_study` finds and
loads one, `Study.expand` lists its cells (explicit ones and a grid's), and `cell_args` turns a
(cell, seed) into the flags of one normal run, `python -m ltdpt_jax.main <flags>`, the unit every
launcher runs; `config_from_args` builds the config those flags describe, exactly as that command
would.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags
from ml_collections import config_flags

import ltdpt_jax

# The source checkout the package runs from (configs/ beside ltdpt_jax/), where the repository's
# study files and the configs they name live.
REPO = pathlib.Path(ltdpt_jax.__file__).resolve().parent.parent
STUDIES_DIR = REPO / 'configs' / 'studies'

# results.json metrics a report shows, with their column names.
METRICS = ('accuracy', 'head_accuracy', 'medium_accuracy', 'tail_accuracy')
COLUMNS = ('top-1', 'head', 'medium', 'tail')

# The methods of Table 4 (and the demo's ablation) as config overrides: (A) 'vpt' (GNM-PT: VPT
# with the GCL + DRW loss and SGD + GNM), (B) 'fr', (C) 'fr_br' (LT-DPT); 'vpt_plain' is Table 4's
# first row (VPT with cross-entropy, no GNM, no DRW: the margin, the logit noise and the GNM radius
# set to 0); 'linear' a linear probe of the frozen features; 'carry' LT-DPT with every block's
# prompts and biases reaching the output (beyond the paper).
METHODS: dict[str, dict[str, Any]] = {
    'linear': {'model.method': 'linear'},
    'vpt': {'model.method': 'vpt'},
    'fr': {'model.method': 'fr'},
    'fr_br': {'model.method': 'fr_br'},
    'carry': {'model.method': 'fr_br', 'model.prompt_mode': 'carry'},
    'vpt_plain': {'model.method': 'vpt', 'optim.gnm_rho': 0.0, 'loss.m': 0.0,
                  'loss.noise_mul': 0.0, 'train.drw_epochs': 0},
}


def paper(top1: float, head: float | None = None, medium: float | None = None,
          tail: float | None = None) -> dict[str, float]:
  """The paper's published numbers of a cell (in %), keyed like results.json's metrics."""
  values = dict(zip(METRICS, (top1, head, medium, tail)))
  return {k: float(v) for k, v in values.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Cell:
  """One row of a study: a name (its folder), a label, config overrides ({'a.b': value}), the
  config file it starts from when not the study's, and the paper's numbers (`paper(...)`)."""
  name: str
  label: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  config: str = ''
  paper: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Study:
  """A table: `cells` and/or a `grid` ({'a.b': [values]}: a cell per combination) over the base
  `config` (a config file, `file.py:arg`; relative paths from the repository root or the
  current directory) with `overrides` for every cell (a cell's own win), `seeds` runs per cell
  (`--seeds` changes it), `devices` the device count
  the numbers are for (None: not stated, not flagged). With `select='val'` the report names the
  cell with the best validation top-1 (the config needs `data.val_fraction` > 0); `paired`
  compares cells seed by seed."""
  title: str
  config: str
  cells: Sequence[Cell] = ()
  grid: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # of every cell
  seeds: int = 1
  devices: int | None = None
  select: str = ''
  paired: Sequence[tuple[str, str]] = ()  # (cell a, cell b): a - b per seed, its mean and SE
  notes: str = ''
  name: str = ''

  def expand(self, only: Sequence[str] | None = None) -> tuple[Cell, ...]:
    """The explicit cells, then one per combination of the grid's values (named
    'lr=0.01,epochs=10' after the last part of each key); with `only`, those of these names."""
    cells = list(self.cells)
    if self.grid:
      keys = list(self.grid)
      for values in itertools.product(*(self.grid[k] for k in keys)):
        name = ','.join(f'{k.rsplit(".", 1)[-1]}={_text(v)}' for k, v in zip(keys, values))
        cells.append(Cell(name, name, dict(zip(keys, values))))
    names = [c.name for c in cells]
    if not cells:
      raise ValueError(f'study {self.name!r} has no cells and no grid.')
    if len(set(names)) != len(names):
      raise ValueError(f'study {self.name!r} names a cell twice: {names}.')
    for c in cells:
      if not c.name or '/' in c.name or c.name.startswith('.'):
        raise ValueError(f'study {self.name!r}: cell name {c.name!r} cannot be a folder name.')
    for pair in self.paired:
      if not set(pair) <= set(names):
        raise ValueError(f'study {self.name!r}: paired {pair} names a cell it does not have.')
    return tuple(c for c in cells if only is None or c.name in only)

  def cell_config(self, cell: Cell) -> str:
    return cell.config or self.config


def _text(value: Any) -> str:
  return repr(value) if isinstance(value, str) and not value else str(value)


def load_study(name_or_path: str) -> Study:
  """The study of `configs/studies/<name>.py`, or of a study file's path (`get_study()`);
  ValueError naming the known studies when there is none."""
  path = pathlib.Path(name_or_path)
  if name_or_path.endswith('.py'):
    if not path.is_file():
      raise ValueError(f'--study={name_or_path}: no such file.')
  else:
    path = STUDIES_DIR / f'{name_or_path}.py'
    if not path.is_file():
      raise ValueError(f'--study={name_or_path}: no such study; known: {", ".join(known_studies())}'
                       ' (or give the path of a study file, e.g. my_study.py).')
  spec = importlib.util.spec_from_file_location(f'ltdpt_study_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_study'):
    raise ValueError(f'--study={name_or_path}: {path} defines no get_study().')
  study = module.get_study()
  if not isinstance(study, Study):
    raise ValueError(f'--study={name_or_path}: get_study() returned a {type(study).__name__}, '
                     'not a ltdpt_jax.studies.Study.')
  study = dataclasses.replace(study, name=study.name or path.stem)
  study.expand()  # names checked
  return study


def known_studies() -> list[str]:
  return sorted(p.stem for p in STUDIES_DIR.glob('*.py') if not p.stem.startswith('_'))


def resolve_config(spec: str, *, paths: str = 'absolute') -> str:
  """`file.py[:arg]` with the file found from the current directory, else from the repository
  root, and written as `paths` says: 'absolute'; 'cwd' (relative to the current directory when
  it is below it, else absolute); 'repo' (relative to the repository root: what a TPU VM, which
  runs from its copy of the repository, is given). ValueError when there is no such file."""
  path, sep, arg = spec.partition(':')
  found = next((p.resolve() for p in (pathlib.Path(path), REPO / path) if p.is_file()), None)
  if found is None:
    raise ValueError(f'config file {path!r} not found (from {os.getcwd()} or {REPO}).')
  if paths == 'repo':
    try:
      found = found.relative_to(REPO)
    except ValueError:
      raise ValueError(f'config file {found} is outside the repository {REPO}; a remote launcher '
                       'ships the repository only: move the file into it.') from None
  elif paths == 'cwd' and found.is_relative_to(pathlib.Path.cwd().resolve()):
    found = found.relative_to(pathlib.Path.cwd().resolve())
  return f'{found}{sep}{arg}'


def flag_value(value: Any) -> str:
  """A config value as config_flags parses it back from `--config.a.b=<text>`."""
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, (int, float, str)):
    return str(value)
  raise ValueError(f'cell override value {value!r}: only str, int, float and bool can be flags.')


def override_key(arg: str) -> str:
  """'a.b' of a '--config.a.b=value' flag."""
  return arg[len('--config.'):].split('=', 1)[0]


def cell_args(study: Study, cell: Cell, seed: int, workdir: str, overrides: Sequence[str] = (),
              *, paths: str = 'cwd') -> list[str]:
  """The flags of `python -m ltdpt_jax.main` that run (cell, seed): the cell's config file (its
  path as `resolve_config(paths=...)` writes it), the cell's overrides, the command line's
  `--config.a.b=v` `overrides` (every cell's), the seed and the workdir. ValueError when an
  override sets what the cell or the seed sets."""
  cell_overrides = {**study.overrides, **cell.overrides}
  mine = set(cell_overrides) | {'train.seed'}
  clash = sorted({override_key(a) for a in overrides} & mine)
  if clash:
    raise ValueError(f'--config.{clash[0]} is set by the study (cell {cell.name!r}'
                     f'{" or --seeds" if "train.seed" in clash else ""}); leave it out.')
  return [f'--config={resolve_config(study.cell_config(cell), paths=paths)}',
          *(f'--config.{k}={flag_value(v)}' for k, v in cell_overrides.items()),
          *overrides, f'--config.train.seed={int(seed)}', f'--workdir={workdir}']


def config_from_args(args: Sequence[str]):
  """The config `python -m ltdpt_jax.main <args>` would run (its `--config` and `--config.*`
  flags, parsed by ml_collections like the command does; other flags are ignored)."""
  args = ['ltdpt_jax'] + [
      f'--config={resolve_config(a.split("=", 1)[1])}' if a.startswith('--config=') else a
      for a in args if a.startswith('--config')]
  fv = flags.FlagValues()
  # sys_argv: the arguments the override flags are found in (by default sys.argv).
  config_flags.DEFINE_config_file('config', None, flag_values=fv, lock_config=True,
                                  sys_argv=args)
  fv(args)
  return fv['config'].value


def workdir_of(args: Sequence[str]) -> str:
  return next(a.split('=', 1)[1] for a in args if a.startswith('--workdir='))


def cell_workdir(workdir: str, cell: Cell, seed: int) -> str:
  return os.path.join(workdir, cell.name, f'seed_{seed}')


def seeds_of(study: Study, seeds: int | None, first_seed: int | None) -> list[int]:
  """train.seed of each run of a cell: first_seed (default 0) .. + seeds (default the study's)."""
  n = int(study.seeds if seeds is None else seeds)
  if n < 1:
    raise ValueError(f'--seeds={n} must be >= 1.')
  first = int(first_seed or 0)
  return list(range(first, first + n))
