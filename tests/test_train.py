"""The train loop: resume equivalence, SIGTERM, evaluation of checkpoints, device counts, metrics.

All runs train `train_utils.tiny_config()` (6 synthetic classes, 123 images, batch 16: 7 steps
per epoch, 14 steps, DRW from step 7, checkpoints every 3 steps and at epoch ends). They share
the session's compilation cache (tests/conftest.py), so only the first run compiles.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import struct
import sys
import textwrap
import types

import jax
import numpy as np
import pytest

from ltdpt_jax import data as data_lib
from ltdpt_jax import metrics as metrics_lib
from ltdpt_jax import models
from ltdpt_jax import run_dir
from ltdpt_jax import sharding
from ltdpt_jax import train

import cli_worker
import fake_gcs
import fork_server
import train_utils

STEPS = 14          # 2 epochs of 7 steps
DRW_START = 7       # DRW (class weights, halved GNM) from the 8th step on
EVAL_STEPS = (7, 14)


_config = train_utils.run_config


def _env(num_devices=None, **extra):
  env = train_utils.subprocess_env(num_devices)
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _steps(workdir) -> list[int]:
  root = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _records(workdir, split):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if r['split'] == split]


def _assert_states_equal(a, b, *, rtol=0.0, atol=0.0, of_largest=0.0):
  """Equal trees of equal arrays; or within rtol/atol of each other; or (of_largest) each leaf
  within that fraction of its largest magnitude."""
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    if of_largest:
      np.testing.assert_allclose(x, y, rtol=0, atol=of_largest * float(np.max(np.abs(y))))
    elif rtol or atol:
      np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
    else:
      np.testing.assert_array_equal(x, y)


@pytest.fixture(scope='module')
def straight(cli_straight):
  """The session's uninterrupted run (every checkpoint kept; tests/conftest.py): the reference of
  the tests below, which copy it before they write. tests/test_main.py checks that it equals
  `train.train_and_evaluate` of the same config, bit for bit."""
  return types.SimpleNamespace(config=cli_straight.config, workdir=cli_straight.workdir,
                               results=_read_json(cli_straight.workdir / 'results.json'))


def test_straight_run_layout(straight):
  """Checkpoints every 3 steps and at epoch ends, evals at epoch ends, DRW from step 7."""
  assert _steps(straight.workdir) == [3, 6, 7, 9, 12, 14]
  for step in EVAL_STEPS:
    assert (straight.workdir / f'eval_{step}.json').exists()
  assert straight.results['last'] == _read_json(straight.workdir / 'eval_14.json')
  drw = {r['step']: r['drw'] for r in _records(straight.workdir, 'train')}
  # Records average contiguous windows of steps; the epoch end at step 7 closes one.
  assert DRW_START in drw, drw
  assert all(v == 0.0 for s, v in drw.items() if s <= DRW_START), drw
  assert all(v == 1.0 for s, v in drw.items() if s > DRW_START), drw
  state, step = cli_worker.restore_state(straight.workdir)
  assert step == STEPS and int(state['step']) == STEPS


def test_resume_mid_epoch_and_across_drw_equals_straight_run(straight, tmp_path, monkeypatch):
  """Stopped in the middle of epoch 1 (step 5) and of the DRW epoch (step 10), restarted twice:
  the same parameters, optimiser and GNM state, and eval records as the run that went through;
  with keep_checkpoints=2 only the last 2 checkpoints and the best one survive the restarts."""
  config = _config(keep_checkpoints=2)
  stops = {5, 10}
  monkeypatch.setattr(run_dir.Preemption, 'should_stop', lambda self, step: step in stops)
  workdir = str(tmp_path / 'stopped')

  # Which step's metrics the host fetches, against how many steps it has dispatched.
  fetches, dispatched = [], [0]
  prefetch, write_metrics = sharding.prefetch_to_device, train._write_train_metrics

  def counting_prefetch(it, *args, **kwargs):
    dispatched[0] = it.step  # resumed runs start at the restored step
    for item in prefetch(it, *args, **kwargs):
      dispatched[0] += 1
      yield item

  def recording_write(writer, ready, progress, setup, step, checkpointer):
    fetches.append((step, dispatched[0]))
    return write_metrics(writer, ready, progress, setup, step, checkpointer)
  monkeypatch.setattr(sharding, 'prefetch_to_device', counting_prefetch)
  monkeypatch.setattr(train, '_write_train_metrics', recording_write)

  assert train.train_and_evaluate(config, workdir) == {'stopped_at': 5}
  assert max(_steps(workdir)) == 5
  state5, _ = cli_worker.restore_state(workdir, 5)
  assert int(state5['step']) == 5
  meta = _read_json(pathlib.Path(workdir) / 'checkpoints' / '5' / 'meta' / 'metadata')
  assert meta['epoch'] == 0

  assert train.train_and_evaluate(config, workdir) == {'stopped_at': 10}
  assert max(_steps(workdir)) == 10
  assert _read_json(os.path.join(workdir, 'eval_7.json')) == _read_json(
      straight.workdir / 'eval_7.json')

  results = train.train_and_evaluate(config, workdir)
  assert results['last'] == straight.results['last']
  assert results['best'] == straight.results['best']
  for step in (12, 14):
    _assert_states_equal(cli_worker.restore_state(workdir, step)[0],
                         cli_worker.restore_state(straight.workdir, step)[0])
  best = straight.results['best']['step']
  assert _steps(workdir) == sorted({12, 14, best})
  # While training, the host only fetches metrics of steps before the one just dispatched; it
  # waits for the latest step only where the checkpoint's copy of the state waits for it anyway:
  # at a checkpoint (3, 6, 7, 9, 12), where it stops (5, 10) and at the end (14).
  for fetched, latest in fetches:
    assert fetched < latest or fetched in (3, 5, 6, 7, 9, 10, 12, 14), fetches
  assert any(fetched == latest - 1 for fetched, latest in fetches), fetches


# The run with the crop on the device against the straight run, each leaf within this fraction of
# its largest value. Measured with the tests' XLA flags: 3e-6 after 9 steps, 6e-6 after 14 (0 with
# XLA's default emitters); one pixel per image one level brighter: 6e-2 after 9 steps.
CROP_TOLERANCE = dict(of_largest=1e-4)


def test_crop_on_device_run_equals_straight_run(straight, tmp_path, monkeypatch):
  """config.data.crop_on_device: the workers ship the stored images and the step crops them;
  the crops are Pillow's to the bit, so the run is the straight run (the same evaluations, the
  states to float32 rounding: the step with the crop is another program, whose arithmetic XLA
  may fuse in another order), and a resume may move the crop back to the host (steps 1-10 on
  the device, 11-14 on the host)."""
  config = _config()
  config.data.crop_on_device = True
  workdir = str(tmp_path / 'device_crop')
  monkeypatch.setattr(run_dir.Preemption, 'should_stop', lambda self, step: step == 10)
  assert train.train_and_evaluate(config, workdir) == {'stopped_at': 10}
  _assert_states_equal(cli_worker.restore_state(workdir, 9)[0],
                       cli_worker.restore_state(straight.workdir, 9)[0], **CROP_TOLERANCE)
  assert _read_json(os.path.join(workdir, 'eval_7.json')) == _read_json(
      straight.workdir / 'eval_7.json')
  monkeypatch.undo()
  config.data.crop_on_device = False
  results = train.train_and_evaluate(config, workdir)
  assert results['last'] == straight.results['last']
  _assert_states_equal(cli_worker.restore_state(workdir, STEPS)[0],
                       cli_worker.restore_state(straight.workdir, STEPS)[0], **CROP_TOLERANCE)


def test_rerun_of_finished_run_does_not_train(straight, tmp_path, monkeypatch):
  workdir = tmp_path / 'finished'
  shutil.copytree(straight.workdir, workdir)
  before = {name: (workdir / name).read_bytes()
            for name in ('metrics.jsonl', 'results.json', 'eval_14.json')}
  steps = _steps(workdir)

  def no_training(*args, **kwargs):
    raise AssertionError('a finished run must not train again')
  monkeypatch.setattr(sharding, 'prefetch_to_device', no_training)
  results = train.train_and_evaluate(straight.config, str(workdir))
  assert json.loads(json.dumps(results)) == _read_json(workdir / 'results.json')
  assert _steps(workdir) == steps
  for name, content in before.items():
    assert (workdir / name).read_bytes() == content, name


def test_sigterm_saves_checkpoint_and_exits_cleanly_then_resumes(straight, tmp_path):
  """A real SIGTERM to the CLI mid-run (the process sends it to itself once step 3 is done):
  exit code 75 (stopped: rerun to resume), a checkpoint of the step it stopped at (4, which no
  schedule saves), no traceback; the same command then finishes with the straight run's
  parameters."""
  workdir = tmp_path / 'sigterm'
  cmd = cli_worker.cli_command(straight.config, workdir, worker=True)
  proc = fork_server.run(cmd, env=_env(LTDPT_TEST_SIGTERM_AT_STEP=3), cwd=train_utils.REPO,
                         timeout=600)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 75, out[-3000:]  # stopped by a signal: rerun to resume
  assert 'LTDPT_TEST_SIGTERM_AT_STEP=3: sending SIGTERM' in out
  assert 'Traceback' not in out, out[-3000:]
  assert 'SIGTERM received' in out
  stopped = max(_steps(workdir))
  assert 3 <= stopped < STEPS and stopped == 4
  assert f'Stopped at step {stopped} after a checkpoint' in out
  assert not any(p.name.endswith('tmp') for p in (workdir / 'checkpoints').iterdir())
  state, _ = cli_worker.restore_state(workdir)
  assert int(state['step']) == stopped

  results = train.train_and_evaluate(straight.config, str(workdir))  # the same run, resumed
  assert results['last'] == straight.results['last']
  _assert_states_equal(cli_worker.restore_state(workdir, STEPS)[0],
                       cli_worker.restore_state(straight.workdir, STEPS)[0])


def test_evaluate_checkpoint_matches_in_training_eval(straight, tmp_path):
  workdir = tmp_path / 'eval_copy'
  shutil.copytree(straight.workdir, workdir)
  for p in workdir.glob('eval_*.json'):
    p.unlink()
  record = train.evaluate_checkpoint(straight.config, str(workdir))
  assert record == _read_json(straight.workdir / 'eval_14.json')
  assert _read_json(workdir / 'eval_14.json') == record
  record = train.evaluate_checkpoint(straight.config, str(workdir), step=7)
  assert record == _read_json(straight.workdir / 'eval_7.json')
  assert record['epoch'] == 1 and record['step'] == 7
  with pytest.raises(run_dir.SetupError, match=r'step 5 .*available steps: \[3, 6, 7, 9, 12, 14\]'):
    train.evaluate_checkpoint(straight.config, str(workdir), step=5)
  with pytest.raises(run_dir.SetupError, match='No checkpoint in .*empty.*--mode=train'):
    train.evaluate_checkpoint(straight.config, str(tmp_path / 'empty'))


def test_evaluators_with_their_own_periods_in_training_and_eval_mode(straight, tmp_path):
  """A second evaluator every 2 epochs runs at step 14 only (the end), under its own name, and
  ranks the checkpoints when it is the best metric; --mode=eval runs both."""
  config = _config()
  config.evals.val = {'type': 'longtail', 'every_epochs': 2}
  config.train.best_metric = 'val/accuracy'
  workdir = tmp_path / 'two'
  results = train.train_and_evaluate(config, str(workdir))
  assert sorted(p.name for p in workdir.glob('*_*.json')) == [
      'eval_14.json', 'eval_7.json', 'run_info.json', 'val_14.json']
  val = _read_json(workdir / 'val_14.json')
  assert val == _read_json(straight.workdir / 'eval_14.json')  # the same evaluation, renamed
  assert [r['step'] for r in _records(workdir, 'val')] == [14]
  assert [r['step'] for r in _records(workdir, 'eval')] == list(EVAL_STEPS)
  assert results['last'] == results['best'] == val
  for name in ('val_14.json', 'eval_7.json'):
    (workdir / name).unlink()
  record = train.evaluate_checkpoint(config, str(workdir), step=14)
  assert record == val == _read_json(workdir / 'val_14.json')
  assert _read_json(workdir / 'eval_14.json') == _read_json(straight.workdir / 'eval_14.json')
  train.evaluate_checkpoint(config, str(workdir), step=7)
  assert _read_json(workdir / 'eval_7.json') == _read_json(straight.workdir / 'eval_7.json')
  assert _read_json(workdir / 'val_7.json') == _read_json(workdir / 'eval_7.json')


def test_log_start_when_the_backend_reports_no_flops(caplog):
  """A compiled step whose cost_analysis has no FLOPs (or fails) does not stop training."""
  config = train_utils.tiny_config()
  model = models.build_model(config.model, 6, 16)
  info = types.SimpleNamespace(name='test', num_train=100, num_eval=30, class_names=('a',) * 6,
                               class_counts=np.arange(6))
  setup = types.SimpleNamespace(config=config, model=model, image_size=16, info=info,
                                num_classes=6, steps_per_epoch=6, total_steps=12,
                                drw_start_step=6, backbone_sha256=None, pretraining=False)

  class NoFlops:
    def cost_analysis(self):
      return [{}]

  class Fails:
    def cost_analysis(self):
      raise RuntimeError('not supported by this backend')

  class Flops:
    def cost_analysis(self):
      return {'flops': 3.2e9}

  with caplog.at_level('INFO'):
    for compiled in (NoFlops(), Fails()):
      out = train._log_start(setup, compiled)  # pylint: disable=protected-access
      assert out['step_flops'] is None and out['parameters']['head'] == 32 * 6
    assert 'Train step: n/a FLOPs (n/a per image)' in caplog.text
    assert train._log_start(setup, Flops())['step_flops'] == 3.2e9  # pylint: disable=protected-access
    assert 'Train step: 3.2e+09 FLOPs (2e+08 per image)' in caplog.text  # batch 16, 1 device


def test_resume_with_another_config_fails_clearly(straight, tmp_path):
  """Restarting a stopped run with a config that changes the data order or the model: a
  SetupError naming the problem and config.json, and no new checkpoint."""
  workdir = tmp_path / 'changed'
  shutil.copytree(straight.workdir, workdir)
  for step in _steps(workdir):
    if step > 7:
      shutil.rmtree(workdir / 'checkpoints' / str(step))
  config = _config()
  config.data.batch_size = 8
  with pytest.raises(run_dir.SetupError, match=r'checkpoints/7: data\.batch_size 16 -> 8\. .*'
                                             r'config\.json.*--allow_config_change'):
    train.train_and_evaluate(config, str(workdir))
  # Accepted deliberately, the data order still cannot resume from that checkpoint.
  with pytest.raises(run_dir.SetupError, match=r'step 7.*same data order'):
    train.train_and_evaluate(config, str(workdir), allow_config_change=True)
  config = _config()
  config.model.num_fr_prompts = 3
  with pytest.raises(run_dir.SetupError, match=r'model\.num_fr_prompts 2 -> 3'):
    train.train_and_evaluate(config, str(workdir))
  with pytest.raises(run_dir.SetupError, match=r'step 7 .* holds other arrays than this config '
                                             r'trains.*params/fr_prompts.*config\.json'):
    train.train_and_evaluate(config, str(workdir), allow_config_change=True)
  assert _steps(workdir) == [3, 6, 7]
  assert not list(workdir.glob('checkpoints/*.damaged'))  # a mismatch is not damage


_FOUR_DEVICES = textwrap.dedent('''
    import json, sys
    import jax
    assert jax.device_count() == 4, jax.devices()
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    sys.path.insert(0, 'tests')
    import cli_worker, train_utils
    from ltdpt_jax import train
    config = train_utils.run_config()
    eval_dir, resume_dir = sys.argv[1:3]
    record = train.evaluate_checkpoint(config, eval_dir, step=14)
    results = train.train_and_evaluate(config, resume_dir)
    print('RESULT', json.dumps({'eval': record, 'results': results}))
''')


@pytest.mark.slow
def test_checkpoint_of_one_device_restores_onto_four(straight, tmp_path):
  """A 1-device checkpoint evaluated with 4 devices gives the same record; resumed (from step 7,
  at the DRW switch) with 4 devices, training ends at the 1-device parameters (float tolerance:
  the gradient all-reduce sums in another order)."""
  eval_dir, resume_dir = tmp_path / 'eval4', tmp_path / 'resume4'
  shutil.copytree(straight.workdir, eval_dir)
  (eval_dir / 'eval_14.json').unlink()
  shutil.copytree(straight.workdir, resume_dir)
  for step in _steps(resume_dir):
    if step > 7:
      shutil.rmtree(resume_dir / 'checkpoints' / str(step))
  for name in ('eval_14.json', 'results.json'):
    (resume_dir / name).unlink()
  out = fork_server.run([sys.executable, '-c', _FOUR_DEVICES, str(eval_dir), str(resume_dir)],
                        env=_env(4), cwd=train_utils.REPO, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  result = json.loads(out.stdout.split('RESULT ', 1)[1])
  assert result['eval'] == _read_json(straight.workdir / 'eval_14.json')
  assert _read_json(eval_dir / 'eval_14.json') == result['eval']
  assert _steps(resume_dir) == [3, 6, 7, 9, 12, 14]
  four, _ = cli_worker.restore_state(resume_dir, STEPS)
  one, _ = cli_worker.restore_state(straight.workdir, STEPS)
  assert int(four['step']) == STEPS
  _assert_states_equal(four['params'], one['params'], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Metrics: JSON lines and TensorBoard event files.
# ---------------------------------------------------------------------------------------------

def _crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), bit by bit: an oracle written apart from tensorboardX's, so the
  project's event files pass `_read_tfrecords` only when their records carry the CRCs that
  TensorBoard checks."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = _crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_tfrecords(path) -> list[bytes]:
  """TFRecord framing (what TensorBoard reads), with both CRCs checked."""
  data = pathlib.Path(path).read_bytes()
  records, pos = [], 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack('<Q', header)
    (header_crc,) = struct.unpack('<I', data[pos + 8:pos + 12])
    assert header_crc == _masked_crc(header)
    payload = data[pos + 12:pos + 12 + length]
    (payload_crc,) = struct.unpack('<I', data[pos + 12 + length:pos + 16 + length])
    assert payload_crc == _masked_crc(payload)
    records.append(payload)
    pos += 16 + length
  assert pos == len(data)
  return records


def test_metrics_jsonl_records(straight):
  train_records = _records(straight.workdir, 'train')
  eval_records = _records(straight.workdir, 'eval')
  for r in train_records:
    for key in ('loss', 'images_per_s', 'eta_s', 'steps_per_s', 'lr', 'epoch', 'grad_norm'):
      assert isinstance(r[key], float), (key, r)
    assert np.isfinite(r['loss']) and r['images_per_s'] > 0 and r['eta_s'] >= 0
  steps = [r['step'] for r in train_records]
  assert steps == sorted(steps) and steps[-1] == STEPS and len(set(steps)) == len(steps)
  assert train_records[-1]['eta_s'] == 0.0
  assert [r['step'] for r in eval_records] == list(EVAL_STEPS)

  info = data_lib.get_dataset_info(straight.config.data)
  counts = np.asarray(info.class_counts)
  for r in eval_records:
    stored = _read_json(straight.workdir / f"eval_{r['step']}.json")
    assert r['accuracy'] == stored['accuracy']
    # Independent recomputation of the groups from per-class accuracy (5 test images a class).
    per_class = np.asarray(stored['per_class_accuracy'])
    correct = per_class * straight.config.data.num_test_per_class
    assert r['accuracy'] == pytest.approx(correct.sum() / (5 * len(counts)))
    for name, sel in (('head', counts > 100), ('medium', (counts >= 20) & (counts <= 100)),
                      ('tail', counts < 20)):
      assert f'{name}_accuracy' in r  # present even when the group is empty
      if sel.any():
        assert r[f'{name}_accuracy'] == pytest.approx(per_class[sel].mean())
      else:
        assert r[f'{name}_accuracy'] is None
      assert r[f'{name}_classes'] == int(sel.sum())
  assert eval_records[0]['head_accuracy'] is None  # tiny config: no class has > 100 images
  assert eval_records[0]['medium_classes'] > 0 and eval_records[0]['tail_classes'] > 0


def test_tensorboard_event_files(straight):
  assert list((straight.workdir / 'tb').glob('events.out.tfevents.*'))
  scalars = _tb_scalars(straight.workdir / 'tb')
  train_records = _records(straight.workdir, 'train')
  assert sorted(scalars['train/loss']) == [r['step'] for r in train_records]
  for r in train_records:
    assert scalars['train/loss'][r['step']] == pytest.approx(r['loss'], rel=1e-6)
    assert scalars['train/images_per_s'][r['step']] == pytest.approx(r['images_per_s'], rel=1e-6)
  for step in EVAL_STEPS:
    stored = _read_json(straight.workdir / f'eval_{step}.json')
    assert scalars['eval/accuracy'][step] == pytest.approx(stored['accuracy'], rel=1e-6)
    assert scalars['eval/medium_accuracy'][step] == pytest.approx(stored['medium_accuracy'])
  assert 'eval/head_accuracy' not in scalars  # an empty group is not plotted as 0


def _tb_scalars(tb_dir):
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars = {}
  for path in sorted(pathlib.Path(tb_dir).glob('events.out.tfevents.*')):
    for payload in _read_tfrecords(path):
      event = event_pb2.Event.FromString(payload)
      for v in event.summary.value:
        scalars.setdefault(v.tag, {})[event.step] = v.simple_value
  return scalars


def test_metric_writer_on_a_remote_workdir(tmp_path, monkeypatch):
  """gs:// cannot be appended to: records are staged locally and copied whole on flush/close;
  a second writer (a resumed run) continues the same JSON lines."""
  fake_gcs.serve(tmp_path / 'gcs', monkeypatch)  # gs://bucket/run is tmp_path/gcs/bucket/run
  workdir = tmp_path / 'gcs' / 'bucket' / 'run'
  writer = metrics_lib.MetricWriter('gs://bucket/run', enabled=True, sync_every_s=1e9)
  writer.write(1, 'train', {'loss': np.float32(1.5), 'images_per_s': 10.0})
  assert not (workdir / 'metrics.jsonl').exists()
  writer.flush()
  assert len((workdir / 'metrics.jsonl').read_text().splitlines()) == 1
  writer.write(2, 'eval', {'accuracy': 0.5, 'head_accuracy': None})
  writer.close()
  writer = metrics_lib.MetricWriter('gs://bucket/run', enabled=True)
  writer.write(3, 'train', {'loss': 2.0})
  writer.close()
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [(r['step'], r['split']) for r in records] == [(1, 'train'), (2, 'eval'), (3, 'train')]
  assert records[0]['loss'] == 1.5 and records[1]['head_accuracy'] is None
  assert len(list((workdir / 'tb').glob('events.out.tfevents.*'))) == 2
  scalars = _tb_scalars(workdir / 'tb')
  assert scalars['train/loss'] == {1: 1.5, 3: 2.0}
  assert scalars['eval/accuracy'] == {2: 0.5} and 'eval/head_accuracy' not in scalars
