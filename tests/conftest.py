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
