"""Checkpointer details not covered by the train-loop tests."""

import os

import jax.numpy as jnp
import numpy as np

from ltdpt_jax import checkpoint as ckpt_lib


def test_relative_workdir_saves_and_restores(tmp_path, monkeypatch):
  """The README's `--workdir=runs/demo` is relative; Orbax needs absolute paths."""
  monkeypatch.chdir(tmp_path)
  c = ckpt_lib.Checkpointer('runs/demo', keep=1)
  state = {'w': jnp.arange(3.0)}
  c.save(1, state, meta={'epoch': 0})
  c.wait()
  restored, meta = c.restore(None, {'w': jnp.zeros(3)})
  c.close()
  assert os.path.isabs(str(c.directory))
  assert (tmp_path / 'runs/demo/checkpoints/1').is_dir()
  np.testing.assert_array_equal(np.asarray(restored['w']), [0.0, 1.0, 2.0])
  assert meta == {'epoch': 0}
