"""The benchmark: `python -m ltdpt_jax.bench` (the train step, eval step, input pipeline and
memory), `python -m ltdpt_jax.bench.host_pipeline` (what one input worker delivers) and
`python -m ltdpt_jax.bench.cpu_vs_torch` (the train step against the PyTorch one)."""
