"""ltdpt_jax: LT-DPT (long-tailed decoupled prompt tuning) on a frozen ViT, in JAX/Flax."""

from ltdpt_jax import xla_cpu as _xla_cpu

__version__ = "0.1.0"

# XLA:CPU options (the matmul library), before any JAX backend starts: see xla_cpu.py.
_xla_cpu.apply()
