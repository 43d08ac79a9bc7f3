"""Every command the README, the documentation pages (docs/*.md) and the module docstrings show
still runs as shown: its module starts and lists each flag the command passes, its config file and
config keys exist, and each launch script they show runs its dry run (DRY_RUN=1) where the command
gives the environment the script needs, or else exists and parses (`bash -n`). A renamed module,
script, flag or config key fails here."""

from __future__ import annotations

import functools
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

import fork_server
import train_utils

REPO = pathlib.Path(train_utils.REPO)
_PYTHON_COMMAND = re.compile(r'python -m (ltdpt_jax[a-z_.]*[a-z_])(?=\s|$|`)([^`#;&|]*)')
_BASH_COMMAND = re.compile(r'((?:[A-Z_]+=\S+ )*)bash ((?:launch|bench)/[\w/]+\.sh)([^`#;&|]*)')


def _snippets(text: str) -> list[str]:
  """The code of a Markdown or docstring text: fenced blocks and indented lines, their
  backslash continuations joined, and inline `code` spans (which may wrap lines)."""
  text = re.sub(r'\\\n\s*', ' ', text)
  # Inline spans outside the fenced blocks (a fence's backticks would pair with a span's).
  prose = re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)
  spans = [s.replace('\n', ' ') for s in re.findall(r'`([^`]+)`', prose)]
  return spans + text.splitlines()


def _pages() -> dict[str, str]:
  """README.md and the documentation's Markdown pages, by path."""
  paths = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
  return {str(p.relative_to(REPO)): p.read_text() for p in paths}


def _documents() -> dict[str, str]:
  docs = _pages()
  for path in [*(REPO / 'ltdpt_jax').rglob('*.py'), *(REPO / 'configs').glob('*.py')]:
    docs[str(path.relative_to(REPO))] = path.read_text()
  return docs


def _python_commands() -> list[tuple[str, str, list[str]]]:
  """(where, module, arguments) of every `python -m ltdpt_jax...` command shown."""
  found = set()
  for where, text in _documents().items():
    for snippet in _snippets(text):
      for module, rest in _PYTHON_COMMAND.findall(snippet):
        try:
          args = shlex.split(rest.strip().rstrip('.,;:)'))
        except ValueError:  # an unbalanced quote in prose around the command
          args = rest.split()
        found.add((where, module.rstrip('.'), tuple(args)))
  return sorted((w, m, list(a)) for w, m, a in found)


def test_the_commands_are_found():
  assert any(w.startswith('docs/') for w, _, _ in _python_commands())  # the pages are read
  modules = {m for _, m, _ in _python_commands()}
  assert {'ltdpt_jax.main', 'ltdpt_jax.tools.predict', 'ltdpt_jax.tools.visualize',
          'ltdpt_jax.tools.plot', 'ltdpt_jax.tools.pretrain', 'ltdpt_jax.tools.ablate',
          'ltdpt_jax.bench', 'ltdpt_jax.bench.host_pipeline',
          'ltdpt_jax.bench.cpu_vs_torch'} <= modules, modules


def _own_flags(helpfull: str) -> str:
  """absl's --helpfull text without the sections of the libraries: only the flags this project's
  modules (headed by their path or name) and absl itself define. A command forked from
  tests/fork_server.py lists the flags of every library the server imported, which the command
  itself may not import."""
  keep, lines = True, []
  for line in helpfull.splitlines():
    if line and not line[0].isspace() and line.endswith(':'):  # a module's section
      header = line[:-1]
      keep = (header.startswith(('absl.', 'ltdpt_jax')) or
              pathlib.Path(header).is_relative_to(REPO / 'ltdpt_jax'))
    elif keep:
      lines.append(line)
  return '\n'.join(lines)


def _help(module: str) -> str:
  """The flags `python -m module --helpfull` (absl: this project's and absl's sections) or
  `--help` (argparse) lists."""
  path = REPO / (module.replace('.', '/') + '.py')
  if not path.is_file():
    path = REPO / module.replace('.', '/') / '__main__.py'
  assert path.is_file(), f'no module {module}'
  absl = 'absl' in path.read_text()
  out = fork_server.run([sys.executable, '-m', module, '--helpfull' if absl else '--help'],
                        cwd=REPO, env=train_utils.subprocess_env(), timeout=300)
  # absl's help exits with 1, argparse's with 0; anything else is a module that does not start.
  assert out.returncode in (0, 1), f'{module}: {out.stderr[-2000:]}'
  return _own_flags(out.stdout + out.stderr) if absl else out.stdout + out.stderr


@functools.lru_cache(maxsize=None)
def _helps() -> dict[str, str]:
  return {m: _help(m) for m in sorted({m for _, m, _ in _python_commands()})}


def _config_of(args: list[str]):
  """The config a command's --config=file[:arg] and --config.key=value flags name (the values
  left as they are: a README shows placeholders)."""
  spec = next((a.split('=', 1)[1] for a in args if a.startswith('--config=')), None)
  study = next((a.split('=', 1)[1] for a in args if a.startswith('--study=')), None)
  if spec is None and study not in (None, 'NAME'):  # a study's runs: its base config's keys
    from ltdpt_jax.studies import spec as spec_lib  # pylint: disable=g-import-not-at-top
    spec = spec_lib.load_study(study).config
  if spec is None:
    return None
  file, _, arg = spec.partition(':')
  assert (REPO / file).is_file(), f'--config={spec}: no file {file}'
  placeholders = {'R': '100'}  # configs/cifar100_lt.py:ratio=R, a placeholder in a command
  arg = ','.join(f'{k}={placeholders.get(v, v)}' for k, _, v in
                 (item.partition('=') for item in arg.split(',') if item))
  return train_utils.load_config(pathlib.Path(file).stem, arg or None)


def _has_key(config, parts: list[str]) -> bool:
  node = config
  for part in parts:
    if node is None or not hasattr(node, 'keys') or part not in node:
      return False
    node = node[part]
  return True


@pytest.mark.slow
def test_every_documented_python_command_names_real_flags_and_config_keys():
  helps = _helps()
  problems = []
  for where, module, args in _python_commands():
    known = set(re.findall(r'--(?:\[no\])?([\w.]+)', helps[module]))
    config = _config_of(args)
    for arg in args:
      match = re.match(r'--([\w.]+)', arg)
      if not match:
        continue
      name = match.group(1)
      if name.startswith('config.'):
        if not _has_key(config, name.split('.')[1:]):
          problems.append(f'{where}: python -m {module} {arg}: no such config key')
      elif name not in known and not name.startswith('no'):
        problems.append(f'{where}: python -m {module} {arg}: no such flag')
  assert not problems, '\n'.join(problems)


def _bash_commands() -> list[tuple[dict[str, str], str, list[str]]]:
  """(environment, script, arguments) of every `bash launch/...` (or `bash bench/...`) command
  that README.md or a docs page shows."""
  found = set()
  for text in _pages().values():
    for snippet in _snippets(text):
      for env, script, rest in _BASH_COMMAND.findall(snippet):
        found.add((env.strip(), script, rest.strip()))
  return [(dict(kv.split('=', 1) for kv in env.split()), script, shlex.split(rest))
          for env, script, rest in sorted(found)]


def _required_env(script: str) -> set[str]:
  """The variables a script refuses to start without: its top-level
  `[[ -n "${A:-}" && -n "${B:-}" ]] || die ...` checks (launch/tpu_vm.sh: NAME, ZONE, TYPE)."""
  text = (REPO / script).read_text()
  checks = re.findall(r'^\[\[ (.*?) \]\] \|\|', text, re.M)
  return {v for check in checks for v in re.findall(r'-n "\$\{(\w+):-\}"', check)}


def _can_dry_run(env: dict[str, str], script: str) -> bool:
  """The script has a dry-run mode and the command gives every variable it needs."""
  return 'DRY_RUN' in (REPO / script).read_text() and _required_env(script) <= set(env)


def test_the_launch_commands_are_found():
  commands = _bash_commands()
  scripts = {s for _, s, _ in commands}
  assert {'launch/tpu_vm.sh', 'launch/gpu.sh', 'launch/gpu_bench.sh'} <= scripts, scripts
  assert _required_env('launch/tpu_vm.sh') == {'NAME', 'ZONE', 'TYPE'}
  # The pages' TPU commands give NAME, ZONE and TYPE, so they run their dry run below.
  assert any(s == 'launch/tpu_vm.sh' and _can_dry_run(e, s) for e, s, _ in commands)


@pytest.mark.parametrize('env,script,args', _bash_commands(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_documented_launch_command_exists_and_parses(env, script, args):
  """Every script a page names exists and `bash -n` parses it; its config keys exist."""
  assert (REPO / script).is_file(), f'no script {script}'
  out = subprocess.run(['bash', '-n', script], capture_output=True, text=True, cwd=REPO,
                       timeout=60)
  assert out.returncode == 0, f'bash -n {script}: {out.stderr[-1500:]}'
  args = [a for a in args if a != '--dry_run']
  config = _config_of(args)
  for arg in args:
    if arg.startswith('--config.'):
      assert _has_key(config, arg[2:].split('=', 1)[0].split('.')[1:]), f'{script}: {arg}'


@pytest.mark.parametrize('env,script,args', _bash_commands(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_documented_launch_command_runs_its_dry_run(env, script, args, tmp_path):
  """The command as a page shows it, with DRY_RUN=1: it prints what it would run and exits
  0 (a script that no longer takes those arguments, or a path that moved, fails). Commands
  without the variables the script needs (a script named in prose) are checked only by
  `test_every_documented_launch_command_exists_and_parses`."""
  if not _can_dry_run(env, script):
    pytest.skip(f'{script}: no dry-run mode, or the command lacks {_required_env(script)}')
  clean = {k: v for k, v in os.environ.items() if not k.startswith(('LTDPT_', 'XLA_'))}
  scratch = tmp_path / 'tmp'
  scratch.mkdir()
  run_env = {**clean, **env, 'DRY_RUN': '1', 'TMPDIR': str(scratch),
             'LOGS': str(tmp_path / 'logs'), 'FETCH': str(tmp_path / 'results'), 'POLL_S': '0'}
  out = subprocess.run(['bash', script, *args], env=run_env, capture_output=True, text=True,
                       cwd=REPO, timeout=120)
  assert out.returncode == 0, f'{script} {args}: {out.stdout[-1500:]}{out.stderr[-1500:]}'
  assert '+ ' in out.stdout, out.stdout[-1500:]  # the commands it would run
  # The arguments go on to python -m ltdpt_jax.main: its config keys must exist.
  args = [a for a in args if a != '--dry_run']
  config = _config_of(args)
  for arg in args:
    if arg.startswith('--config.'):
      assert _has_key(config, arg[2:].split('=', 1)[0].split('.')[1:]), f'{script}: {arg}'
