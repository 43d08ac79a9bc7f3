"""The XLA:CPU options the package sets: the CPU train step's matmuls on Eigen, not YNNPACK.

jaxlib 0.10-0.12 hand XLA:CPU's dots (and the patch-embedding convolution) to YNNPACK by default
(`--xla_cpu_experimental_ynn_fusion_type`, default 'individual_dot' and more). For this model's
shapes on the CPUs we measured (2-core AMD EPYC, AVX2), Eigen's dots are faster: the LT-DPT train
step of ViT-Ti/16 at batch 8, 224 px went from 9.5-10.8 to 12.2-12.5 images/s with YNNPACK off
(the README's benchmark section has the side-by-side table against PyTorch). The flag only
concerns CPU programs (GPU and TPU programs do not read it), and only its value changes: the
program, its FLOPs and (within float32 rounding) its results are the same.

`apply()` runs when `ltdpt_jax` is imported. It appends CPU_FLAGS to `XLA_FLAGS` when:

* the environment does not turn it off (`LTDPT_XLA_CPU_DEFAULTS=0`);
* the user's `XLA_FLAGS` does not already set that flag (theirs wins);
* jaxlib is in the range whose XLA knows the flag (0.10 <= jaxlib < 0.13, pyproject's range:
  XLA aborts on an unknown flag, so outside it nothing is added);
* no JAX backend has started yet (XLA reads XLA_FLAGS once, at backend start; after that the
  flag would do nothing, and `apply` says so in the log).
"""

from __future__ import annotations

import logging
import os
import sys

CPU_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=',)
DISABLE_ENV = 'LTDPT_XLA_CPU_DEFAULTS'
JAXLIB_RANGE = ((0, 10), (0, 13))  # [lo, hi) of jaxlib (major, minor) whose XLA knows CPU_FLAGS


def _jaxlib_version() -> tuple[int, int] | None:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    parts = metadata.version('jaxlib').split('.')
    return int(parts[0]), int(parts[1])
  except (metadata.PackageNotFoundError, ValueError, IndexError):
    return None


def _backend_started() -> bool:
  bridge = sys.modules.get('jax._src.xla_bridge')
  return bool(bridge is not None and bridge.backends_are_initialized())


def flags_to_add(xla_flags: str, jaxlib_version: tuple[int, int] | None,
                 disabled: bool = False) -> list[str]:
  """The CPU_FLAGS `apply` would append to `xla_flags` (pure: no environment read)."""
  if disabled or jaxlib_version is None:
    return []
  lo, hi = JAXLIB_RANGE
  if not lo <= jaxlib_version < hi:
    return []
  present = {f.split('=', 1)[0] for f in xla_flags.split()}
  return [f for f in CPU_FLAGS if f.split('=', 1)[0] not in present]


def apply() -> list[str]:
  """Appends the missing CPU_FLAGS to os.environ['XLA_FLAGS'] (see the module docstring);
  returns what it added."""
  flags = os.environ.get('XLA_FLAGS', '')
  add = flags_to_add(flags, _jaxlib_version(), os.environ.get(DISABLE_ENV, '1') == '0')
  if not add:
    return []
  if _backend_started():
    logging.getLogger(__name__).info(
        'ltdpt_jax was imported after JAX started its backend, so its XLA:CPU options %s are '
        'not in effect (import ltdpt_jax first, or put them in XLA_FLAGS).', ' '.join(add))
    return []
  os.environ['XLA_FLAGS'] = ' '.join([flags] + add if flags else add)
  return add
