"""The command line (`python -m ltdpt_jax.main`): a run, --mode=eval, and bad input.

Bad input must fail before any work, with exit code 2, one message naming what is wrong and how
to fix it, no traceback, and no workdir created. A diverging run stops with exit code 3 and keeps
its last good checkpoint.
"""

from __future__ import annotations

import json
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


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return cli_worker.cache_dir(tmp_path_factory)


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

def test_unknown_config_key(tmp_path, cache):
  workdir = tmp_path / 'wd'
  out = _run(_main('--config=configs/demo.py', f'--workdir={workdir}',
                   '--config.model.no_such=1'), cache)
  _assert_clean_failure(out, workdir, '--config.model.no_such', 'config_lib.py')
  out = _run(_main('--config=configs/demo.py', f'--workdir={workdir}',
                   '--config.train.epochs=1', '--config.model.metod=fr'), cache)
  _assert_clean_failure(out, workdir, '--config.model.metod', "did you mean 'method'")


def test_config_file_that_does_not_load(tmp_path, cache):
  """A mistyped path, a Python error in the file, its get_config refusing its argument: one
  line naming the file and what is wrong (no ml_collections traceback)."""
  workdir = tmp_path / 'wd'
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_config(:\n')
  cases = [('configs/nope.py', ('--config=configs/nope.py', 'no such file')),
           (str(broken), ('broken.py', 'SyntaxError', 'line 1')),
           ('configs/cifar100_lt.py:ratio=7', ('ratio=7', 'ratio must be one of 200, 100')),
           ('configs/cifar100_lt.py:rati=7', ("Unknown config argument 'rati'", "['ratio']"))]
  for spec, needles in cases:
    out = _run(_main(f'--config={spec}', f'--workdir={workdir}'), cache)
    _assert_clean_failure(out, workdir, *needles)
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_invalid_values(tmp_path, cache):
  workdir = tmp_path / 'wd'
  out = _run(_main('--config=configs/demo.py', f'--workdir={workdir}',
                   '--config.model.method=xyz'), cache)
  _assert_clean_failure(out, workdir, "config.model.method='xyz'", "'vpt', 'fr', 'fr_br'")
  out = _run(_main('--config=configs/demo.py', f'--workdir={workdir}',
                   '--config.data.batch_size=abc'), cache)
  _assert_clean_failure(out, workdir, '--config.data.batch_size=abc')
  out = _run(_main('--config=configs/demo.py', f'--workdir={workdir}',
                   '--config.train.epochs=4', '--config.train.drw_epochs=9'), cache)
  _assert_clean_failure(out, workdir, 'config.train.drw_epochs=9', 'config.train.epochs=4')


def test_missing_tfds_dataset(tmp_path, cache):
  workdir, data_dir = tmp_path / 'wd', tmp_path / 'empty'
  data_dir.mkdir()
  out = _run(_main('--config=configs/cifar100_lt.py', f'--workdir={workdir}',
                   f'--config.data.data_dir={data_dir}'), cache, timeout=120)
  _assert_clean_failure(out, workdir, "'cifar100'", str(data_dir), 'tfds build cifar100',
                        '--file_format=array_record')


def test_backbone_checkpoint_of_another_architecture(tmp_path, cache):
  workdir, npz = tmp_path / 'wd', tmp_path / 'vit_w48.npz'
  npz_utils.write_random_checkpoint(npz, patch=4, width=48, depth=4, heads=4, mlp=128, grid=8)
  out = _run(_main('--config=configs/demo.py', f'--workdir={workdir}',
                   f'--config.model.checkpoint={npz}'), cache, timeout=180)
  _assert_clean_failure(out, workdir, 'width 64', 'width 48', str(npz))


def test_eval_of_workdir_without_checkpoint(tmp_path, cache):
  workdir = tmp_path / 'wd'
  out = _run(_main('--config=configs/demo.py', f'--workdir={workdir}', '--mode=eval'), cache)
  _assert_clean_failure(out, workdir, 'No checkpoint in', '--mode=train')


# ---------------------------------------------------------------------------------------------
# A run and its evaluation.
# ---------------------------------------------------------------------------------------------

_config = train_utils.run_config


@pytest.fixture(scope='module')
def cli_run(cli_straight):
  return cli_straight.workdir, cli_straight.log


def test_cli_run_reports_and_writes(cli_run):
  workdir, log = cli_run
  for needle in ('num_groups: 4', '1 process(es), 1 device(s)', 'Parameters: ', 'trainable=',
                 'frozen=', 'FLOPs', '[eval step 14, epoch 2] top-1', 'head n/a', 'Done.'):
    assert needle in log, needle
  assert 'did not provide metrics' not in log
  for name in ('config.json', 'run_info.json', 'results.json', 'eval_7.json', 'eval_14.json',
               'metrics.jsonl'):
    assert (workdir / name).exists(), name
  with open(workdir / 'config.json') as f:
    assert json.load(f)['model']['vit']['hidden_size'] == 32


def test_cli_run_equals_train_and_evaluate(cli_run, cache, tmp_path):
  """The command line is a thin shell over `train.train_and_evaluate`: for the same config the
  same results, the same evaluation records and the same final checkpoint, bit for bit."""
  workdir, _ = cli_run
  direct = tmp_path / 'direct'
  with cli_worker.use_compilation_cache(cache):
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


def test_cli_eval_of_a_checkpoint_step(cli_run, cache, tmp_path):
  workdir, _ = cli_run
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  (copy / 'eval_7.json').unlink()
  out = _run(cli_worker.cli_command(_config(), copy, '--mode=eval', '--checkpoint_step=7'),
             cache)
  assert out.returncode == 0, out.stderr[-4000:]
  with open(copy / 'eval_7.json') as f, open(workdir / 'eval_7.json') as g:
    assert json.load(f) == json.load(g)
  assert (copy / 'eval_14.json').read_bytes() == (workdir / 'eval_14.json').read_bytes()
  out = _run(cli_worker.cli_command(_config(), copy, '--mode=eval', '--checkpoint_step=5'),
             cache)
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert 'No checkpoint of step 5' in out.stderr and '[3, 6, 7, 9, 12, 14]' in out.stderr


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, cache):
  """Parameters NaN from step 5 on (as a huge learning rate makes them): the run stops with exit
  code 3 and one message before checkpointing step 6; checkpoint 3 stays intact and finite."""
  workdir = tmp_path / 'nan'
  out = _run(cli_worker.cli_command(_config(), workdir, worker=True), cache,
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


def test_divergence_before_the_first_checkpoint_says_none_was_written(tmp_path, cache):
  """NaN from step 1 on, before the first checkpoint (step 3): exit code 3 and a message that
  claims no checkpoint."""
  workdir = tmp_path / 'nan'
  out = _run(cli_worker.cli_command(_config(), workdir, worker=True), cache,
             LTDPT_TEST_NAN_AFTER_STEP=1)
  line = cli_worker.one_error_line(out, 3, 'no checkpoint was written', '--config.optim.lr')
  assert 'intact' not in line
  assert not [p for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()]
