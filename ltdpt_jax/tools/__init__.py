"""The commands besides training (`python -m ltdpt_jax.main`), each `python -m ltdpt_jax.tools.NAME`:
predict, visualize, plot, pretrain, ablate."""
