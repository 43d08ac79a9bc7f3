"""The command line (`python -m ltdpt_jax.main`): a run, --mode=eval, and bad input.

Bad input must fail before any work, with exit code 2, one message naming what is wrong and how
to fix it, no traceback, and no workdir created. A diverging run stops with exit code 3 and keeps
its last good checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import sys

import jax
import numpy as np
import pytest

import cli_worker
import npz_utils
import train_utils
from ltdpt_jax import train

REPO = train_utils.REPO


_run = cli_worker.run_cli


def _main(*flags):
  return [sys.executable, '-m', 'ltdpt_jax.main', *flags]


def _assert_clean_failure(out, workdir, *needles):
  line = cli_worker.one_error_line(out, 2, *needles)
  assert not workdir.exists()
  return line


# ---------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------

def test_unknown_config_key(tmp_path):
  workdir = tmp_path / 'wd'
  out = _run(_main('--config=configs/demo.py', f'--workdir={workdir}',
                   '--config.model.no_such=1'))
  _assert_clean_failure(out, workdir, '--config.model.no_such', 'config_lib.py')
  out = _run(_main('--config=configs/demo.py', f'--workdir={workdir}',
                   '--config.train.epochs=1', '--config.model.metod=fr'))
  _assert_clean_failure(out, workdir, '--config.model.metod', "did you mean 'method'")


def test_config_file_that_does_not_load(tmp_path):
  """A mistyped path, a Python error in the file, its get_config refusing its argument: one
  line naming the file and what is wrong (no ml_collections traceback)."""
  workdir = tmp_path / 'wd'
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_config(:\n')
  cases = [('configs/nope.py', ('--config=configs/nope.py', 'no such file')),
           (str(broken), ('broken.py', 'SyntaxError', 'line 1')),
           ('configs/cifar100_lt.py:ratio=7', ('ratio=7', 'ratio must be one of 200, 100')),
           ('configs/cifar100_lt.py:rati=7',
            ("Unknown config argument 'rati'", "['image_root', 'ratio', 'source']"))]
  for spec, needles in cases:
    out = _run(_main(f'--config={spec}', f'--workdir={workdir}'))
    _assert_clean_failure(out, workdir, *needles)
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_invalid_values(tmp_path):
  workdir = tmp_path / 'wd'
  out = _run(_main('--config=configs/demo.py', f'--workdir={workdir}',
                   '--config.model.method=xyz'))
  _assert_clean_failure(out, workdir, "config.model.method='xyz'", "'vpt', 'fr', 'fr_br'")
  out = _run(_main('--config=configs/demo.py', f'--workdir={workdir}',
                   '--config.data.batch_size=abc'))
  _assert_clean_failure(out, workdir, '--config.data.batch_size=abc')
  out = _run(_main('--config=configs/demo.py', f'--workdir={workdir}',
                   '--config.train.epochs=4', '--config.train.drw_epochs=9'))
  _assert_clean_failure(out, workdir, 'config.train.drw_epochs=9', 'config.train.epochs=4')


def test_missing_tfds_dataset(tmp_path):
  workdir, data_dir = tmp_path / 'wd', tmp_path / 'empty'
  data_dir.mkdir()
  out = _run(_main('--config=configs/cifar100_lt.py', f'--workdir={workdir}',
                   f'--config.data.data_dir={data_dir}'), timeout=120)
  _assert_clean_failure(out, workdir, "'cifar100'", str(data_dir), 'tfds build cifar100',
                        '--file_format=array_record')


def test_backbone_checkpoint_of_another_architecture(tmp_path):
  workdir, npz = tmp_path / 'wd', tmp_path / 'vit_w48.npz'
  npz_utils.write_random_checkpoint(npz, patch=4, width=48, depth=4, heads=4, mlp=128, grid=8)
  out = _run(_main('--config=configs/demo.py', f'--workdir={workdir}',
                   f'--config.model.checkpoint={npz}'), timeout=180)
  _assert_clean_failure(out, workdir, 'width 64', 'width 48', str(npz))


def test_eval_of_workdir_without_checkpoint(tmp_path):
  workdir = tmp_path / 'wd'
  out = _run(_main('--config=configs/demo.py', f'--workdir={workdir}', '--mode=eval'))
  _assert_clean_failure(out, workdir, 'No checkpoint in', '--mode=train')


# ---------------------------------------------------------------------------------------------
# A run and its evaluation.
# ---------------------------------------------------------------------------------------------

_config = train_utils.run_config


@pytest.fixture(scope='module')
def cli_run(cli_straight):
  return cli_straight.workdir, cli_straight.log


def _expected_parameters(c) -> tuple[int, int]:
  """(trainable, frozen) counts of an LT-DPT 'fr_br' model, from its config: prompts, keys,
  alpha, beta and head; the ViT's patch embedding, CLS, positions, blocks and final norm."""
  v, m = c.model.vit, c.model
  d, depth, grid = v.hidden_size, v.num_layers, c.data.image_size // v.patch_size
  trainable = (depth * m.num_fr_prompts * d + m.num_groups * m.num_br_blocks * m.num_br_prompts
               * d + m.num_groups * d + 2 + d * c.data.num_classes)
  block = 2 * 2 * d + 4 * (d * d + d) + (d * v.mlp_dim + v.mlp_dim) + (v.mlp_dim * d + d)
  frozen = (v.patch_size ** 2 * 3 * d + d) + d + (1 + grid * grid) * d + depth * block + 2 * d
  return trainable, frozen


def _check_eval_record(record, class_counts, thresholds) -> None:
  """An eval record against its own confusion matrix: counts, top-1, per class, per group
  (tail < thresholds[0] <= medium <= thresholds[1] < head, sample-weighted, None when empty)."""
  confusion = np.asarray(record['confusion'])
  rows, correct = confusion.sum(1), np.diag(confusion)
  assert record['num_examples'] == confusion.sum()
  assert record['accuracy'] == pytest.approx(correct.sum() / confusion.sum())
  tail_max, head_min = thresholds
  groups = {'tail': [c for c, n in enumerate(class_counts) if n < tail_max],
            'medium': [c for c, n in enumerate(class_counts) if tail_max <= n <= head_min],
            'head': [c for c, n in enumerate(class_counts) if n > head_min]}
  for group, classes in groups.items():
    assert record[f'{group}_classes'] == len(classes)
    want = correct[classes].sum() / rows[classes].sum() if classes else None
    assert record[f'{group}_accuracy'] == pytest.approx(want), group
  for c, row in enumerate(record['per_class']):
    assert row['train_count'] == class_counts[c] and row['eval_count'] == rows[c]
    assert row['accuracy'] == pytest.approx(correct[c] / rows[c])
    assert c in groups[row['group']]
  assert record['mean_per_class_accuracy'] == pytest.approx(np.mean(correct / rows))


def test_cli_run_reports_and_writes(cli_run):
  """What the run wrote, against the config and its data: run_info.json (architecture,
  parameter counts, the classes' training images), each eval_<step>.json (against its own
  confusion matrix: 5 test images of each of the 6 classes), metrics.jsonl (the evaluations
  equal to those files; train records to step 14 with the cosine learning rate and DRW from
  epoch 2), results.json; and the log lines a user reads say the same."""
  workdir, log = cli_run
  c = _config()
  with open(workdir / 'config.json') as f:
    assert json.load(f)['model']['vit']['hidden_size'] == 32
  info = json.loads((workdir / 'run_info.json').read_text())
  assert info['architecture'] == 'ViT(patch 4, width 32, depth 2, heads 2, mlp 64)'
  trainable, frozen = _expected_parameters(c)
  assert (info['parameters']['trainable'], info['parameters']['frozen']) == (trainable, frozen)
  # The exponential profile (LDAM): n_i = int(40 * (1/5)^(i/5)); 123 images, 7 steps of 16.
  counts = [int(40 * 0.2 ** (i / 5)) for i in range(6)]
  assert info['class_counts'] == counts and sum(counts) // 16 == 7
  evals = {step: json.loads((workdir / f'eval_{step}.json').read_text()) for step in (7, 14)}
  for step, record in evals.items():
    assert (record['step'], record['epoch']) == (step, step // 7)
    assert np.asarray(record['confusion']).sum(1).tolist() == [5] * 6
    assert [r['name'] for r in record['per_class']] == info['class_names']
    _check_eval_record(record, counts, (20, 100))
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  for r in (r for r in records if r['split'] == 'eval'):
    assert {k: v for k, v in r.items() if k not in ('split', 'time')} == {
        k: v for k, v in evals[r['step']].items() if k in r}
  assert [r['step'] for r in records if r['split'] == 'eval'] == [7, 14]
  train_records = [r for r in records if r['split'] == 'train']
  assert train_records[-1]['step'] == 14
  peak = c.optim.lr * 16 / 128  # the lr at batch 128, scaled to batch 16; cosine to 0
  for r in train_records:
    assert r['lr'] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * r['step'] / 14)),
                                    abs=1e-9)
    assert r['epoch'] == pytest.approx(r['step'] / 7) and r['drw'] == float(r['step'] > 7)
  results = json.loads((workdir / 'results.json').read_text())
  assert results['last'] == evals[14]
  for needle in ('num_groups: 4', '1 process(es), 1 device(s)',
                 f'trainable={trainable:,}, frozen={frozen:,}',
                 f'{sum(counts)} train images, 6 classes, 30 eval images; 7 steps/epoch, 14 steps',
                 f'Train step: {info["step_flops"]:.3g} FLOPs', 'Done.'):
    assert needle in log, needle
  def percent(x):
    return 'n/a' if x is None else f'{100 * x:.2f}%'

  for step, r in evals.items():
    groups = ' | '.join(f'{g} {percent(r[g + "_accuracy"])}' for g in ('head', 'medium', 'tail'))
    line = f'[eval step {step}, epoch {step // 7}] top-1 {percent(r["accuracy"])} | {groups}'
    assert line in log, line
  assert 'did not provide metrics' not in log


def test_cli_run_equals_train_and_evaluate(cli_run, tmp_path):
  """The command line is a thin shell over `train.train_and_evaluate`: for the same config the
  same results, the same evaluation records and the same final checkpoint, bit for bit."""
  workdir, _ = cli_run
  direct = tmp_path / 'direct'
  results = train.train_and_evaluate(_config(), str(direct))
  with open(workdir / 'results.json') as f:
    cli_results = json.load(f)
  assert cli_results['workdir'] == str(workdir) and results['workdir'] == str(direct)
  assert {**cli_results, 'workdir': None} == {**json.loads(json.dumps(results)), 'workdir': None}
  for name in ('eval_7.json', 'eval_14.json'):
    assert (workdir / name).read_bytes() == (direct / name).read_bytes(), name
  cli_state, cli_step = cli_worker.restore_state(workdir)
  state, step = cli_worker.restore_state(direct)
  assert cli_step == step == 14
  for a, b in zip(jax.tree.leaves(cli_state), jax.tree.leaves(state), strict=True):
    np.testing.assert_array_equal(a, b)


def test_cli_eval_of_a_checkpoint_step(cli_run, tmp_path):
  workdir, _ = cli_run
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  (copy / 'eval_7.json').unlink()
  out = _run(cli_worker.cli_command(_config(), copy, '--mode=eval', '--checkpoint_step=7'))
  assert out.returncode == 0, out.stderr[-4000:]
  with open(copy / 'eval_7.json') as f, open(workdir / 'eval_7.json') as g:
    assert json.load(f) == json.load(g)
  assert (copy / 'eval_14.json').read_bytes() == (workdir / 'eval_14.json').read_bytes()
  out = _run(cli_worker.cli_command(_config(), copy, '--mode=eval', '--checkpoint_step=5'))
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert 'No checkpoint of step 5' in out.stderr and '[3, 6, 7, 9, 12, 14]' in out.stderr


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  """Parameters NaN from step 5 on (as a huge learning rate makes them): the run stops with exit
  code 3 and one message before checkpointing step 6; checkpoint 3 stays intact and finite."""
  workdir = tmp_path / 'nan'
  out = _run(cli_worker.cli_command(_config(), workdir, worker=True),
             LTDPT_TEST_NAN_AFTER_STEP=5)
  assert out.returncode == 3, out.stderr[-4000:]
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['3']
  assert 'Traceback' not in out.stderr
  errors = [line for line in out.stderr.splitlines() if line.startswith('Error: ')]
  assert len(errors) == 1 and 'finite' in errors[0] and '--config.optim.lr' in errors[0]
  assert 'the last checkpoint (step 3) is intact' in errors[0]
  state, _ = cli_worker.restore_state(workdir, 3)
  assert int(state['step']) == 3
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))
  assert not (workdir / 'eval_7.json').exists()


def test_divergence_before_the_first_checkpoint_says_none_was_written(tmp_path):
  """NaN from step 1 on, before the first checkpoint (step 3): exit code 3 and a message that
  claims no checkpoint."""
  workdir = tmp_path / 'nan'
  out = _run(cli_worker.cli_command(_config(), workdir, worker=True),
             LTDPT_TEST_NAN_AFTER_STEP=1)
  line = cli_worker.one_error_line(out, 3, 'no checkpoint was written', '--config.optim.lr')
  assert 'intact' not in line
  assert not [p for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()]
