"""Config drift on resume: every key `run_dir.RESUME_ALLOWED` names may change between a stop and
the resume, all at once, and the run ends as the uninterrupted one (the keys that change how the
sums run, attention padding and remat, to float rounding); each change is recorded."""

from __future__ import annotations

import fnmatch
import json

import jax
import numpy as np

import cli_worker
import train_utils
from ltdpt_jax import run_dir
from ltdpt_jax import train

STEPS = 14

# A new value for each key of RESUME_ALLOWED a random-init run has (the backbone file's path and
# SHA-256 are tried on a real file in tests/test_run_dir.py).
CHANGES = {
    'train.log_every_steps': 3, 'train.checkpoint_every_steps': 4, 'train.keep_checkpoints': 25,
    'train.eval_every_epochs': 2, 'train.plots': True, 'train.attention_stats': True,
    'evals.eval.every_epochs': 1, 'data.eval_batch_size': 8, 'data.num_workers': 1,
    'data.data_dir': '/no/tfds/for/synthetic/data', 'data.split_dir': '/no/split/files/either',
    'data.source': 'files', 'data.image_root': '/no/files/for/synthetic/data/either',
    'data.crop_on_device': True, 'model.attention': 'xla', 'model.pad_attention_to': 8,
    'model.remat': True, 'model.remat_policy': 'nothing',
}


def test_the_changes_cover_every_allowed_key_a_random_init_run_has():
  flat = run_dir.flatten_config(train_utils.run_config().to_dict())
  for pattern in run_dir.RESUME_ALLOWED:
    if pattern.startswith('model.checkpoint'):
      continue
    assert any(fnmatch.fnmatchcase(k, pattern) for k in CHANGES), pattern
  for key, value in CHANGES.items():
    assert run_dir.is_allowed(key) and flat[key] != value, key


def test_every_allowed_key_may_change_on_resume(cli_straight, tmp_path):
  straight = cli_straight.workdir
  resumed = cli_worker.copy_killed_after(straight, 6, tmp_path / 'resumed')
  config = train_utils.run_config()
  config.update_from_flattened_dict(CHANGES)
  results = train.train_and_evaluate(config, str(resumed))  # refused changes would raise
  assert results['last']['step'] == STEPS
  [record] = [json.loads(line) for line in (resumed / 'config_changes.jsonl').read_text()
              .splitlines()]
  assert record['resumed_at_step'] == 6 and record['accepted'] == 'allowed'
  assert set(record['changes']) == set(CHANGES)
  assert json.loads((resumed / 'config.json').read_text())['model']['remat_policy'] == 'nothing'
  a, _ = cli_worker.restore_state(resumed, STEPS)
  b, _ = cli_worker.restore_state(straight, STEPS)
  for x, y in zip(jax.tree.leaves(a['params']), jax.tree.leaves(b['params'])):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
