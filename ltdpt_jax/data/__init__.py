"""Input data: long-tailed benchmarks from tensorflow-datasets and a synthetic one, through grain.

Public API:
  get_dataset_info(config) -> DatasetInfo
  make_train_iterator(config, *, process_index=None, process_count=None) -> TrainIterator
  make_eval_iterator(config, *, process_index=None, process_count=None) -> grain.IterDataset
  steps_per_epoch(config, info), num_eval_batches(config, info)
  cifar_lt_counts, cifar_lt_indices, exponential_counts, shot_groups
  read_split_file, fetch_split_file, match_split_entries
  SyntheticLT, get_sources, open_tfds

Nothing in this package imports JAX at module level (grain workers stay NumPy-only); the
pipeline asks JAX for the process index / count only when they are not given.
"""

from ltdpt_jax.data.cifar_lt import cifar_lt_counts
from ltdpt_jax.data.cifar_lt import cifar_lt_indices
from ltdpt_jax.data.longtail import exponential_counts
from ltdpt_jax.data.longtail import shot_groups
from ltdpt_jax.data.pipeline import DatasetInfo
from ltdpt_jax.data.pipeline import get_dataset_info
from ltdpt_jax.data.pipeline import make_eval_iterator
from ltdpt_jax.data.pipeline import make_train_iterator
from ltdpt_jax.data.pipeline import num_eval_batches
from ltdpt_jax.data.pipeline import steps_per_epoch
from ltdpt_jax.data.pipeline import TrainIterator
from ltdpt_jax.data.sources import get_sources
from ltdpt_jax.data.sources import open_tfds
from ltdpt_jax.data.splits import fetch_split_file
from ltdpt_jax.data.splits import match_split_entries
from ltdpt_jax.data.splits import read_split_file
from ltdpt_jax.data.synthetic import SyntheticLT
