"""The package's layout: imports flow one way (no cycle, the core never reaches up into the
commands or the benchmark), a small root, short module docstrings, and configs that load without
JAX."""

from __future__ import annotations

import ast
import collections
import json
import pathlib
import subprocess
import sys

import pytest

import train_utils

REPO = pathlib.Path(train_utils.REPO)
PACKAGE = REPO / 'ltdpt_jax'
HEAVY = ('jax', 'flax', 'optax', 'grain')


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def _imports(path: pathlib.Path, modules) -> set[str]:
  """The package modules `path` imports, anywhere in it (function-level imports too):
  `from a import b` names the module a.b when there is one, else the module a."""
  out = set()
  package = _module_name(path) if path.name == '__init__.py' else _module_name(path.parent)
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name in modules)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] +
                        ([base] if base else []))
      for a in node.names:
        name = f'{base}.{a.name}'
        if name in modules:
          out.add(name)
        elif base in modules:
          out.add(base)
  return out - {_module_name(path)}


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(path, modules) for name, path in modules.items()}


def _cycle(graph) -> list[str] | None:
  """One import cycle of `graph` (depth-first search), or None."""
  state = collections.defaultdict(int)  # 0 unseen, 1 on the stack, 2 done
  stack = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state[nxt] == 1:
        return stack[stack.index(nxt):] + [nxt]
      if state[nxt] == 0:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if state[node] == 0:
      found = visit(node)
      if found:
        return found
  return None


def test_the_cycle_finder_finds_a_cycle():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None


def test_the_package_has_no_import_cycle():
  graph = _graph()
  # A package's __init__ importing its own submodules, which import siblings through the package
  # name (`from ltdpt_jax.models import vit`), is how Python packages work, not a cycle.
  for name in graph:
    graph[name] = {m for m in graph[name] if not name.startswith(m + '.')}
  assert _cycle(graph) is None, ' -> '.join(_cycle(graph))


def test_the_core_never_imports_the_commands_or_the_benchmark():
  up = ('ltdpt_jax.tools', 'ltdpt_jax.bench')
  for name, imported in _graph().items():
    if not name.startswith(up):
      reaching_up = sorted(m for m in imported if m.startswith(up))
      assert not reaching_up, f'{name} imports {reaching_up}'


def test_the_package_root_holds_the_core_and_folders():
  root = sorted(p.stem for p in PACKAGE.glob('*.py') if p.name != '__init__.py')
  assert len(root) <= 15, root
  folders = {p.name for p in PACKAGE.iterdir() if (p / '__init__.py').is_file()}
  assert {'models', 'data', 'evaluators', 'tools', 'bench'} <= folders


def _docstring_lines(path: pathlib.Path) -> int:
  body = ast.parse(path.read_text()).body
  if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
    return body[0].end_lineno - body[0].lineno + 1
  return 0


def test_module_docstrings_are_at_most_ten_lines():
  files = [*PACKAGE.rglob('*.py'), *(REPO / 'configs').glob('*.py')]
  long = {str(p.relative_to(REPO)): n for p in files if (n := _docstring_lines(p)) > 10}
  assert not long, long
  missing = [str(p.relative_to(REPO)) for p in PACKAGE.rglob('*.py') if not _docstring_lines(p)]
  assert not missing, f'modules without a docstring: {missing}'


def test_no_module_level_getattr_reexports():
  for path in PACKAGE.rglob('*.py'):
    names = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
    assert '__getattr__' not in names, path


def test_nothing_refers_to_files_outside_the_repository():
  """Each choice is explained where it is implemented; no pointer to notes beyond the checkout
  (the tests of the published split files read them from ../shared and skip without it)."""
  needles = ('SPEC.md', 'SPEC "', '../shared', 'perf-anchors', 'jax-anchors', 'design card')
  files = [*PACKAGE.rglob('*.py'), *(REPO / 'configs').glob('*.py'), *(REPO / 'launch').glob('*'),
           REPO / 'README.md', REPO / 'pyproject.toml', *(REPO / 'docs').rglob('*.md')]
  found = [f'{p.relative_to(REPO)}: {n}' for p in files if p.is_file()
           for n in needles if n in p.read_text(errors='replace')]
  assert not found, found


_LOAD_CONFIG = '''
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location('config', sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config(sys.argv[2] or None)
print(json.dumps({'fields': len(config.to_dict()), 'modules': sorted(sys.modules)}))
'''


@pytest.mark.parametrize('name', sorted(p.stem for p in (REPO / 'configs').glob('*.py')))
def test_configs_load_without_jax_flax_optax_or_grain(name):
  """Reading a config is ml_collections alone: a fresh interpreter loads it and builds it."""
  arg = {'folder': 'train_dir=/data/train,eval_dir=/data/val'}.get(name, '')
  out = subprocess.run([sys.executable, '-c', _LOAD_CONFIG, str(REPO / 'configs' / f'{name}.py'),
                        arg], capture_output=True, text=True, cwd=REPO,
                       env=train_utils.subprocess_env(), check=True)
  record = json.loads(out.stdout.strip().splitlines()[-1])
  assert record['fields'] > 0
  loaded = {m.split('.')[0] for m in record['modules']}
  assert 'ml_collections' in loaded and not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
