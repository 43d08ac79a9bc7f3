"""The benchmark's inputs and its timed parts.

* `synthetic_stand_in`: a config's dataset replaced by synthetic data; `random_batch`: a host
  batch shaped and typed like the pipeline's.
* `timed_rounds` / `rate`: rounds of n steps, each timed from the first dispatch to
  `jax.block_until_ready` of the last step's outputs; the median round is reported.
* `StepRunner`, `Run`: the compiled train step on a stream of batches; what the parts share.
* `timed_parts`: the record's train_step, eval_step, input_pipeline and end_to_end sections.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import jax
import numpy as np

from ltdpt_jax import data as data_lib
from ltdpt_jax import sharding
from ltdpt_jax.bench import record
from ltdpt_jax.bench.report import NA
from ltdpt_jax.data import files as files_lib
from ltdpt_jax.data import synthetic as synthetic_lib
from ltdpt_jax.data import transforms

# ---------------------------------------------------------------------------------------------
# Inputs.
# ---------------------------------------------------------------------------------------------

# Datasets whose images are all stored at one size (the stand-in generates that size, so the
# host work per image is the real dataset's: CIFAR's 32 px upsampled to data.image_size).
STORED_IMAGE_SIZE = {'cifar100_lt': 32}


def synthetic_stand_in(config, num_classes: int | None = None
                       ) -> tuple[Any, data_lib.DatasetInfo]:
  """(config, DatasetInfo) with config's dataset replaced by synthetic data (`--synthetic`).

  The returned config is a copy whose data section is `data.dataset = 'synthetic'`, generated
  at the real dataset's stored size where it has one (`STORED_IMAGE_SIZE`) or else at
  config.data.image_size (data.synthetic_image_size, where set, wins), with min(num_classes,
  64) shape/colour classes (the generator's limit; its cost does not depend on the class
  count). The DatasetInfo, what `train.Setup(config, info=...)` builds the model, loss and
  steps from, has `num_classes` classes (default: the real dataset's, `data.NUM_CLASSES`, or
  config.data.num_classes for a synthetic config) with the exponential profile of
  config.data.{num_train_max, imbalance_ratio}. With it and `model.checkpoint=''` (a random
  frozen backbone) the benchmark needs no network and no dataset files.
  """
  d = config.data
  num_classes = _class_count(d) if num_classes is None else num_classes
  if num_classes < 2:
    raise ValueError(f'--num_classes={num_classes} must be >= 2.')
  # At least one image in the rarest class (n_max >= ratio), for the model's GCL and the
  # synthetic generator alike.
  n_max = max(int(d.num_train_max), int(np.ceil(float(d.imbalance_ratio))))
  counts = data_lib.exponential_counts(float(n_max), float(d.imbalance_ratio),
                                       int(num_classes))
  if counts.sum() < d.batch_size:
    raise ValueError(f'The synthetic profile has {counts.sum()} training images, fewer than '
                     f'config.data.batch_size={d.batch_size}; raise config.data.num_train_max.')
  stand_in = copy.deepcopy(config)
  stand_in.data.dataset = 'synthetic'
  stand_in.data.num_classes = min(int(num_classes), synthetic_lib.MAX_CLASSES)
  stand_in.data.num_train_max = n_max
  if d.dataset in STORED_IMAGE_SIZE and not d.get('synthetic_image_size', 0):
    stand_in.data.synthetic_image_size = STORED_IMAGE_SIZE[d.dataset]
  info = data_lib.DatasetInfo(
      name=f'synthetic[{num_classes} classes, {_generated_size(stand_in.data)}]',
      num_classes=int(num_classes), class_counts=counts, num_train=int(counts.sum()),
      num_eval=int(num_classes) * int(d.num_test_per_class), image_size=int(d.image_size))
  return stand_in, info


def _class_count(data) -> int:
  """The class count of the config's dataset; ValueError where it is not known."""
  if data.dataset == 'synthetic':
    return int(data.num_classes)
  if data.dataset in data_lib.NUM_CLASSES:
    return data_lib.NUM_CLASSES[data.dataset]
  raise ValueError(f'Unknown class count of config.data.dataset={data.dataset!r}; pass '
                   '--num_classes.')


def _generated_size(data) -> str:
  """The stand-in's image size in words, e.g. '32px cropped to 224px'."""
  generated = int(data.get('synthetic_image_size', 0) or data.image_size)
  if generated == int(data.image_size):
    return f'{data.image_size}px'
  return f'{generated}px cropped to {data.image_size}px'


def random_batch(rows: int, size: int, num_classes: int, seed: int, *, eval_batch: bool,
                 stored_shape: tuple[int, ...] | None = None, crop_min_scale: float = 0.08
                 ) -> dict[str, np.ndarray]:
  """A host batch shaped and typed like the pipeline's (train: image/label/id; eval: +mask):
  uniform random uint8 images, random labels. `stored_shape` (H, W, 3): a training batch of
  config.data.crop_on_device, images of that shape plus 'crop' numbers drawn as the pipeline
  draws them (`transforms.train_crop`)."""
  rs = np.random.RandomState(seed)
  shape = (size, size, 3) if stored_shape is None else tuple(stored_shape)
  batch = {'image': rs.randint(0, 256, (rows, *shape), dtype=np.uint8),
           'label': rs.randint(0, num_classes, (rows,)).astype(np.int32)}
  if eval_batch:
    batch['mask'] = np.ones((rows,), np.bool_)
  else:
    batch['id'] = np.arange(rows, dtype=np.int64)
  if stored_shape is not None and not eval_batch:
    batch['crop'] = np.stack([
        transforms.train_crop(shape[0], shape[1], np.random.default_rng([seed, r]),
                              min_scale=crop_min_scale) for r in range(rows)])
  return batch


# ---------------------------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------------------------

def timed_rounds(run_steps: Callable[[int], Any], steps: int, warmup: int,
                 repeats: int) -> list[float]:
  """Seconds of each of `repeats` rounds of `run_steps(steps)` after `run_steps(warmup)`."""
  if warmup:
    jax.block_until_ready(run_steps(warmup))
  rounds = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(run_steps(steps))
    rounds.append(time.perf_counter() - t0)
  return rounds


def rate(images_per_step: int, steps: int, rounds: Sequence[float]) -> dict[str, Any]:
  """Median images/s over the rounds, the step time it implies, and every round's images/s."""
  per_round = [images_per_step * steps / t for t in rounds]
  median = statistics.median(per_round)
  return {'images_per_s': median, 'step_time_ms': 1e3 * images_per_step / median,
          'images_per_s_rounds': per_round}


class StepRunner:
  """The compiled train step applied to batches, keeping the (donated) state between calls."""

  def __init__(self, compiled, state, frozen):
    self.compiled, self.state, self.frozen = compiled, state, frozen

  def run(self, n: int, batches: Iterator[Any]) -> tuple[Any, Any]:
    metrics = None
    for _ in range(n):
      self.state, metrics = self.compiled(self.state, self.frozen, next(batches))
    return self.state, metrics


@dataclasses.dataclass
class Run:
  """What the timed parts share: the `train.Setup`, its compiled train step as a StepRunner,
  the timing settings, the model's analytic FLOPs (`flops.analytic_flops`) and the peak FLOP/s
  of all devices that the MFUs are against (None: unknown)."""
  setup: Any
  runner: StepRunner
  steps: int
  warmup: int
  repeats: int
  analytic: dict[str, Any]
  peak_total: float | None

  def rate(self, images_per_step: int, run_steps: Callable[[int], Any],
           repeats: int | None = None) -> dict[str, Any]:
    """`rate` of `--repeats` (or `repeats`) rounds of `--steps` steps after `--warmup`."""
    rounds = timed_rounds(run_steps, self.steps, self.warmup,
                          self.repeats if repeats is None else repeats)
    return rate(images_per_step, self.steps, rounds)

  def mfu(self, flops_per_image: float | None, images_per_s: float) -> float | str:
    return record.mfu(flops_per_image, images_per_s, self.peak_total)


# ---------------------------------------------------------------------------------------------
# The timed parts.
# ---------------------------------------------------------------------------------------------

def timed_parts(run: Run, parts: Sequence[str], compiled: dict[str, Any],
                batches: dict[str, Any], flops: dict[str, Any],
                synthetic: bool) -> dict[str, Any]:
  """The record's sections of the timed parts among `parts` (train, eval, pipeline,
  end_to_end), in that order; `compiled` and `batches` as `programs.compile_programs` makes
  them, `flops` the record's flops section."""
  results = {}
  if 'train' in parts:
    xla = flops['train_step_xla_per_image']
    results['train_step'] = train_step(run, batches['train'], None if xla == NA else xla)
  if 'eval' in parts:
    results['eval_step'] = eval_step(run, compiled['eval'], batches['eval'])
  if 'pipeline' in parts or 'end_to_end' in parts:
    train_ips = results['train_step']['images_per_s'] if 'train_step' in results else None
    results.update(input_parts(run, parts, synthetic, train_ips))
  return results


def train_step(run: Run, batch, xla_flops: float | None) -> dict[str, Any]:
  """The compiled train step alone, on one device-resident `batch` fed again and again;
  `xla_flops`: XLA's FLOPs per image of the step (None: not known)."""
  same_batch = itertools.repeat(batch)
  r = run.rate(int(run.setup.config.data.batch_size), lambda n: run.runner.run(n, same_batch))
  ips, model_flops = r['images_per_s'], run.analytic['train']
  r.update(images_per_s_per_device=ips / jax.device_count(),
           achieved_tflops_xla=xla_flops * ips / 1e12 if xla_flops else NA,
           achieved_tflops_model=model_flops * ips / 1e12,
           mfu_model=run.mfu(model_flops, ips), mfu_xla=run.mfu(xla_flops, ips))
  return r


def eval_step(run: Run, compiled, batch) -> dict[str, Any]:
  """The compiled eval step alone the same way, with the parameters the train part left."""
  params, frozen = run.runner.state.params, run.setup.frozen

  def run_eval(n):
    out = None
    for _ in range(n):
      out = compiled(params, frozen, batch)
    return out

  r = run.rate(int(run.setup.config.data.eval_batch_size), run_eval)
  ips, model_flops = r['images_per_s'], run.analytic['forward']
  r.update(images_per_s_per_device=ips / jax.device_count(),
           achieved_tflops_model=model_flops * ips / 1e12,
           mfu_model=run.mfu(model_flops, ips))
  return r


def input_parts(run: Run, parts: Sequence[str], synthetic: bool,
                train_ips: float | None = None) -> dict[str, Any]:
  """The config's grain training iterator (`make_train_iterator`, workers from
  config.data.num_workers) alone ('pipeline'), then end to end ('end_to_end'); `train_ips`:
  the train step's images/s, to name the bottleneck."""
  data = run.setup.config.data
  workers = data_lib.num_workers(int(data.num_workers))
  out = {}
  it = data_lib.make_train_iterator(data, seed=run.setup.config.train.seed)
  try:
    if 'pipeline' in parts:
      out['input_pipeline'] = pipeline_record(
          it, rows=int(data.batch_size) // jax.process_count(), steps=run.steps,
          warmup=run.warmup, workers=workers, source=_source(data, synthetic), data=data)
    if 'end_to_end' in parts:
      out['end_to_end'] = end_to_end(run, it, workers, out.get('input_pipeline'), train_ips)
  finally:
    it.close()
  return out


def _source(data, synthetic: bool) -> str:
  """Where the pipeline's images come from, in words."""
  if synthetic or data.dataset == 'synthetic':
    return 'synthetic images generated on the fly'
  if data.dataset in ('folder', 'list'):
    return 'image files decoded with Pillow'
  return data.dataset


def end_to_end(run: Run, it, workers: int, pipeline: dict[str, Any] | None,
               train_ips: float | None) -> dict[str, Any]:
  """The training iterator `it` through `prefetch_to_device` into the compiled train step, as
  the train loop runs it (without its periodic metric fetches); one round. With the
  `pipeline` record and the train step's images/s, which of the two bounds it."""
  stream = (b for b, _ in sharding.prefetch_to_device(it, run.setup.batch_sharding))
  r = run.rate(int(run.setup.config.data.batch_size), lambda n: run.runner.run(n, stream),
               repeats=1)
  r.pop('images_per_s_rounds')
  ips = r['images_per_s']
  r.update(workers=workers, images_per_s_per_device=ips / jax.device_count(),
           mfu_model=run.mfu(run.analytic['train'], ips))
  if train_ips is not None and pipeline is not None:
    pipe_ips = pipeline['images_per_s'] * jax.process_count()
    r['bottleneck'] = 'input pipeline' if pipe_ips < train_ips else 'device step'
  return r


def pipeline_record(it, *, rows: int, steps: int, warmup: int, workers: int,
                    source: str, data) -> dict[str, Any]:
  """Images/s of this process's training iterator `it` alone (`rows` images per batch), per
  process and per worker, and what reading one image of the source costs (`source_ms_per_image`,
  to tell the source from the transforms)."""

  def run_pipeline(n):
    host_batch = None
    for _ in range(n):
      host_batch = next(it)
    return host_batch['image']

  r = rate(rows, steps, timed_rounds(run_pipeline, steps, warmup, 1))
  r.pop('images_per_s_rounds')
  r.pop('step_time_ms')
  r.update(workers=workers, per='process', source=source,
           images_per_s_per_worker=r['images_per_s'] / max(workers, 1))
  ms = source_ms_per_image(data)
  if ms is not None:
    r['source_ms_per_image'] = ms
  return r


def source_ms_per_image(data, n: int = 50) -> float | None:
  """Milliseconds to read one training image of the config's source on one thread: generating
  it (synthetic) or decoding its file (image folders and lists: the JPEG/PNG decode a worker
  pays before the augmentation); None for tfds sources."""
  src = data_lib.get_sources(data).train
  if not isinstance(src, (synthetic_lib.SyntheticLT, files_lib.ImageFiles)):
    return None
  src[0]  # pylint: disable=pointless-statement  (the synthetic background pool, file caches)
  t0 = time.perf_counter()
  for i in range(n):
    src[(i * 7) % len(src)]  # pylint: disable=expression-not-assigned
  return (time.perf_counter() - t0) / n * 1e3
