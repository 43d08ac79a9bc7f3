"""ltdpt_jax: LT-DPT (long-tailed decoupled prompt tuning) on a frozen ViT, in JAX/Flax."""

__version__ = "0.1.0"
