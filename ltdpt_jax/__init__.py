"""ltdpt_jax: LT-DPT (long-tailed decoupled prompt tuning) on a frozen ViT, in JAX/Flax.

Importing the package sets one XLA:CPU option before any JAX backend starts
(`apply_xla_cpu_flags`): the CPU train step's matmuls run on Eigen rather than YNNPACK.
"""

from __future__ import annotations

import logging
import os
import sys

__version__ = '0.1.0'

# jaxlib 0.10-0.12 hand XLA:CPU's dots and the patch-embedding convolution to YNNPACK; for this
# model's shapes Eigen is faster (measured: docs/performance.md). The flag concerns
# CPU programs only and changes neither the program's FLOPs nor, beyond float32 rounding, its
# results. XLA aborts on a flag it does not know, hence the jaxlib range [lo, hi).
XLA_CPU_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=',)
XLA_CPU_JAXLIB_RANGE = ((0, 10), (0, 13))
XLA_CPU_DISABLE_ENV = 'LTDPT_XLA_CPU_DEFAULTS'  # '0' turns the defaults off


def _jaxlib_version() -> tuple[int, int] | None:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    parts = metadata.version('jaxlib').split('.')
    return int(parts[0]), int(parts[1])
  except (metadata.PackageNotFoundError, ValueError, IndexError):
    return None


def xla_cpu_flags_to_add(xla_flags: str, jaxlib_version: tuple[int, int] | None,
                         disabled: bool = False) -> list[str]:
  """The XLA_CPU_FLAGS missing from `xla_flags`: none when disabled, outside the jaxlib range,
  or where the user's XLA_FLAGS already sets the flag (theirs wins)."""
  if disabled or jaxlib_version is None:
    return []
  lo, hi = XLA_CPU_JAXLIB_RANGE
  if not lo <= jaxlib_version < hi:
    return []
  present = {f.split('=', 1)[0] for f in xla_flags.split()}
  return [f for f in XLA_CPU_FLAGS if f.split('=', 1)[0] not in present]


def apply_xla_cpu_flags() -> list[str]:
  """Appends the missing XLA_CPU_FLAGS to $XLA_FLAGS; returns them. XLA reads XLA_FLAGS once, when
  a backend starts: after that nothing is added, and the log says so."""
  flags = os.environ.get('XLA_FLAGS', '')
  add = xla_cpu_flags_to_add(flags, _jaxlib_version(),
                             os.environ.get(XLA_CPU_DISABLE_ENV, '1') == '0')
  if not add:
    return []
  bridge = sys.modules.get('jax._src.xla_bridge')
  if bridge is not None and bridge.backends_are_initialized():
    logging.getLogger(__name__).info(
        'ltdpt_jax was imported after JAX started its backend, so its XLA:CPU options %s are '
        'not in effect (import ltdpt_jax first, or put them in XLA_FLAGS).', ' '.join(add))
    return []
  os.environ['XLA_FLAGS'] = ' '.join([flags] + add if flags else add)
  return add


apply_xla_cpu_flags()
