"""Multi-host training: two local processes (2 CPU devices each) through the CLI, one workdir.

The processes find each other through `jax.distributed.initialize` (cli.py reads LTDPT_COORDINATOR
/ LTDPT_NUM_PROCESSES / LTDPT_PROCESS_ID), each loads its half of every global batch, and their
gloo all-reduce makes one data-parallel step over 4 devices. The result must be the one-process
run's, with one set of metrics and per-process data-iterator states in the shared checkpoints.
The run is launched three times: process 1 kills itself mid-run (process 0 stops in one line:
a lost process), then sends itself SIGTERM (both stop after the same step), then it finishes.
Faults come at chosen steps (tests/cli_worker.py); time limits are safety nets only.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import types

import jax
import numpy as np
import pytest

from ltdpt_jax import train

import cli_worker
import fork_server
import train_utils

pytestmark = pytest.mark.slow

STEPS = 14
TIMEOUT_S = 480  # a safety net: every wait ends when the processes exit
HEARTBEAT_S = 10  # LTDPT_HEARTBEAT_TIMEOUT_S of the launch that loses a process
# The session's persistent compilation cache serves the launches after the first, except on JAX
# 0.12: there (CPU, gloo) two processes that load their programs from it hang in the first step
# of a resumed run.
NO_CACHE = {'JAX_ENABLE_COMPILATION_CACHE': 'false'} if jax.__version_info__ >= (0, 12) else {}


def _reserve_port() -> socket.socket:
  """A bound (never listening) socket whose port the coordinator uses while the socket is open.

  gRPC, which serves JAX's coordination service, binds with SO_REUSEPORT, so it shares the port
  with this socket; meanwhile the kernel gives the port to no one else (a port found by binding
  and releasing could be taken in between, e.g. by a test session running beside this one).
  """
  s = socket.socket()
  s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
  s.bind(('127.0.0.1', 0))
  return s


_config = train_utils.run_config


def _launch(workdir, name, *, worker=False, ids=(0, 1), cwds=None, workdir_arg=None,
            env_of=None, **extra_env):
  """Starts processes `ids` of one two-process run (one launch, called `name`); returns the
  launch: its processes, their logs (beside `workdir`) and its reserved port. `cwds`: the
  working directory of each process (default the repository); `workdir_arg`: the --workdir they
  get (default `workdir`); `env_of`: more environment variables of some process ids."""
  port = _reserve_port()
  address = f'127.0.0.1:{port.getsockname()[1]}'
  procs, logs = {}, {}
  for i in ids:
    env = train_utils.subprocess_env(num_devices=2)
    env.update(LTDPT_COORDINATOR=address, LTDPT_NUM_PROCESSES='2', LTDPT_PROCESS_ID=str(i),
               **NO_CACHE)
    env.update({k: str(v) for k, v in {**extra_env, **(env_of or {}).get(i, {})}.items()})
    logs[i] = workdir.parent / f'{workdir.name}_{name}_process_{i}.log'
    procs[i] = fork_server.start(
        cli_worker.cli_command(_config(), workdir_arg or workdir, worker=worker), env=env,
        cwd=cwds[i] if cwds else train_utils.REPO, log=logs[i])
  return types.SimpleNamespace(procs=procs, logs=logs, port=port, address=address)


def _wait(launch, timeout=TIMEOUT_S, code=0) -> dict[int, str]:
  """Waits for the processes of `launch` to exit (killing them past `timeout`, a safety net);
  checks their exit codes (`code`: one for all, or a dict by process id); returns their logs."""
  deadline = time.time() + timeout
  try:
    for p in launch.procs.values():
      p.wait(timeout=max(1.0, deadline - time.time()))
  except subprocess.TimeoutExpired:
    pass
  finally:
    for p in launch.procs.values():
      if p.poll() is None:
        p.kill()
        p.wait()
    launch.port.close()
  logs = {i: path.read_text() for i, path in launch.logs.items()}
  for i, p in launch.procs.items():
    want = code[i] if isinstance(code, dict) else code
    assert p.returncode == want, f'process {i} exited with {p.returncode}:\n{logs[i][-4000:]}'
  return logs


def _errors(log: str) -> list[str]:
  return [line for line in log.splitlines() if line.startswith('Error: ')]


def _steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """One two-process run in three launches of the same command: process 1 kills itself
  (SIGKILL) after step 6 and process 0 stops on its own; the rerun resumes, and process 1 sends
  itself SIGTERM after step 8 (both stop after the same step); the third launch finishes."""
  workdir = tmp_path_factory.mktemp('multihost') / 'run'
  t0 = time.perf_counter()
  lost = _launch(workdir, 'lost', worker=True, LTDPT_HEARTBEAT_TIMEOUT_S=HEARTBEAT_S,
                 env_of={1: {'LTDPT_TEST_SIGKILL_AT_STEP': 6}})
  try:
    lost.procs[1].wait(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    pass  # _wait stops the processes and reports
  t1 = time.perf_counter()
  lost_logs = _wait(lost, code={0: 75, 1: -9})  # 75: stopped, rerun to resume
  t2 = time.perf_counter()
  lost_steps = _steps(workdir)
  stopped = _launch(workdir, 'stopped', worker=True,
                    env_of={1: {'LTDPT_TEST_SIGTERM_AT_STEP': 8}})
  stopped_logs = _wait(stopped, code=75)  # stopped by a signal: rerun to resume
  stopped_steps = _steps(workdir)
  logs = _wait(_launch(workdir, 'finished'))
  print(f'two-process run: process 1 killed after {t1 - t0:.1f} s, process 0 out {t2 - t1:.1f} s '
        f'later; {time.perf_counter() - t2:.1f} s to stop (SIGTERM) and finish')
  return types.SimpleNamespace(workdir=workdir, lost_logs=lost_logs, lost_steps=lost_steps,
                               stopped_logs=stopped_logs, stopped_steps=stopped_steps, logs=logs)


def test_a_lost_process_stops_the_others_in_one_line(run):
  """Process 1 killed at once (SIGKILL, as when its host goes down): process 0 exits 75 once no
  heartbeat came for LTDPT_HEARTBEAT_TIMEOUT_S, with one line naming process 1 and how to
  resume, neither a traceback nor JAX's SIGABRT and stack dump; rerunning both processes
  resumes from the newest complete checkpoint."""
  survivor = run.lost_logs[0]
  assert 'sending SIGKILL' in run.lost_logs[1]
  errors = _errors(survivor)
  assert len(errors) == 1, survivor[-3000:]
  assert 'lost process 1 of 2' in errors[0] and f'for {HEARTBEAT_S} s' in errors[0]
  assert 'resumes from the last complete checkpoint' in errors[0]
  for dump in ('Traceback', 'Check failure stack trace', 'Fatal Python error', 'SIGABRT'):
    assert dump not in survivor, survivor[-3000:]
  assert 3 in run.lost_steps and max(run.lost_steps) <= 6, run.lost_steps
  for log in run.stopped_logs.values():
    assert f'Resumed from the checkpoint of step {max(run.lost_steps)}' in log


def test_sigterm_to_one_process_stops_both_at_the_same_step(run):
  stopped = max(run.stopped_steps)
  assert 3 <= stopped < STEPS, run.stopped_steps
  for log in run.stopped_logs.values():
    assert 'Traceback' not in log
    assert f'Stopped at step {stopped} after a checkpoint' in log, log[-3000:]
  assert 'SIGTERM' in run.stopped_logs[1]
  for log in run.logs.values():
    assert 'Traceback' not in log
    assert f'Resumed from the checkpoint of step {stopped}' in log


def test_a_process_started_alone_gives_up_in_one_line(tmp_path):
  """Process 0, then process 1, started without the other (two runs at once, each with its own
  port): each exits 2 after LTDPT_CONNECT_TIMEOUT_S with one line naming the process missing
  and the coordinator, not JAX's SIGABRT after its own initialization timeout."""
  alone = {i: _launch(tmp_path / f'alone_{i}', 'alone', ids=(i,),
                      LTDPT_CONNECT_TIMEOUT_S=5) for i in (0, 1)}
  expected = {0: 'process 1 of 2 did not connect to this process (0, the coordinator at {})',
              1: 'process 0 of 2 (the coordinator, {}) did not answer process 1'}
  for i, launch in alone.items():
    log = _wait(launch, timeout=240, code=2)[i]
    errors = _errors(log)
    assert len(errors) == 1, log[-3000:]
    assert expected[i].format(launch.address) in errors[0]
    assert 'within 5 s' in errors[0] and 'LTDPT_CONNECT_TIMEOUT_S' in errors[0]
    assert 'Traceback' not in log and 'Check failure stack trace' not in log


def test_two_processes_match_one_process(run, cli_straight):
  assert '2 process(es), 4 device(s)' in run.logs[0]
  one_dir = cli_straight.workdir  # the same config, 1 process on 1 device
  results = json.loads((one_dir / 'results.json').read_text())

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


def test_a_workdir_each_host_has_alone_is_refused(tmp_path):
  """Hosts with their own disks: the relative --workdir=run means another directory in each
  process's working directory, as a local path does on each host of a TPU slice. Both processes
  refuse the run in one line before anything is built, and neither writes a checkpoint."""
  hosts = [tmp_path / 'host_0', tmp_path / 'host_1']
  for h in hosts:
    h.mkdir()
  logs_at = tmp_path / 'run'  # where _launch keeps the logs (run_refused_process_*.log)
  logs = _wait(_launch(logs_at, 'refused', cwds=hosts, workdir_arg='run'), timeout=240,
               code=2)
  for log in logs.values():
    errors = [line for line in log.splitlines() if line.startswith('Error: ')]
    assert len(errors) == 1, log[-3000:]
    assert 'is not shared by the 2 processes' in errors[0] and 'process(es) [1]' in errors[0]
    assert 'gs://' in errors[0] and 'Traceback' not in log
  for h in hosts:
    assert not (h / 'run' / 'checkpoints').exists()
