"""tests/fork_server.py, which runs the tests' command-line runs: a forked command gives what
`subprocess.run` gives for the same command (output, exit code, signal, environment, working
directory), a timeout kills it, and an environment that imports would read differently runs as
a real subprocess."""

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


def test_an_environment_imports_read_differently_runs_in_a_fresh_python(script, tmp_path):
  forked, fresh = _both([sys.executable, str(script), 'x64'], tmp_path, JAX_ENABLE_X64='1')
  assert forked.stdout.splitlines()[0] == 'fresh'  # not forked: JAX read its options at import
  assert 'x64 True' in forked.stdout and forked.stdout == fresh.stdout


def test_a_timeout_kills_the_forked_command(script, tmp_path):
  pid_file = tmp_path / 'pid'
  with pytest.raises(subprocess.TimeoutExpired):
    fork_server.run([sys.executable, str(script), 'sleep', str(pid_file)],
                    env=train_utils.subprocess_env(), cwd=tmp_path, timeout=10)
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
