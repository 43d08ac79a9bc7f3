"""The programs a benchmark run compiles, each for one random device batch.

`compile_programs`: the train step, the primary evaluator's eval step and the forward, as far as
the parts need them; `device_batches`: their batches; `compile_step`: one timed compile.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax

from ltdpt_jax import data as data_lib
from ltdpt_jax import run_dir
from ltdpt_jax import sharding
from ltdpt_jax import train
from ltdpt_jax.bench import parts as parts_lib
from ltdpt_jax.bench.report import NA

# The parts that run or count the compiled train step.
TRAIN_STEP_PARTS = ('train', 'end_to_end', 'flops')


def compile_step(jitted, *args, options: dict[str, Any] | None = None) -> tuple[Any, float]:
  """(compiled, seconds) of `jitted` for `args`; `options` go to XLA's compile."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile(compiler_options=options)
  return compiled, time.perf_counter() - t0


def compile_programs(setup: train.Setup, parts: Sequence[str],
                     options: dict[str, Any] | None) -> tuple[dict, dict, dict]:
  """(compiled, compile seconds, batches) of the programs `parts` need, None and 'n/a' for the
  others: the train step (TRAIN_STEP_PARTS), the eval step (eval) and the forward (flops)."""
  batches = device_batches(setup)
  compiled: dict[str, Any] = {'train': None, 'eval': None, 'forward': None}
  seconds: dict[str, float | str] = {'train': NA, 'eval': NA, 'forward': NA}
  state, frozen = setup.state, setup.frozen
  if set(TRAIN_STEP_PARTS) & set(parts):
    compiled['train'], seconds['train'] = compile_step(
        setup.train_step, state, frozen, batches['train'], options=options)
  if 'eval' in parts:
    compiled['eval'], seconds['eval'] = compile_step(
        _eval_step(setup), state.params, frozen, batches['eval'], options=options)
  if 'flops' in parts:
    compiled['forward'], seconds['forward'] = compile_step(
        _forward(setup), state.params, frozen, batches['forward_images'], options=options)
  return compiled, seconds, batches


def _eval_step(setup: train.Setup):
  """The jitted eval step of the `config.train.best_metric` evaluator."""
  name = run_dir.best_metric(setup.config)[0]
  return next(ev.evaluator for ev in setup.evaluators(None) if ev.name == name).eval_step


def _forward(setup: train.Setup):
  """The jitted forward the FLOP counts compare with: saliency + normalisation + model
  (`predict_fn`), its logits only."""
  return jax.jit(lambda t, f, images: setup.predict_fn(t, f, images)['logits'],
                 in_shardings=(setup.replicated, setup.replicated, setup.batch_sharding))


def device_batches(setup: train.Setup) -> dict[str, Any]:
  """Random global batches (`parts.random_batch`): 'train', 'eval' and 'forward_images'. With
  data.crop_on_device the train batch is the pipeline's (stored images + crop numbers) and the
  forward takes cropped images of its own."""
  data = setup.config.data
  rows, seed = int(data.batch_size) // jax.process_count(), 1234 + jax.process_index()
  stored = (data_lib.train_batch_shapes(data)['image'][0] if data_lib.crop_on_device(data)
            else None)

  def make(rows, seed, **kw):
    host = parts_lib.random_batch(rows, setup.image_size, setup.num_classes, seed, **kw)
    return sharding.to_global(host, setup.batch_sharding)

  batches = {
      'train': make(rows, seed, eval_batch=False, stored_shape=stored,
                    crop_min_scale=float(data.crop_min_scale)),
      'eval': make(int(data.eval_batch_size) // jax.process_count(), seed + 1, eval_batch=True)}
  batches['forward_images'] = (batches['train'] if stored is None else
                               make(rows, seed, eval_batch=False))['image']
  return batches
