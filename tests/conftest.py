"""Shared pytest set-up: absl flags parsed (grain workers and absl-using modules need it)."""

import pathlib

import pytest
from absl import flags

flags.FLAGS.mark_as_parsed()

SHARED = pathlib.Path(__file__).resolve().parents[2] / 'shared'


@pytest.fixture
def shared_dir():
  """The project's shared/ directory (published split files); skips the test when absent."""
  if not SHARED.is_dir():
    pytest.skip(f'{SHARED} not present')
  return SHARED


@pytest.fixture(scope='session')
def cli_straight(tmp_path_factory):
  """One uninterrupted run of `train_utils.run_config()` through the CLI, shared by the tests that compare other runs with it: (workdir, stderr log)."""
  import types  # pylint: disable=g-import-not-at-top
  import cli_worker  # pylint: disable=g-import-not-at-top
  import train_utils  # pylint: disable=g-import-not-at-top
  config = train_utils.run_config()
  workdir = tmp_path_factory.mktemp('cli_straight') / 'run'
  out = cli_worker.run_cli(cli_worker.cli_command(config, workdir),
                           cli_worker.cache_dir(tmp_path_factory))
  assert out.returncode == 0, out.stderr[-4000:]
  print(f'CLI run: {out.seconds:.1f} s')
  return types.SimpleNamespace(workdir=workdir, log=out.stderr, config=config)
