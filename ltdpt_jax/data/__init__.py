"""Input data: long-tailed benchmarks from tensorflow-datasets and a synthetic one, through grain.

Every function reads the config's data section (`config.data`), plus the train order's seed.

Public API:
  get_dataset_info(config.data) -> DatasetInfo
  make_train_iterator(config.data, *, seed, process_index=None, process_count=None) -> TrainIterator
  make_eval_iterator(config.data, *, process_index=None, process_count=None) -> grain.IterDataset
  steps_per_epoch(config.data, info), num_eval_batches(config.data, info), num_workers(n)
  train_batch_shapes(config.data): the training batch's keys, shapes and dtypes
  crop_on_device(config.data): whether the training crop runs in the train step (None = auto)
  cifar_lt_counts, cifar_lt_indices, exponential_counts
  read_split_file, fetch_split_file, match_split_entries
  SyntheticLT, get_sources, open_tfds; DATASETS, EVAL_SPLITS, NUM_CLASSES, ON_BAD_IMAGE,
  CLASS_SETS (the synthetic class sets: 'default', 'upstream', 'downstream')
  files: image folders and list files (scan_folder, read_list, decode_image, ImageFiles)

Nothing in this package imports JAX at module level (grain workers stay NumPy-only); the
pipeline asks JAX for the process index / count only when they are not given. The exception is
`device_transforms` (not imported here): the training crop in JAX, which the train step runs
when the crop runs on the device (`crop_on_device`).
"""

from ltdpt_jax.data.cifar_lt import cifar_lt_counts
from ltdpt_jax.data.cifar_lt import cifar_lt_indices
from ltdpt_jax.data.longtail import exponential_counts
from ltdpt_jax.data.pipeline import crop_on_device
from ltdpt_jax.data.pipeline import DatasetInfo
from ltdpt_jax.data.pipeline import get_dataset_info
from ltdpt_jax.data.pipeline import make_eval_iterator
from ltdpt_jax.data.pipeline import make_train_iterator
from ltdpt_jax.data.pipeline import num_eval_batches
from ltdpt_jax.data.pipeline import num_workers
from ltdpt_jax.data.pipeline import steps_per_epoch
from ltdpt_jax.data.pipeline import train_batch_shapes
from ltdpt_jax.data.pipeline import TrainIterator
from ltdpt_jax.data.sources import DATASETS
from ltdpt_jax.data.sources import EVAL_SPLITS
from ltdpt_jax.data.sources import get_sources
from ltdpt_jax.data.sources import NUM_CLASSES
from ltdpt_jax.data.sources import ON_BAD_IMAGE
from ltdpt_jax.data.sources import open_tfds
from ltdpt_jax.data.splits import fetch_split_file
from ltdpt_jax.data.splits import match_split_entries
from ltdpt_jax.data.splits import read_split_file
from ltdpt_jax.data.synthetic import CLASS_SETS
from ltdpt_jax.data.synthetic import SyntheticLT
