"""Where a study's runs go: here one after another, here several at once, Slurm, Cloud TPU.

Every run is `python -m ltdpt_jax.main <Job.args>` (`spec.cell_args`), resumable from its
workdir. `run_in_process` trains the jobs one after another in this process; `run_processes`
starts them as processes, at most N at once, each with its own GPUs; `submit_slurm` sends them to
Slurm as one submitit array job (a preempted or timed-out task requeues and resumes);
`tpu_commands` are the `launch/tpu_vm.sh` calls, run through `run_processes`, K slices at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from etils import epath

from ltdpt_jax import cli
from ltdpt_jax import run_dir
from ltdpt_jax.studies import spec as spec_lib

class Job(NamedTuple):
  """One run of a study: a cell, a seed and the flags of `python -m ltdpt_jax.main`."""
  cell: str
  seed: int
  args: tuple[str, ...]

  @property
  def workdir(self) -> str:
    return spec_lib.workdir_of(self.args)

  @property
  def name(self) -> str:
    return f'{self.cell}/seed_{self.seed}'


def finished(job: Job) -> bool:
  """Whether the job's workdir holds a finished run (results.json) of the job's config (no
  difference beyond what a resume allows): such a job is skipped without starting anything."""
  root = epath.Path(job.workdir)
  try:
    if not (root / 'results.json').exists():
      return False
    stored = json.loads((root / 'config.json').read_text())
  except (OSError, json.JSONDecodeError):
    return False
  current = spec_lib.config_from_args(job.args).to_dict()
  return not run_dir.config_changes(stored, current)[1]


# ---------------------------------------------------------------------------------------------
# Local: in this process, one after another.
# ---------------------------------------------------------------------------------------------

def run_in_process(jobs: Sequence[Job], *, allow_config_change: bool = False,
                   progress: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains the jobs one after another here (the compiled programs are shared); returns
  {'seconds': {job: s}} or {'stopped_at': (job, step)} when a signal stopped one."""
  from ltdpt_jax import train  # pylint: disable=g-import-not-at-top  (JAX only when training)
  seconds, t0 = {}, time.perf_counter()
  todo = [j for j in jobs if not _skip(j, progress)]
  for i, job in enumerate(todo):
    progress(f'[{i + 1}/{len(todo)}] {job.name}: training in {job.workdir}{_eta(t0, i, len(todo))}')
    t = time.perf_counter()
    results = train.train_and_evaluate(spec_lib.config_from_args(job.args), job.workdir,
                                       allow_config_change=allow_config_change)
    seconds[job.name] = time.perf_counter() - t
    if 'stopped_at' in results:
      return {'stopped_at': (job.name, results['stopped_at']), 'seconds': seconds}
  return {'seconds': seconds}


def _skip(job: Job, progress) -> bool:
  if finished(job):
    progress(f'{job.name}: finished before ({job.workdir}/results.json); skipped')
    return True
  return False


def _eta(t0: float, done: int, total: int) -> str:
  if done == 0:
    return ''
  left = (time.perf_counter() - t0) / done * (total - done)
  return f' (ETA {left / 60:.1f} min for the {total - done} left)'


# ---------------------------------------------------------------------------------------------
# Local processes (and TPU VM scripts): at most N at once.
# ---------------------------------------------------------------------------------------------

def visible_gpus() -> list[str]:
  """The GPUs this machine lets a process use: CUDA_VISIBLE_DEVICES when set, else those
  `nvidia-smi -L` lists, else none (a CPU machine). JAX is not started here, so that the parent
  holds no accelerator memory its runs need."""
  env = os.environ.get('CUDA_VISIBLE_DEVICES')
  if env is not None:
    return [g for g in env.split(',') if g.strip()]
  if shutil.which('nvidia-smi') is None:
    return []
  try:
    out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=30).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith('GPU ')]


def device_groups(parallel: int, gpus: Sequence[str]) -> list[dict[str, str]]:
  """The environment of each of `parallel` slots: the GPUs split into equal groups
  (CUDA_VISIBLE_DEVICES); on a machine without GPUs every slot gets the CPU. ValueError when
  there are fewer GPUs than slots."""
  if parallel < 1:
    raise ValueError(f'--parallel={parallel} must be >= 1.')
  if not gpus:
    return [{} for _ in range(parallel)]
  if parallel > len(gpus):
    raise ValueError(f'--parallel={parallel} needs at least {parallel} GPUs; this machine lets '
                     f'a process use {len(gpus)} ({",".join(gpus)}).')
  per = len(gpus) // parallel
  return [{'CUDA_VISIBLE_DEVICES': ','.join(gpus[i * per:(i + 1) * per])}
          for i in range(parallel)]


@dataclasses.dataclass
class _Running:
  job: Job
  slot: int
  proc: subprocess.Popen
  log: str
  started: float


def run_processes(jobs: Sequence[Job], command: Callable[[Job], list[str]], *, parallel: int,
                  log_dir: str, slot_env: Sequence[dict[str, str]] | None = None,
                  job_env: Callable[[Job], dict[str, str]] | None = None,
                  skip_finished: bool = True, progress: Callable[[str], None] = print,
                  poll_s: float = 0.5) -> dict[str, Any]:
  """Runs `command(job)` for every job, at most `parallel` at once, slot i with the environment
  `slot_env[i]` (and `job_env(job)`) added; each process's output goes to
  `<log_dir>/<cell>_seed<s>.log`. SIGTERM or Ctrl-C here is passed on to the running processes
  (each saves a checkpoint and stops) and no new one starts. Returns {'exit_codes': {job: code},
  'seconds': {job: s}, 'stopped': bool, 'not_started': [job]}."""
  slot_env = list(slot_env or [{} for _ in range(parallel)])
  queue = [j for j in jobs if not (skip_finished and _skip(j, progress))]
  total, t0 = len(queue), time.perf_counter()
  os.makedirs(log_dir, exist_ok=True)
  running: list[_Running] = []
  codes: dict[str, int] = {}
  seconds: dict[str, float] = {}
  stop = {'signal': None}

  def on_signal(signum, frame):
    del frame
    stop['signal'] = signum
    for r in running:
      with contextlib.suppress(ProcessLookupError):
        r.proc.send_signal(signal.SIGTERM)

  old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    while queue or running:
      free = sorted(set(range(parallel)) - {r.slot for r in running})
      while queue and free and stop['signal'] is None:
        job, slot = queue.pop(0), free.pop(0)
        log = os.path.join(log_dir, f'{job.cell}_seed{job.seed}.log')
        extra = {**slot_env[slot], **(job_env(job) if job_env else {})}
        env = {**os.environ, **extra}
        where = f' ({" ".join(f"{k}={v}" for k, v in extra.items())})' if extra else ''
        progress(f'{job.name}: started{where}, log {log}')
        with open(log, 'ab') as f:
          proc = subprocess.Popen(command(job), stdout=f, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
        running.append(_Running(job, slot, proc, log, time.perf_counter()))
      if stop['signal'] is not None and not running:
        break
      time.sleep(poll_s)
      for r in [r for r in running if r.proc.poll() is not None]:
        running.remove(r)
        codes[r.job.name] = r.proc.returncode
        seconds[r.job.name] = time.perf_counter() - r.started
        what = {0: 'finished', cli.EXIT_STOPPED: 'stopped after a checkpoint'}.get(
            r.proc.returncode, f'failed (exit {r.proc.returncode}; see {r.log})')
        progress(f'{r.job.name}: {what} in {seconds[r.job.name]:.0f} s '
                 f'[{len(codes)}/{total} done]{_eta(t0, len(codes), total)}')
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
  return {'exit_codes': codes, 'seconds': seconds,
          'stopped': stop['signal'] is not None or cli.EXIT_STOPPED in codes.values(),
          'not_started': [j.name for j in queue]}


def main_command(job: Job) -> list[str]:
  """`python -m ltdpt_jax.main <job flags>` with this Python."""
  return [sys.executable, '-m', 'ltdpt_jax.main', *job.args]


# ---------------------------------------------------------------------------------------------
# Slurm, through submitit.
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SlurmOptions:
  """The array job's resources (submitit's `update_parameters`); empty values are left out."""
  partition: str = ''
  account: str = ''
  gpus_per_task: int = 1
  cpus_per_task: int = 8
  time_min: int = 24 * 60
  max_parallel: int = 0        # Slurm's array throttle (%N); 0: every task may run at once
  mem_gb: int = 0
  name: str = 'ltdpt'

  def parameters(self) -> dict[str, Any]:
    p: dict[str, Any] = {'name': self.name, 'timeout_min': int(self.time_min), 'nodes': 1,
                         'tasks_per_node': 1, 'cpus_per_task': int(self.cpus_per_task),
                         'gpus_per_node': int(self.gpus_per_task)}
    if self.partition:
      p['slurm_partition'] = self.partition
    if self.account:
      p['slurm_account'] = self.account
    if self.max_parallel:
      p['slurm_array_parallelism'] = int(self.max_parallel)
    if self.mem_gb:
      p['mem_gb'] = int(self.mem_gb)
    return p


class SlurmTask:
  """What one array task runs: the job's training in that task's process, resuming from its
  workdir. As a submitit `Checkpointable`, a task that Slurm preempts or that reaches its time
  limit is requeued with the same job, which resumes from its last checkpoint."""

  def __call__(self, args: Sequence[str]) -> dict[str, Any]:
    from ltdpt_jax import train  # pylint: disable=g-import-not-at-top
    cli.set_up_logging()
    config = spec_lib.config_from_args(args)
    return train.train_and_evaluate(config, spec_lib.workdir_of(args))

  def checkpoint(self, args: Sequence[str]):
    import submitit  # pylint: disable=g-import-not-at-top
    return submitit.helpers.DelayedSubmission(self, args)


def slurm_executor(folder: str, options: SlurmOptions, *, cluster: str | None = None):
  """submitit's executor: Slurm where `sbatch` exists (`cluster=None`), or 'local' / 'debug'."""
  import submitit  # pylint: disable=g-import-not-at-top
  executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
  params = options.parameters()
  if executor.cluster != 'slurm':
    params = {k: v for k, v in params.items() if not k.startswith('slurm_')}
  executor.update_parameters(**params)
  return executor


def submit_slurm(jobs: Sequence[Job], folder: str, options: SlurmOptions, *,
                 cluster: str | None = None) -> list[Any]:
  """Submits the jobs as one array job (a task per job); returns submitit's jobs."""
  executor = slurm_executor(folder, options, cluster=cluster)
  return executor.map_array(SlurmTask(), [list(j.args) for j in jobs])


_FAKE_SBATCH = """#!/bin/sh
cp "$1" "{out}"
echo "Submitted batch job 1"
"""


def slurm_dry_run(jobs: Sequence[Job], folder: str, options: SlurmOptions) -> str:
  """The sbatch script submitit would submit for these jobs (one array job), made by submitit
  itself against an `sbatch` that records the script instead of submitting it (and an `srun`
  that is only found), and the tasks."""
  with tempfile.TemporaryDirectory() as tmp:
    bin_dir, out = os.path.join(tmp, 'bin'), os.path.join(tmp, 'submitted.sh')
    os.makedirs(bin_dir)
    for tool, text in (('sbatch', _FAKE_SBATCH.format(out=out)), ('srun', '#!/bin/sh\n')):
      with open(os.path.join(bin_dir, tool), 'w') as f:
        f.write(text)
      os.chmod(os.path.join(bin_dir, tool), 0o755)
    path = os.environ.get('PATH', '')
    os.environ['PATH'] = f'{bin_dir}{os.pathsep}{path}'
    try:
      import submitit  # pylint: disable=g-import-not-at-top
      executor = submitit.AutoExecutor(folder=os.path.join(tmp, 'slurm'), cluster='slurm')
      executor.update_parameters(**options.parameters())
      executor.map_array(SlurmTask(), [list(j.args) for j in jobs])
    finally:
      os.environ['PATH'] = path
    with open(out) as f:
      script = f.read().replace(os.path.join(tmp, 'slurm'), os.path.abspath(folder))
  tasks = '\n'.join(f'# task {i}: {j.name}: python -m ltdpt_jax.main {shlex.join(j.args)}'
                    for i, j in enumerate(jobs))
  return f'{script}\n# The array\'s tasks (each runs its job in the task\'s process):\n{tasks}\n'


# ---------------------------------------------------------------------------------------------
# Cloud TPU: launch/tpu_vm.sh per job.
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TpuOptions:
  """What `launch/tpu_vm.sh` takes from the environment (NAME is the prefix of each job's)."""
  name: str
  zone: str
  type: str
  spot: bool = False

  def env(self, index: int) -> dict[str, str]:
    """The environment of the script for the study's job number `index` (its slice's name)."""
    env = {'NAME': f'{self.name}-{index}', 'ZONE': self.zone, 'TYPE': self.type}
    if self.spot:
      env['SPOT'] = '1'
    return env


TPU_SCRIPT = os.path.join('launch', 'tpu_vm.sh')


def tpu_command(job: Job) -> list[str]:
  """`bash launch/tpu_vm.sh <job flags>` (run from the repository root)."""
  return ['bash', TPU_SCRIPT, *job.args]


def tpu_lines(jobs: Sequence[Job], options: TpuOptions) -> list[str]:
  """The shell lines that run each job on its own slice (what the tpu launcher runs)."""
  return [' '.join(f'{k}={shlex.quote(v)}' for k, v in options.env(i).items()) + ' '
          + shlex.join(tpu_command(j)) for i, j in enumerate(jobs)]

