"""Shared pytest set-up: absl flags parsed (grain workers and absl-using modules need it), one
compilation cache and quick XLA:CPU compiles for every process of the session."""

import os
import pathlib
import shutil
import tempfile

import pytest
from absl import flags

import train_utils

flags.FLAGS.mark_as_parsed()


def pytest_configure(config):
  """Before any test module imports JAX: every JAX process of the session (the pytest workers,
  which inherit this environment, and the runs they start) compiles at XLA:CPU optimisation level
  0 (train_utils.TEST_XLA_FLAGS) and shares one persistent compilation cache, so a program the
  session compiled once loads in milliseconds anywhere else. The cache has a size limit, which
  makes JAX lock it (with the `filelock` package) for every read and write: a process never reads
  an entry another is writing. $LTDPT_TEST_XLA_CACHE keeps the cache across sessions."""
  if hasattr(config, 'workerinput'):  # a pytest-xdist worker: the environment is set already
    return
  os.environ['XLA_FLAGS'] = ' '.join(
      f for f in (os.environ.get('XLA_FLAGS', ''), train_utils.TEST_XLA_FLAGS) if f)
  keep = os.environ.get('LTDPT_TEST_XLA_CACHE')
  cache = keep or tempfile.mkdtemp(prefix='ltdpt_test_xla_cache_')
  config.ltdpt_temporary_cache = None if keep else cache
  os.environ['JAX_COMPILATION_CACHE_DIR'] = cache
  os.environ['JAX_COMPILATION_CACHE_MAX_SIZE'] = str(train_utils.TEST_XLA_CACHE_BYTES)


# The files that take longest, longest first (measured with --durations=0). pytest.ini's
# `--dist loadfile --no-loadscope-reorder` hands whole files to the two workers in collection
# order, so these start early and the short files fill in at the end: neither worker waits alone
# on a long file while the other has finished.
LONG_FILES = ('test_multihost.py', 'test_run_dir.py', 'test_studies.py', 'test_benchmark_files.py',
              'test_train_step.py', 'test_pretrain.py', 'test_ltdpt.py', 'test_train.py',
              'test_main.py', 'test_own_data.py', 'test_visualize.py', 'test_bench.py',
              'test_bf16.py', 'test_maps.py', 'test_vit.py', 'test_demo.py',
              'test_config_drift.py', 'test_device_crop.py', 'test_commands.py', 'test_losses.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONG_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file


def pytest_unconfigure(config):
  if getattr(config, 'ltdpt_temporary_cache', None):
    shutil.rmtree(config.ltdpt_temporary_cache, ignore_errors=True)

SHARED = pathlib.Path(__file__).resolve().parents[2] / 'shared'


@pytest.fixture
def shared_dir():
  """The project's shared/ directory (published split files); skips the test when absent."""
  if not SHARED.is_dir():
    pytest.skip(f'{SHARED} not present')
  return SHARED


@pytest.fixture(scope='session')
def cli_straight(tmp_path_factory, worker_id):
  """One uninterrupted run of `train_utils.run_config()` through the CLI: the reference of every
  test that compares another run with it (workdir, stderr log, config). Built once per session,
  by the first worker that asks for it (the other waits on a lock); tests copy it, never write
  to it."""
  import types  # pylint: disable=g-import-not-at-top
  import filelock  # pylint: disable=g-import-not-at-top
  import cli_worker  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.getbasetemp()
  root = root.parent if worker_id != 'master' else root  # the session's, above each worker's
  config = train_utils.run_config()
  workdir, log = root / 'cli_straight' / 'run', root / 'cli_straight' / 'stderr.log'
  with filelock.FileLock(str(root / 'cli_straight.lock')):
    if not log.exists():
      out = cli_worker.run_cli(cli_worker.cli_command(config, workdir))
      assert out.returncode == 0, out.stderr[-4000:]
      print(f'CLI run: {out.seconds:.1f} s')
      log.write_text(out.stderr)
  return types.SimpleNamespace(workdir=workdir, log=log.read_text(), config=config)
