"""Multi-host training: two local processes (2 CPU devices each) through the CLI, one workdir.

The processes find each other through `jax.distributed.initialize` (main.py reads
LTDPT_COORDINATOR / LTDPT_NUM_PROCESSES / LTDPT_PROCESS_ID), each loads its half of every global
batch, and their gloo all-reduce makes one data-parallel step over 4 devices. The result must be
the one-process run's (same global batch 16, float tolerance for the reduction order), with one
set of metrics and per-process data-iterator states in the shared checkpoints. The run is
stopped half-way by a SIGTERM to process 1 alone: both processes must stop after the same step
(JAX's preemption sync) with a checkpoint, and the restarted command finishes the run.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import types

import jax
import numpy as np
import pytest

from ltdpt_jax import train

import cli_worker
import train_utils

pytestmark = pytest.mark.slow

STEPS = 14
TIMEOUT_S = 480


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


_config = train_utils.run_config


def _launch(workdir, cache, *, worker=False, cwds=None, workdir_arg=None, **extra_env):
  """Starts the two processes of one multi-host run; returns their Popen objects. The logs go
  beside `workdir`; `cwds`: the working directory of each process (default the repository);
  `workdir_arg`: the --workdir they get (default `workdir`)."""
  port = _free_port()
  procs = []
  for i in range(2):
    env = train_utils.subprocess_env(num_devices=2)
    env.update(LTDPT_COORDINATOR=f'127.0.0.1:{port}', LTDPT_NUM_PROCESSES='2',
               LTDPT_PROCESS_ID=str(i),
               # one cache per process id: a process never reads an entry the other is writing
               JAX_COMPILATION_CACHE_DIR=str(cache / f'process_{i}'))
    env.update({k: str(v) for k, v in extra_env.items()})
    log = open(workdir.parent / f'{workdir.name}_process_{i}.log', 'a')
    procs.append(subprocess.Popen(
        cli_worker.cli_command(_config(), workdir_arg or workdir, worker=worker), env=env,
        cwd=cwds[i] if cwds else train_utils.REPO, stdout=log, stderr=subprocess.STDOUT))
    log.close()
  return procs


def _wait(procs, workdir, timeout=TIMEOUT_S, code=0) -> list[str]:
  deadline = time.time() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.time()))
  except subprocess.TimeoutExpired:
    pass
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  logs = [(workdir.parent / f'{workdir.name}_process_{i}.log').read_text() for i in range(2)]
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == code, f'process {i} exited with {p.returncode}:\n{log[-4000:]}'
  return logs


def _steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  path = cli_worker.cache_dir(tmp_path_factory)
  with cli_worker.use_compilation_cache(path):
    yield path


@pytest.fixture(scope='module')
def run(cache, tmp_path_factory):
  """A two-process run stopped by a SIGTERM to process 1 after its first checkpoint, then
  restarted with the same command (no fault injection) until it finished."""
  workdir = tmp_path_factory.mktemp('multihost') / 'run'
  t0 = time.perf_counter()
  procs = _launch(workdir, cache, worker=True, LTDPT_TEST_STEP_DELAY=0.5)
  deadline = time.time() + TIMEOUT_S
  while not (workdir / 'checkpoints' / '3').is_dir():
    if any(p.poll() is not None for p in procs) or time.time() > deadline:
      _wait(procs, workdir, timeout=1)
      pytest.fail('the run ended or stalled before its first checkpoint')
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  stopped_logs = _wait(procs, workdir, code=75)  # stopped by a signal: rerun to resume
  stopped_steps = _steps(workdir)
  t1 = time.perf_counter()
  logs = _wait(_launch(workdir, cache), workdir)
  print(f'two-process run: {t1 - t0:.1f} s until stopped, {time.perf_counter() - t1:.1f} s resumed')
  return types.SimpleNamespace(workdir=workdir, stopped_logs=stopped_logs,
                               stopped_steps=stopped_steps, logs=logs)


def test_sigterm_to_one_process_stops_both_at_the_same_step(run):
  stopped = max(run.stopped_steps)
  assert 3 <= stopped < STEPS, run.stopped_steps
  for log in run.stopped_logs:
    assert 'Traceback' not in log
    assert f'Stopped at step {stopped} after a checkpoint' in log, log[-3000:]
  assert 'SIGTERM' in run.stopped_logs[1]
  for log in run.logs:
    assert 'Traceback' not in log
    assert f'Resumed from the checkpoint of step {stopped}' in log


def test_two_processes_match_one_process(run, tmp_path):
  assert '2 process(es), 4 device(s)' in run.logs[0]
  one_dir = tmp_path / 'one'
  results = train.train_and_evaluate(_config(), str(one_dir))  # 1 process, 1 device here
  assert jax.process_count() == 1

  assert set(_steps(run.workdir)) >= {3, 6, 7, 9, 12, 14}
  for step in (7, STEPS):
    two, _ = cli_worker.restore_state(run.workdir, step)
    one, _ = cli_worker.restore_state(one_dir, step)
    assert int(two['step']) == step
    for a, b in zip(jax.tree.leaves(two['params']), jax.tree.leaves(one['params'])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  with open(run.workdir / 'results.json') as f:
    two_results = json.load(f)
  assert two_results['last']['accuracy'] == results['last']['accuracy']
  assert two_results['last']['per_class_accuracy'] == results['last']['per_class_accuracy']
  assert two_results['last']['num_examples'] == results['last']['num_examples'] == 30


def test_shared_workdir_contents(run):
  """Process 0 alone writes metrics and JSON (no step twice, even across the restart); each
  process its own data-iterator state."""
  data_iter = run.workdir / 'checkpoints' / str(STEPS) / 'data_iter'
  iter_files = sorted(p.name for p in data_iter.glob('*.json'))
  assert iter_files == ['process_0-of-2.json', 'process_1-of-2.json']
  states = [json.loads((data_iter / f).read_text()) for f in iter_files]
  assert states[0] == states[1] and states[0]['step'] == STEPS
  with open(run.workdir / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  train_steps = [r['step'] for r in records if r['split'] == 'train']
  assert train_steps == sorted(set(train_steps)) and train_steps[-1] == STEPS
  assert max(run.stopped_steps) in train_steps  # metrics flushed when stopping
  assert [r['step'] for r in records if r['split'] == 'eval'] == [7, STEPS]
  assert not list(run.workdir.glob('*.tmp'))


def test_two_process_checkpoint_resumes_in_one_process(run, tmp_path):
  """The checkpoint of step 7 (2 processes x 2 devices) resumed here (1 process, 1 device):
  the data-iterator state of another process count is read, training ends at the same
  parameters (float tolerance) and evaluation at the same accuracy."""
  workdir = tmp_path / 'resumed_here'
  shutil.copytree(run.workdir, workdir)
  for step in _steps(workdir):
    if step > 7:
      shutil.rmtree(workdir / 'checkpoints' / str(step))
  assert not (workdir / 'checkpoints' / '7' / 'data_iter' / 'process_0-of-1.json').exists()
  results = train.train_and_evaluate(_config(), str(workdir))
  a, _ = cli_worker.restore_state(workdir, STEPS)
  b, _ = cli_worker.restore_state(run.workdir, STEPS)
  assert int(a['step']) == STEPS
  for x, y in zip(jax.tree.leaves(a['params']), jax.tree.leaves(b['params'])):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  with open(run.workdir / 'results.json') as f:
    assert results['last']['accuracy'] == json.load(f)['last']['accuracy']


def test_a_workdir_each_host_has_alone_is_refused(cache, tmp_path):
  """Hosts with their own disks: the relative --workdir=run means another directory in each
  process's working directory, as a local path does on each host of a TPU slice. Both processes
  refuse the run in one line before anything is built, and neither writes a checkpoint."""
  hosts = [tmp_path / 'host_0', tmp_path / 'host_1']
  for h in hosts:
    h.mkdir()
  logs_at = tmp_path / 'run'  # where _launch/_wait keep the logs (run_process_*.log)
  procs = _launch(logs_at, cache, cwds=hosts, workdir_arg='run')
  logs = _wait(procs, logs_at, timeout=240, code=2)
  for log in logs:
    errors = [line for line in log.splitlines() if line.startswith('Error: ')]
    assert len(errors) == 1, log[-3000:]
    assert 'is not shared by the 2 processes' in errors[0] and 'process(es) [1]' in errors[0]
    assert 'gs://' in errors[0] and 'Traceback' not in log
  for h in hosts:
    assert not (h / 'run' / 'checkpoints').exists()
