"""Tiny configs and helpers shared by the train-step and train-loop tests."""

from __future__ import annotations

import importlib.util
from importlib import metadata
import os
import pathlib

from ltdpt_jax import config_lib
from ltdpt_jax import run_dir as run_dir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
# XLA CPU options for the reference computations of the tests: compiles several times faster,
# the same results to float tolerance and the same FLOP counts.
QUICK = {'xla_backend_optimization_level': 0}


def _jaxlib_version() -> tuple[int, ...]:
  return tuple(int(p) for p in metadata.version('jaxlib').split('.')[:2])


# For every program of a test session (tests/conftest.py puts it in XLA_FLAGS): that level, and
# on jaxlib 0.10 XLA:CPU's older elemental emitters instead of its MLIR fusion emitters, which
# compile these small programs about twice as fast again (the tiny train step: 5.2 s -> 2.2 s)
# to the same results within the tests' tolerances. jaxlib 0.12's XLA no longer knows that flag
# (and aborts on an unknown one), so it is added for 0.10 only.
TEST_XLA_FLAGS = ' '.join(['--xla_backend_optimization_level=0'] + (
    ['--xla_cpu_use_fusion_emitters=false'] if _jaxlib_version() < (0, 11) else []))
# The session's compilation cache holds a few hundred MiB; its limit makes JAX lock it.
TEST_XLA_CACHE_BYTES = 4 << 30


def load_config(name: str, arg: str | None = None):
  """configs/<name>.py's get_config(arg), loaded from its file like --config does."""
  path = REPO / 'configs' / f'{name}.py'
  spec = importlib.util.spec_from_file_location(f'configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


leaves = run_dir_lib.flatten_config  # {'a': {'b': 1}} -> {'a.b': 1}


def tiny_config(*, image_size: int = 16, batch_size: int = 16, method: str = 'fr_br',
                epochs: int = 2, drw_epochs: int = 1):
  """A few-second LT-DPT run on the synthetic benchmark (patch 4, width 32, 2 blocks)."""
  c = config_lib.base_config()
  c.data.dataset = 'synthetic'
  c.data.num_classes = 6
  c.data.imbalance_ratio = 5.0
  c.data.num_train_max = 40
  c.data.num_test_per_class = 5
  c.data.image_size = image_size
  c.data.batch_size = batch_size
  c.data.eval_batch_size = 16
  c.data.num_workers = 0
  c.model.backbone = 'custom'
  c.model.checkpoint = ''  # a random frozen backbone
  c.model.vit.patch_size = 4
  c.model.vit.hidden_size = 32
  c.model.vit.num_layers = 2
  c.model.vit.num_heads = 2
  c.model.vit.mlp_dim = 64
  c.model.method = method
  c.model.num_fr_prompts = 2
  c.model.num_br_prompts = 2
  c.model.num_groups = 4
  c.model.top_k = 2
  c.model.num_br_blocks = 1
  c.optim.lr = 0.05
  c.train.epochs = epochs
  c.train.drw_epochs = drw_epochs
  c.train.eval_every_epochs = 1
  c.train.checkpoint_every_steps = 3
  c.train.log_every_steps = 2
  c.train.plots = False  # a few seconds per evaluation; tests/test_visualize.py turns them on
  return c


def run_config(**train_overrides):
  """`tiny_config()` keeping every checkpoint: the run the train-loop and CLI tests compare
  (14 steps; checkpoints at 3, 6, 7, 9, 12, 14; evaluations at 7 and 14)."""
  c = tiny_config()
  c.train.keep_checkpoints = 20
  c.train.update(train_overrides)
  return c


def subprocess_env(num_devices: int | None = None) -> dict[str, str]:
  """Environment for a child Python: repo on the path, CPU only, optional fake devices."""
  env = dict(os.environ)
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  env['JAX_PLATFORMS'] = 'cpu'
  devices = [f'--xla_force_host_platform_device_count={num_devices}'] if num_devices else []
  env['XLA_FLAGS'] = ' '.join([TEST_XLA_FLAGS] + devices)
  return env
