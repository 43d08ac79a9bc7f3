"""A gs:// workdir end to end: training stopped and resumed, evaluation, metrics, Orbax
checkpoints and predictions, through a real fsspec file system registered under `gs`
(tests/fake_gcs.py: a local directory served as a bucket; Orbax takes its GCS code paths).

The reference is the session's uninterrupted CLI run on a local disk (`cli_straight`, the same
config): every evaluation file must be byte-identical, as for a local resume.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from ltdpt_jax import run_dir
from ltdpt_jax import train
from ltdpt_jax.data import splits
from ltdpt_jax.tools.predict import Predictor

import cli_worker
import fake_gcs
import train_utils

WORKDIR = 'gs://bucket/runs/tiny'


def _records(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """The bucket's local directory (gs://bucket/x is <gcs>/bucket/x)."""
  fake_gcs.serve(tmp_path / 'gcs', monkeypatch)
  return tmp_path / 'gcs'


def test_train_stop_resume_eval_and_predict_on_a_gs_workdir(cli_straight, gcs, monkeypatch):
  config = train_utils.run_config(keep_checkpoints=2)  # old checkpoints deleted on the bucket
  stops = {5}
  monkeypatch.setattr(run_dir.Preemption, 'should_stop', lambda self, step: step in stops)
  assert train.train_and_evaluate(config, WORKDIR) == {'stopped_at': 5}  # a preemption
  results = train.train_and_evaluate(config, WORKDIR)  # the relaunch resumes from step 5
  local = gcs / 'bucket' / 'runs' / 'tiny'
  assert results['workdir'] == WORKDIR

  for name in ('eval_7.json', 'eval_14.json'):  # what ran is what a local run computes
    assert (local / name).read_bytes() == (cli_straight.workdir / name).read_bytes(), name
  assert json.loads((local / 'results.json').read_text())['last'] == results['last']
  assert json.loads((local / 'config.json').read_text())['train']['keep_checkpoints'] == 2
  assert json.loads((local / 'run_info.json').read_text())['dataset'] == 'synthetic'

  # Metrics: each step once across the stop, TensorBoard event files of both runs.
  train_steps = [r['step'] for r in _records(local / 'metrics.jsonl') if r['split'] == 'train']
  assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 14
  assert 5 in train_steps
  assert len(list((local / 'tb').glob('events.out.tfevents.*'))) == 2

  # Orbax on GCS: commit files instead of renames, old steps deleted (keep 2 + the best).
  steps = sorted(int(p.name) for p in (local / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps[-2:] == [12, 14] and len(steps) <= 3, steps
  for step in steps:
    assert (local / 'checkpoints' / str(step) / 'commit_success.txt').exists(), step
  assert not [p for p in (local / 'checkpoints').iterdir() if 'tmp' in p.name]

  # --mode=eval of the bucket's checkpoint rewrites the same record.
  before = (local / 'eval_14.json').read_bytes()
  record = train.evaluate_checkpoint(config, WORKDIR, step=14)
  assert record['accuracy'] == results['last']['accuracy']
  assert (local / 'eval_14.json').read_bytes() == before

  # Predictions from the bucket equal those from the local run of the same config.
  images = np.random.default_rng(0).integers(0, 256, (5, 20, 24, 3), np.uint8)
  remote = Predictor.from_workdir(WORKDIR).predict(images)
  reference = Predictor.from_workdir(str(cli_straight.workdir)).predict(images)
  np.testing.assert_array_equal(remote['prediction'], reference['prediction'])
  np.testing.assert_allclose(remote['probabilities'], reference['probabilities'], rtol=1e-6)


def test_split_files_are_read_from_a_bucket(gcs):
  """config.data.split_dir=gs://...: found and parsed through etils.epath, OLTR layout."""
  folder = gcs / 'bucket' / 'splits' / 'Places_LT'
  folder.mkdir(parents=True)
  (folder / 'Places_LT_val.txt').write_text('val_256/a.jpg 3\nval_256/b.jpg 0\n')
  path = splits.fetch_split_file('Places_LT_val.txt', split_dir='gs://bucket/splits')
  assert str(path) == 'gs://bucket/splits/Places_LT/Places_LT_val.txt'
  assert splits.read_split_file(path) == [('val_256/a.jpg', 3), ('val_256/b.jpg', 0)]
  with pytest.raises(FileNotFoundError, match='gs://bucket/splits/Places_LT_train.txt'):
    splits.fetch_split_file('Places_LT_train.txt', split_dir='gs://bucket/splits')


def test_an_image_folder_on_a_bucket_is_one_line(tmp_path):
  """Image folders are read with os.scandir: a gs:// folder says how to bring it local."""
  config = train_utils.tiny_config()
  config.data.dataset = 'folder'
  config.data.train_dir = 'gs://bucket/images/train'
  config.data.eval_dir = str(tmp_path)
  out = cli_worker.run_cli(cli_worker.cli_command(config, tmp_path / 'run'),
                           timeout=120)
  line = cli_worker.one_error_line(out, 2, 'gs://bucket/images/train', 'is remote', 'gcsfuse')
  assert 'config.data.train_dir' in line
