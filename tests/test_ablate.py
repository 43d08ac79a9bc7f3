"""The ablation in miniature (`python -m ltdpt_jax.tools.ablate`): cells as normal runs, the table."""

from __future__ import annotations

import json
import sys

import pytest

import cli_worker
import train_utils
from ltdpt_jax import models
from ltdpt_jax import run_dir
from ltdpt_jax import train
from ltdpt_jax.models import ltdpt
from ltdpt_jax.tools import ablate


def _toy():
  """`train_utils.tiny_config()` for one short epoch (2 steps)."""
  return train_utils.tiny_config(epochs=1, drw_epochs=0, batch_size=32)


def test_rows_are_config_overrides():
  c = train_utils.load_config('demo')
  for row, (_, overrides) in ablate.ROWS.items():
    cell = ablate.cell_config(c, row, 7)
    assert cell.train.seed == 7
    for key, value in overrides.items():
      section, field = key.split('.')
      assert cell[section][field] == value, (row, key)
  assert ablate.cell_config(c, 'carry', 0).model.prompt_mode == 'carry'
  assert c.model.prompt_mode == 'replace' and c.train.seed == 0  # the config itself unchanged
  assert set(ablate.DEFAULT_ROWS) == {'linear', 'vpt', 'fr', 'fr_br', 'carry'}
  with pytest.raises(ValueError, match="unknown or no rows \\['nope'\\]"):
    ablate.parse_rows('linear,nope')


def test_table_mean_and_sample_std():
  cells = {'linear': {0: {'accuracy': 0.5, 'head_accuracy': 0.9, 'medium_accuracy': 0.4,
                          'tail_accuracy': None},
                      1: {'accuracy': 0.7, 'head_accuracy': 0.9, 'medium_accuracy': 0.6,
                          'tail_accuracy': None}},
           'fr_br': {0: {'accuracy': 0.8, 'head_accuracy': 1.0, 'medium_accuracy': 0.7,
                         'tail_accuracy': 0.25}}}
  table = ablate.build_table(cells, {'seeds': [0, 1]})
  lin = table['rows'][0]
  assert lin['accuracy']['mean'] == pytest.approx(0.6)
  assert lin['accuracy']['std'] == pytest.approx(0.1414213, rel=1e-5)  # ddof 1
  assert lin['tail_accuracy'] == {'mean': None, 'std': None, 'n': 0}
  text = ablate.markdown_table(table)
  assert '| Linear probe (head only) | 60.00 ± 14.14 | 90.00 ± 0.00 | 50.00 ± 14.14 | n/a | 2 |' \
      in text
  assert '| FR + BR: LT-DPT (C) | 80.00 | 100.00 | 70.00 | 25.00 | 1 |' in text


def test_ablation_command_runs_at_toy_size_and_writes_its_table(tmp_path):
  """Two rows x one seed of a tiny config through the CLI, each cell a run of its own (the mean +- std
  over several seeds is checked on recorded cells above)."""
  workdir = tmp_path / 'ablate'
  args = [sys.executable, '-m', 'ltdpt_jax.tools.ablate', f'--config={train_utils.REPO / "configs/demo.py"}',
          f'--workdir={workdir}', '--seeds=1', '--rows=linear,fr_br',
          *cli_worker.cli_overrides(_toy())]
  proc = cli_worker.run_cli(args, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = json.loads((workdir / 'ablation.json').read_text())
  assert [r['row'] for r in table['rows']] == ['linear', 'fr_br'] and table['seeds'] == [0]
  md = (workdir / 'ablation.md').read_text()
  assert md.startswith('| method | top-1 | head | medium | tail | seeds |')
  assert md in proc.stdout and 'Linear probe (head only)' in md and 'FR + BR: LT-DPT (C)' in md
  for row in ('linear', 'fr_br'):
    for seed in (0,):
      cell = workdir / row / f'seed_{seed}'
      results = json.loads((cell / 'results.json').read_text())
      config = json.loads((cell / 'config.json').read_text())
      assert config['model']['method'] == row and config['train']['seed'] == seed
      got = table['rows'][['linear', 'fr_br'].index(row)]['cells'][str(seed)]['accuracy']
      assert got == results['last']['accuracy']
  lin = table['rows'][0]
  assert lin['accuracy']['n'] == 1 and lin['accuracy']['std'] is None
  run_info = json.loads((workdir / 'linear' / 'seed_0' / 'run_info.json').read_text())
  assert run_info['parameters']['fr_prompts'] == 0 and run_info['parameters']['trainable'] == (
      run_info['parameters']['head'])


def test_rerun_returns_finished_cells_and_bad_rows_fail(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'ablate')
  first = ablate.run_ablation(_toy(), workdir, rows=['linear'], seeds=1)
  calls = []
  real = train.Setup
  monkeypatch.setattr(train, 'Setup', lambda *a, **k: calls.append(1) or real(*a, **k))
  again = ablate.run_ablation(_toy(), workdir, rows=['linear'], seeds=1)
  assert again['rows'][0]['cells'] == first['rows'][0]['cells']
  assert len(calls) == 1  # the finished cell was not trained again (Setup only read its data)
  with pytest.raises(run_dir.SetupError, match='unknown or no rows'):
    ablate.run_ablation(_toy(), workdir, rows='vpt,xyz')
  bad = _toy()
  bad.model.num_br_blocks = 9
  with pytest.raises(run_dir.SetupError, match="row 'fr_br'.*num_br_blocks=9"):
    ablate.run_ablation(bad, workdir, rows='linear,fr_br')


def test_linear_probe_is_head_only_and_matches_the_straightforward_path():
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  c = _toy()
  c.model.method = 'linear'
  model = models.build_model(c.model, 6, 16)
  report = ltdpt.parameter_report(model, 16, frozen_patterns=('^backbone/',))
  assert report['trainable'] == report['head'] == 32 * 6 and report['fr_prompts'] == 0
  params = ltdpt.init_params(model, jax.random.key(0), 16)
  assert sorted(params) == ['backbone', 'head']
  full = models.build_model(c.model, 6, 16, skip_dead_prompt_work=False)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  a = model.apply({'params': params}, x)
  b = full.apply({'params': params}, x)
  np.testing.assert_allclose(a['logits'], b['logits'], atol=1e-6)
  # The feature is the plain ViT's final-LayerNorm CLS: the backbone as pretrained.
  from ltdpt_jax.models import vit  # pylint: disable=g-import-not-at-top
  plain = vit.VisionTransformer(4, 32, 2, 2, 64)
  np.testing.assert_allclose(a['feature'], plain.apply({'params': params['backbone']}, x)['cls'],
                             atol=1e-6)
