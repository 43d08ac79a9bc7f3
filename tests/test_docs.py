"""The documentation: the site builds with warnings as errors, and no link of README.md or of the
pages is broken.

The build is the documented command, `python -m sphinx -W --keep-going -b html docs DIR`: it
fails on a broken link between pages or to a heading, a missing reference, or an API entry whose
module does not import (a small broken site checks that it does). Every `{py:...}` role of the
pages must name an object of the API reference. Every relative link and image of README.md and
docs/*.md must point to a file that exists, and every `#anchor` to a heading of its page (as
GitHub and MyST name heading anchors).
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

import train_utils

REPO = pathlib.Path(train_utils.REPO)
DOCS = REPO / 'docs'
BUILD = 'python -m sphinx -W --keep-going -b html docs docs/_build/html'
PAGES = [REPO / 'README.md', *sorted(DOCS.glob('*.md'))]
_LINK = re.compile(r'!?\[([^\]]*)\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
_PY_ROLE = re.compile(r'\{py:(?:func|class|meth|mod|attr|obj|data|exc)\}`([^`<]+?)(?:\s*<([^>]+)>)?`')


def _sphinx(src: pathlib.Path, out: pathlib.Path) -> subprocess.CompletedProcess:
  """The documented build of `src` into `out` (a fresh directory: nothing cached)."""
  return subprocess.run([sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-b', 'html',
                         str(src), str(out)], capture_output=True, text=True, cwd=REPO,
                        env=train_utils.subprocess_env(), timeout=600)


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp('html')
  result = _sphinx(DOCS, out)
  assert result.returncode == 0, (
      f'{BUILD} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}')
  return out


def test_the_site_builds_with_warnings_as_errors(site):
  names = {p.stem for p in DOCS.glob('*.md')}
  assert {'index', 'getting-started', 'own-data', 'inside-a-run', 'method', 'reproducing',
          'clusters', 'run-directory', 'performance', 'history', 'layout', 'api'} <= names
  for name in names:
    assert (site / f'{name}.html').is_file(), name
  api = (site / 'api.html').read_text()
  for entry in ('ltdpt_jax.tools.predict.Predictor', 'ltdpt_jax.models.vit_checkpoint.from_npz',
                'ltdpt_jax.models.ltdpt.parameter_report', 'ltdpt_jax.losses.gcl_loss',
                'ltdpt_jax.losses.drw_weights', 'ltdpt_jax.saliency.spectral_residual',
                'ltdpt_jax.saliency.patch_saliency', 'ltdpt_jax.optim.GNM',
                'ltdpt_jax.data.make_train_iterator', 'ltdpt_jax.evaluators.longtail.Evaluator',
                'ltdpt_jax.evaluators.attention.Evaluator', 'ltdpt_jax.studies.spec.Study',
                'ltdpt_jax.studies.spec.Cell'):
    assert f'id="{entry}"' in api, f'{entry} is not in the API reference'


def _inventory(site: pathlib.Path) -> set[str]:
  from sphinx.util.inventory import InventoryFile  # pylint: disable=g-import-not-at-top
  with open(site / 'objects.inv', 'rb') as f:
    inventory = InventoryFile.load(f, '', lambda base, uri: uri)
  names = set()
  for role, entries in inventory.items():
    if role.startswith('py:'):
      names.update(entries)
  return names


def test_every_api_role_of_the_pages_names_a_documented_object(site):
  """Without `nitpicky`, Sphinx renders a {py:func} role whose target it does not know as plain
  code; here each one must be an entry of the API reference."""
  documented = _inventory(site)
  roles = [(p.name, m.group(2) or m.group(1)) for p in DOCS.glob('*.md')
           for m in _PY_ROLE.finditer(p.read_text())]
  assert len(roles) > 20, roles  # the method page links its functions
  missing = sorted({f'{page}: {target}' for page, target in roles
                    if target.strip().lstrip('~') not in documented})
  assert not missing, '\n'.join(missing)


def test_a_broken_link_reference_or_api_entry_fails_the_build(tmp_path):
  """The documented build fails on each kind of mistake (the real conf.py, a small site)."""
  src = tmp_path / 'src'
  src.mkdir()
  (src / 'conf.py').write_text((DOCS / 'conf.py').read_text())
  (src / 'index.md').write_text(
      '# Broken\n\n[a page that is not there](missing.md), [a heading that is not there]'
      '(#no-such-heading), {doc}`no-such-document`\n\n'
      '```{eval-rst}\n.. automodule:: ltdpt_jax.no_such_module\n```\n')
  result = _sphinx(src, tmp_path / 'out')
  log = result.stdout + result.stderr
  assert result.returncode != 0, log[-3000:]
  for needle in ('missing.md', 'no-such-heading', 'no-such-document', 'no_such_module'):
    assert needle in log, (needle, log[-3000:])


def test_the_build_command_is_documented():
  for page in (REPO / 'README.md', DOCS / 'index.md', DOCS / 'getting-started.md'):
    assert BUILD in page.read_text(), page
  assert '/docs/_build/' in (REPO / '.gitignore').read_text()


def _without_code(text: str) -> str:
  """Markdown without its fenced blocks and inline code (links in code are not links)."""
  text = re.sub(r'^(```|~~~).*?^\1', '', text, flags=re.S | re.M)
  return re.sub(r'`[^`\n]*`', '', text)


def _slug(heading: str) -> str:
  """A heading's anchor as GitHub and MyST (`myst_heading_anchors`) make it."""
  text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # a link: its text
  text = text.replace('`', '').replace('*', '')
  return re.sub(r'[^\w\- ]', '', text.strip().lower()).replace(' ', '-')


def _anchors(page: pathlib.Path) -> set[str]:
  found, seen = set(), {}
  for line in _without_code(page.read_text()).splitlines():
    match = re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)
    if match:
      slug = _slug(match.group(1))
      n = seen.get(slug, 0)
      seen[slug] = n + 1
      found.add(slug if n == 0 else f'{slug}-{n}')
  return found


def _links(page: pathlib.Path) -> list[str]:
  return [m.group(2) for m in _LINK.finditer(_without_code(page.read_text()))]


def test_the_link_checks_find_links_and_anchors():
  assert len(_links(REPO / 'README.md')) > 10
  assert 'the-ablation-in-miniature' in _anchors(DOCS / 'reproducing.md')
  assert 'tune-it-the-folder_grid-study' in _anchors(DOCS / 'own-data.md')
  assert _slug("The demo's backbone, and its `task`") == 'the-demos-backbone-and-its-task'


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page):
  problems = []
  for target in _links(page):
    if re.match(r'[a-z][a-z0-9+.-]*:', target):  # https:, mailto:, ...
      continue
    path, _, anchor = target.partition('#')
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
      problems.append(f'{target}: no file {file}')
    elif anchor and file.suffix == '.md' and anchor not in _anchors(file):
      problems.append(f'{target}: no heading with the anchor #{anchor} in {file.name}')
  assert not problems, f'{page.relative_to(REPO)}:\n' + '\n'.join(problems)
