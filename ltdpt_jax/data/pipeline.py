"""grain input pipelines: per-host shards of global batches, deterministic, resumable, padded eval.

`make_train_iterator` gives this host's infinite training stream (`TrainIterator`, whose order
`TrainExample` defines), `make_eval_iterator` its padded evaluation batches (`EvalExample`);
`get_dataset_info`, `steps_per_epoch`, `train_batch_shapes` and `crop_on_device` describe them.
Work runs in grain worker processes (`num_workers`), NumPy and Pillow only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from typing import Any

import grain
import numpy as np

from ltdpt_jax.data import sources as sources_lib
from ltdpt_jax.data import transforms

_SHUFFLE_TAG = 0x5EED
_AUGMENT_TAG = 0xA06
_STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs to know about a dataset (all counts from the training split)."""
  name: str
  num_classes: int
  class_counts: np.ndarray  # int64 (num_classes,): training images per class
  num_train: int
  num_eval: int
  image_size: int
  eval_split: str = 'test'
  class_names: tuple[str, ...] = ()  # names of the classes, in label order
  bad_images: tuple[tuple[str, str], ...] = ()  # (path, problem) of the images skipped
  num_val: int = 0  # images held out of training for validation (data.val_fraction)


def get_dataset_info(data) -> DatasetInfo:
  """DatasetInfo of a config's data section (builds the sources: may scan tfds file names once)."""
  src = sources_lib.get_sources(data)
  return DatasetInfo(name=src.name, num_classes=src.num_classes, class_counts=src.class_counts,
                     num_train=len(src.train), num_eval=len(src.eval),
                     image_size=int(data.image_size), eval_split=src.eval_split,
                     class_names=tuple(src.class_names), bad_images=tuple(src.bad_images),
                     num_val=0 if src.val is None else len(src.val))


def steps_per_epoch(data, info: DatasetInfo) -> int:
  """num_train // global batch `data.batch_size` (drop remainder)."""
  steps = info.num_train // int(data.batch_size)
  if steps < 1:
    raise ValueError(f'config.data.batch_size={data.batch_size} exceeds the '
                     f'{info.num_train} training images of {info.name}.')
  return steps


def num_eval_batches(data, info: DatasetInfo) -> int:
  """Batches every host runs in one evaluation: ceil(num_eval / global eval batch)."""
  return math.ceil(info.num_eval / int(data.eval_batch_size))


def num_workers(requested: int) -> int:
  """Worker processes for `config.data.num_workers` (-1: min(32, cores - 2), 0 on <= 2 cores;
  0: the work runs in this process, with threads)."""
  if requested >= 0:
    return int(requested)
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count() or 1
  return max(0, min(32, cores - 2))


def _host_split(global_batch: int, process_index: int | None, process_count: int | None,
                what: str) -> tuple[int, int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  if global_batch % process_count:
    raise ValueError(f'{what}={global_batch} must be divisible by the number of processes '
                     f'({process_count}).')
  return int(process_index), int(process_count), global_batch // process_count


def epoch_permutation(num_records: int, seed: int, epoch: int) -> np.ndarray:
  """The order of epoch `epoch`: default_rng([seed, 0x5EED, epoch]).permutation(num_records)."""
  return np.random.default_rng([seed, _SHUFFLE_TAG, epoch]).permutation(num_records)


def augment_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
  """Generator of the augmentation of position `position` of epoch `epoch`."""
  return np.random.default_rng([seed, _AUGMENT_TAG, epoch, position])


class TrainExample:
  """grain map: host-local stream index -> augmented training example.

  With N training images, global batch B, P processes and per-host batch b = B / P, epoch e uses
  the order `epoch_permutation(N, seed, e)` (seed = config.train.seed), cut into N // B global
  batches (the last N - steps * B images of each epoch's order are dropped). Global step t
  (epoch e = t // steps, k = t % steps) is the images at positions q = k * B + j, j = 0..B-1, of
  that order; host h takes j in [h * b, (h + 1) * b). Every host computes the same permutation,
  so the hosts' batches at step t are disjoint and their union (in host order) is global batch t.
  Position q of epoch e is augmented with `augment_rng(seed, e, q)`, so a batch depends only on
  (config, step), not on the number of hosts or workers, nor on where a run was resumed.

  Each example is {'image': uint8 (S, S, 3), 'label': int32, 'id': int64 (the image's index in
  the train source)}. With `crop_on_device`, 'image' is the image as stored (one size for the
  whole training set, checked per image) and 'crop' int32 (5,) is the RandomResizedCrop box and
  flip (`transforms.train_crop`, drawn from the same generator in the same order), which the
  train step applies (`device_transforms.resized_crop`, bit-identical to the host's crop).
  """

  def __init__(self, source, *, image_size: int, seed: int, global_batch: int,
               process_index: int, process_count: int,
               crop_min_scale: float = transforms.SCALE[0], crop_on_device: bool = False):
    self.source, self.image_size, self.seed = source, int(image_size), int(seed)
    self.crop_min_scale = float(crop_min_scale)
    self.crop_on_device = bool(crop_on_device)
    # With the crop on the device, a batch stacks the images as stored: they must share a shape.
    self.stored_shape = (transforms.as_rgb(source[0]['image']).shape if self.crop_on_device
                         else None)
    self.num_records = len(source)
    self.global_batch = int(global_batch)
    self.local_batch = self.global_batch // process_count
    self.process_index = int(process_index)
    self.steps_per_epoch = self.num_records // self.global_batch
    if self.steps_per_epoch < 1:
      raise ValueError(f'Global batch {global_batch} exceeds the {self.num_records} training '
                       'images.')
    self._cached = None  # (epoch, permutation); replaced whole, so threads never mix epochs

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_cached'] = None
    return state

  def permutation(self, epoch: int) -> np.ndarray:
    cached = self._cached
    if cached is None or cached[0] != epoch:
      cached = (epoch, epoch_permutation(self.num_records, self.seed, epoch))
      self._cached = cached
    return cached[1]

  def locate(self, index: int) -> tuple[int, int, int]:
    """(epoch, position in the epoch's order, record index) of host-local stream element `index`."""
    step, row = divmod(int(index), self.local_batch)
    epoch, k = divmod(step, self.steps_per_epoch)
    position = k * self.global_batch + self.process_index * self.local_batch + row
    return epoch, position, int(self.permutation(epoch)[position])

  def __call__(self, index: int) -> dict[str, Any]:
    epoch, position, record = self.locate(index)
    rng = augment_rng(self.seed, epoch, position)
    if not self.crop_on_device and hasattr(self.source, 'open'):  # image files, kept in Pillow
      image, drawn_on = self.source.open(record)
      return {'label': np.int32(self.source.labels[record]), 'id': np.int64(record),
              'image': transforms.train_transform_image(image, self.image_size, rng,
                                                        min_scale=self.crop_min_scale,
                                                        drawn_on=drawn_on)}
    ex = self.source[record]
    out = {'label': np.int32(ex['label']), 'id': np.int64(ex['id'])}
    if not self.crop_on_device:
      out['image'] = transforms.train_transform(ex['image'], self.image_size, rng,
                                                min_scale=self.crop_min_scale)
      return out
    image = transforms.as_rgb(ex['image'])
    if image.shape != self.stored_shape:
      raise ValueError(
          f'config.data.crop_on_device=True needs training images of one size, but image '
          f'{ex["id"]} of the training set is {image.shape[1]} x {image.shape[0]} and image '
          f'{self.source[0]["id"]} is {self.stored_shape[1]} x {self.stored_shape[0]} (width '
          'x height). Set config.data.crop_on_device=False (the crop then runs on the host), '
          'or store the images at one size.')
    out['image'] = np.ascontiguousarray(image)
    out['crop'] = transforms.train_crop(image.shape[0], image.shape[1], rng,
                                        min_scale=self.crop_min_scale)
    return out


class EvalExample:
  """grain map: host-local eval index -> eval example or padding, with 'mask'.

  No shuffle and no randomness. With M eval images, global eval batch E and e = E / P per host,
  host h's row r of batch k is eval image k * E + h * e + r, or padding (zero image, label 0,
  id -1, mask False) past M: every eval image is in exactly one row with mask True over all hosts.
  """

  def __init__(self, source, *, image_size: int, global_batch: int, process_index: int,
               process_count: int):
    self.source, self.image_size = source, int(image_size)
    self.num_records = len(source)
    self.global_batch = int(global_batch)
    self.local_batch = self.global_batch // process_count
    self.process_index = int(process_index)

  def position(self, index: int) -> int:
    batch, row = divmod(int(index), self.local_batch)
    return batch * self.global_batch + self.process_index * self.local_batch + row

  def __call__(self, index: int) -> dict[str, Any]:
    g = self.position(index)
    if g >= self.num_records:
      s = self.image_size
      return {'image': np.zeros((s, s, 3), np.uint8), 'label': np.int32(0), 'id': np.int64(-1),
              'mask': np.bool_(False)}
    if hasattr(self.source, 'open'):  # image files, kept in Pillow
      image, _ = self.source.open(g)
      return {'image': transforms.eval_transform_image(image, self.image_size),
              'label': np.int32(self.source.labels[g]), 'id': np.int64(g),
              'mask': np.bool_(True)}
    ex = self.source[g]
    return {'image': transforms.eval_transform(ex['image'], self.image_size),
            'label': np.int32(ex['label']), 'id': np.int64(ex['id']), 'mask': np.bool_(True)}


def _worker_init(worker_index: int, worker_count: int) -> None:
  """Keeps JAX (which grain imports) off the accelerators in worker processes: the workers pin
  it to the CPU platform and never call it."""
  del worker_index, worker_count
  jax = sys.modules.get('jax')
  if jax is not None:
    jax.config.update('jax_platforms', 'cpu')


def _to_iter(ds: grain.MapDataset, workers: int) -> grain.IterDataset:
  if workers > 0:
    # grain's worker processes read its absl flags; from Python (a notebook, the Predictor
    # API) nothing parsed them, so they keep their defaults.
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    # One batch at a time per worker thread; parallelism comes from the worker processes.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
    return it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                       per_worker_buffer_size=2),
                          worker_init_fn=_worker_init)
  threads = max(1, min(8, os.cpu_count() or 1))
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                              prefetch_buffer_size=threads))


class TrainIterator(grain.DatasetIterator):
  """Infinite iterator over this host's slices of the global training batches.

  `get_state()` -> {'step', 'seed', 'num_records', 'global_batch', 'version'}; `set_state`
  rebuilds the grain pipeline (and its workers) from that step, so a state saved with one number
  of workers or hosts restores with another (the seed and sizes guard the data order). Works
  with orbax through grain's checkpoint handler, which writes one `process_<i>-of-<n>.json` per
  host, all holding the same state (`checkpoint.IteratorHandler` restores onto any host count).
  """

  def __init__(self, example: TrainExample, workers: int, start_step: int = 0):
    super().__init__()
    self._example, self._workers = example, int(workers)
    self._step = int(start_step)
    self._it = None

  def _build(self):
    b = self._example.local_batch
    ds = grain.MapDataset.range(self._step * b, sys.maxsize).map(self._example)
    ds = ds.batch(b, drop_remainder=True)
    return iter(_to_iter(ds, self._workers))

  def __next__(self) -> dict[str, np.ndarray]:
    self._assert_not_closed()
    if self._it is None:
      self._it = self._build()
    batch = next(self._it)
    self._step += 1
    return batch

  def start_prefetch(self) -> None:
    if self._it is None:
      self._it = self._build()
    self._it.start_prefetch()

  def get_state(self) -> dict[str, Any]:
    e = self._example
    return {'version': _STATE_VERSION, 'step': self._step, 'seed': e.seed,
            'num_records': e.num_records, 'global_batch': e.global_batch}

  def set_state(self, state: dict[str, Any]) -> None:
    e = self._example
    want = {'seed': e.seed, 'num_records': e.num_records, 'global_batch': e.global_batch}
    got = {k: state.get(k) for k in want}
    if got != want:
      raise ValueError(f'Data iterator state {state} was saved for {got}, but this pipeline has '
                       f'{want} (config.train.seed, training images, config.data.batch_size); '
                       'a run can only resume with the same data order.')
    self._close_inner()
    self._step = int(state['step'])

  @property
  def step(self) -> int:
    """The global step of the next batch."""
    return self._step

  def _close_inner(self) -> None:
    if self._it is not None:
      self._it.close()
      self._it = None

  def close(self) -> None:
    self._close_inner()
    super().close()


def make_train_iterator(data, *, seed: int, process_index: int | None = None,
                        process_count: int | None = None) -> TrainIterator:
  """This host's infinite training iterator over a config's data section, in the order that
  `seed` (config.train.seed) gives (`TrainExample` defines it). JAX is asked for the process
  index and count only when they are not given."""
  src = sources_lib.get_sources(data)
  h, p, _ = _host_split(int(data.batch_size), process_index, process_count,
                        'config.data.batch_size')
  example = TrainExample(src.train, image_size=int(data.image_size), seed=int(seed),
                         global_batch=int(data.batch_size), process_index=h, process_count=p,
                         crop_min_scale=float(data.get('crop_min_scale', transforms.SCALE[0])),
                         crop_on_device=crop_on_device(data))
  if data.get('crop_on_device', None) is None and h == 0:
    logging.info('config.data.crop_on_device=None (auto): the training crop runs %s.',
                 'in the train step on the accelerator' if example.crop_on_device else
                 'in the input workers (host)')
  return TrainIterator(example, num_workers(int(data.num_workers)))


# The datasets whose training images all have one size (what crop_on_device=None picks).
ONE_SIZE_DATASETS = ('cifar100_lt', 'synthetic')


def crop_on_device(data, platform: str | None = None) -> bool:
  """Whether the training crop runs on the accelerator: config.data.crop_on_device, or for
  None or a missing key (auto) whether the platform the step runs on (`platform`, default JAX's
  backend) is not the CPU and the dataset is one of ONE_SIZE_DATASETS. For small stored images
  (CIFAR's 32 px) a worker then ships ~50x fewer bytes than a 224 px crop and skips the Pillow
  upsampling that bounds its throughput; on a CPU the step would pay what the workers save."""
  value = data.get('crop_on_device', None)
  if value is not None:
    return bool(value)
  if data.dataset not in ONE_SIZE_DATASETS:
    return False
  if platform is None:
    import jax  # pylint: disable=g-import-not-at-top
    platform = jax.default_backend()
  return platform != 'cpu'


def train_batch_shapes(data, crop: bool | None = None) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{key: (shape without the batch axis, dtype)} of the training batches of a config's data
  section: 'image' uint8 (S, S, 3), or with the crop on the device (`crop`, default
  `crop_on_device(data)`) the stored image size and 'crop' int32 (5,) (`transforms.train_crop`);
  'label' int32, 'id' int64."""
  s = int(data.image_size)
  shapes = {'image': ((s, s, 3), np.uint8), 'label': ((), np.int32), 'id': ((), np.int64)}
  if crop is None:
    crop = crop_on_device(data)
  if crop:
    stored = transforms.as_rgb(sources_lib.get_sources(data).train[0]['image']).shape
    shapes['image'] = (tuple(stored), np.uint8)
    shapes['crop'] = ((len(transforms.CROP_FIELDS),), np.int32)
  return shapes


def make_eval_iterator(data, *, split: str = 'eval', process_index: int | None = None,
                       process_count: int | None = None) -> grain.IterDataset:
  """This host's evaluation batches of a config's data section, an iterable (each `iter()`
  starts a full pass), of its eval split or (`split='val'`) of the validation images held out
  of training (`data.val_fraction`).

  Every host yields ceil(num_eval / data.eval_batch_size) batches of
  eval_batch_size / process_count rows; 'mask' marks real (True) and padding (False) rows.
  """
  src = sources_lib.get_sources(data)
  if split not in ('eval', 'val'):
    raise ValueError(f"split must be 'eval' or 'val', got {split!r}.")
  if split == 'val' and src.val is None:
    raise ValueError('a validation evaluator needs config.data.val_fraction > 0 (the share of '
                     'each class\'s training images held out).')
  return eval_batches(src.eval if split == 'eval' else src.val, image_size=int(data.image_size),
                      batch_size=int(data.eval_batch_size),
                      workers=num_workers(int(data.num_workers)), process_index=process_index,
                      process_count=process_count)


def eval_batches(source, *, image_size: int, batch_size: int, workers: int,
                 process_index: int | None = None,
                 process_count: int | None = None) -> grain.IterDataset:
  """This host's padded evaluation batches (`EvalExample`) of any source, made by `workers`
  worker processes (0: threads): what `make_eval_iterator` and predictions on files run."""
  h, p, b = _host_split(batch_size, process_index, process_count, 'config.data.eval_batch_size')
  example = EvalExample(source, image_size=image_size, global_batch=batch_size,
                        process_index=h, process_count=p)
  batches = math.ceil(len(source) / batch_size)
  ds = grain.MapDataset.range(batches * b).map(example).batch(b, drop_remainder=True)
  return _to_iter(ds, workers)
