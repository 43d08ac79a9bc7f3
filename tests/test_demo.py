"""configs/demo.py as a user runs it: its shipped backbone loads (SHA-256 checked and recorded),
and the recipe learns the downstream task."""

from __future__ import annotations

import json


import train_utils
from ltdpt_jax import train


def test_the_demo_config_trains_its_shipped_backbone(tmp_path):
  """One epoch of the demo (24 steps, the README's full run is 16): the backbone is the shipped
  file, and the evaluation is far above chance (1 in 20 classes; it reaches about 50%)."""
  config = train_utils.load_config('demo')
  config.train.epochs, config.train.drw_epochs = 1, 0
  results = train.train_and_evaluate(config, str(tmp_path / 'demo'))
  run_info = json.loads((tmp_path / 'demo' / 'run_info.json').read_text())
  assert run_info['backbone_sha256'] == config.model.checkpoint_sha256
  assert run_info['backbone_checkpoint'] == config.model.checkpoint
  assert results['last']['step'] == 24 and results['last']['num_examples'] == 20 * 40
  assert results['last']['accuracy'] > 0.3, results['last']['accuracy']
