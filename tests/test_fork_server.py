"""tests/fork_server.py, which runs the tests' command-line runs: a forked command gives what
`subprocess.run` gives for the same command (output, exit code, signal, environment, working
directory) for scripts, modules and `-c` code; `start` is a process to poll, wait for and kill;
a timeout kills it; an environment that imports read differently (JAX_*, PYTHONPATH) gets a
server started with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import fork_server
import train_utils

SCRIPT = '''
import os, signal, sys
print('preloaded' if 'jax' in sys.modules else 'fresh', flush=True)
print(sys.argv[1:], os.getcwd(), os.environ.get('LTDPT_TEST_VALUE'), sys.path[0] == os.path.dirname(
    os.path.abspath(__file__)))
print('to stderr', file=sys.stderr)
if sys.argv[1] == 'x64':
  import jax
  print('x64', jax.config.jax_enable_x64)
if sys.argv[1] == 'tfds':
  try:
    import tensorflow_datasets
    print('tfds imported')
  except ImportError as e:
    print('tfds', e)
if sys.argv[1] == 'term':
  os.kill(os.getpid(), signal.SIGTERM)
if sys.argv[1] == 'sleep':
  open(sys.argv[2], 'w').write(str(os.getpid()))
  signal.pause()
sys.exit(int(sys.argv[1]) if sys.argv[1].isdigit() else 0)
'''


@pytest.fixture
def script(tmp_path):
  path = tmp_path / 'script.py'
  path.write_text(SCRIPT)
  return path


def _both(args, cwd, **extra):
  env = {**train_utils.subprocess_env(), **extra}
  forked = fork_server.run(args, env=env, cwd=cwd, timeout=300)
  fresh = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
  return forked, fresh


@pytest.mark.parametrize('arg,code', [('0', 0), ('3', 3), ('term', -signal.SIGTERM)])
def test_a_forked_command_gives_what_a_subprocess_gives(script, tmp_path, arg, code):
  forked, fresh = _both([sys.executable, str(script), arg, 'b c'], tmp_path,
                        LTDPT_TEST_VALUE='v')
  assert forked.stdout.splitlines()[0] == 'preloaded' and fresh.stdout.splitlines()[0] == 'fresh'
  assert forked.stdout.splitlines()[1:] == fresh.stdout.splitlines()[1:]
  assert f"['{arg}', 'b c'] {tmp_path} v True" in forked.stdout
  assert forked.stderr == fresh.stderr == 'to stderr\n'
  assert forked.returncode == fresh.returncode == code


def _sections(helpfull: str) -> dict[str, str]:
  """absl's --helpfull text by the module that defines the flags."""
  sections, name = {}, ''
  for line in helpfull.splitlines():
    if line and not line.startswith(' ') and line.endswith(':'):
      name = line[:-1]
    sections[name] = sections.get(name, '') + line + '\n'
  return sections


def test_a_module_command_runs_as_python_dash_m():
  """`python -m ltdpt_jax.tools.plot --helpfull`: the same command's flags; the one difference
  (the module docstring says so) is that the libraries the server imported list theirs too."""
  forked, fresh = _both([sys.executable, '-m', 'ltdpt_jax.tools.plot', '--helpfull'],
                        train_utils.REPO)
  assert forked.returncode == fresh.returncode
  mine, theirs = _sections(forked.stdout), _sections(fresh.stdout)
  own = next(k for k in theirs if k.endswith('ltdpt_jax/tools/plot.py'))  # the command's flags
  assert '--workdir' in theirs[own]
  assert {k: v for k, v in mine.items() if k in theirs} == theirs
  assert not [k for k in mine.keys() - theirs.keys() if 'ltdpt_jax' in k]


def test_an_environment_imports_read_differently_gets_a_server_of_its_own(script, tmp_path):
  """JAX_ENABLE_X64 is read when JAX is imported: the command forks from a server started with
  it, and the server of the default environment still has float32."""
  forked, fresh = _both([sys.executable, str(script), 'x64'], tmp_path, JAX_ENABLE_X64='1')
  assert forked.stdout.splitlines()[0] == 'preloaded'
  assert 'x64 True' in forked.stdout
  assert forked.stdout.splitlines()[1:] == fresh.stdout.splitlines()[1:]
  default, _ = _both([sys.executable, str(script), 'x64'], tmp_path)
  assert default.stdout.splitlines()[0] == 'preloaded' and 'x64 False' in default.stdout


def test_a_pythonpath_that_blocks_a_package_blocks_it_in_the_forked_command(script, tmp_path):
  """The benchmark-files tests block tensorflow_datasets with a package of that name first on
  PYTHONPATH; the forked command must fail to import it as a fresh Python does."""
  blocker = tmp_path / 'blocker' / 'tensorflow_datasets'
  blocker.mkdir(parents=True)
  (blocker / '__init__.py').write_text("raise ImportError('blocked')\n")
  path = f'{blocker.parent}{os.pathsep}{train_utils.subprocess_env()["PYTHONPATH"]}'
  forked, fresh = _both([sys.executable, str(script), 'tfds'], tmp_path, PYTHONPATH=path)
  assert forked.stdout.splitlines()[0] == 'preloaded'
  assert 'tfds blocked' in forked.stdout
  assert forked.stdout.splitlines()[1:] == fresh.stdout.splitlines()[1:]


def test_python_dash_c_runs_as_in_a_fresh_python(tmp_path):
  code = ('import sys; print(sys.argv, repr(sys.path[0]), __name__, "__file__" in globals());'
          'sys.exit(4)')
  forked, fresh = _both([sys.executable, '-c', code, 'a', 'b c'], tmp_path)
  assert forked.returncode == fresh.returncode == 4
  assert forked.stdout == fresh.stdout == "['-c', 'a', 'b c'] '' __main__ False\n"


def test_a_started_command_is_a_process_to_wait_for_poll_and_kill(script, tmp_path):
  """`start` as `subprocess.Popen` with stdout and stderr to one file: poll() is None while it
  runs, kill() ends it with -SIGKILL; a command that ends reports its exit code."""
  env = train_utils.subprocess_env()
  pid_file, log = tmp_path / 'pid', tmp_path / 'log'
  proc = fork_server.start([sys.executable, str(script), 'sleep', str(pid_file)], env=env,
                           cwd=tmp_path, log=log)
  assert isinstance(proc, fork_server.Process)
  deadline = time.monotonic() + 120  # a safety net: the loop ends once the pid is written
  while not pid_file.exists() or not pid_file.read_text():
    assert proc.poll() is None and time.monotonic() < deadline
    time.sleep(0.05)
  assert int(pid_file.read_text()) == proc.pid
  with pytest.raises(subprocess.TimeoutExpired):
    proc.wait(timeout=0.1)
  proc.kill()
  assert proc.wait() == -signal.SIGKILL
  assert log.read_text().splitlines()[0] == 'preloaded'
  done = fork_server.start([sys.executable, str(script), '3'], env=env, cwd=tmp_path, log=log)
  assert done.wait() == 3
  lines = log.read_text().splitlines()
  assert lines[0] == 'preloaded' and 'to stderr' in lines


def test_a_timeout_kills_the_forked_command(script, tmp_path):
  pid_file = tmp_path / 'pid'
  with pytest.raises(subprocess.TimeoutExpired):
    fork_server.run([sys.executable, str(script), 'sleep', str(pid_file)],
                    env=train_utils.subprocess_env(), cwd=tmp_path, timeout=3)
  pid = int(pid_file.read_text())
  deadline = time.monotonic() + 60  # a safety net: the loop ends once the process is gone
  while time.monotonic() < deadline:
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      break
    time.sleep(0.05)
  else:
    pytest.fail(f'process {pid} still runs after the timeout')
