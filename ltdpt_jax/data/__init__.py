"""Input data: long-tailed benchmarks (tfds, synthetic, image folders, list files) through grain.

Main entry points read the config's data section: `get_dataset_info`, `make_train_iterator`,
`make_eval_iterator`, `steps_per_epoch`, `train_batch_shapes` and `crop_on_device`; the sources
(`get_sources`, `SyntheticLT`, `files`) and the CIFAR-LT profile (`cifar_lt_indices`) are here too.
Nothing in this package imports JAX at module level (grain workers stay NumPy-only), except
`device_transforms` (not imported here), the training crop that the train step runs.
"""

from ltdpt_jax.data.cifar_lt import cifar_lt_counts
from ltdpt_jax.data.cifar_lt import cifar_lt_indices
from ltdpt_jax.data.longtail import exponential_counts
from ltdpt_jax.data.pipeline import crop_on_device
from ltdpt_jax.data.pipeline import DatasetInfo
from ltdpt_jax.data.pipeline import eval_batches
from ltdpt_jax.data.pipeline import get_dataset_info
from ltdpt_jax.data.pipeline import make_eval_iterator
from ltdpt_jax.data.pipeline import make_train_iterator
from ltdpt_jax.data.pipeline import num_eval_batches
from ltdpt_jax.data.pipeline import num_workers
from ltdpt_jax.data.pipeline import steps_per_epoch
from ltdpt_jax.data.pipeline import train_batch_shapes
from ltdpt_jax.data.pipeline import TrainIterator
from ltdpt_jax.data.sources import BENCHMARK_SOURCES
from ltdpt_jax.data.sources import DATASETS
from ltdpt_jax.data.sources import EVAL_SPLITS
from ltdpt_jax.data.sources import get_sources
from ltdpt_jax.data.sources import NUM_CLASSES
from ltdpt_jax.data.sources import ON_BAD_IMAGE
from ltdpt_jax.data.sources import open_tfds
from ltdpt_jax.data.sources import split_file_digests
from ltdpt_jax.data.splits import fetch_split_file
from ltdpt_jax.data.splits import match_split_entries
from ltdpt_jax.data.splits import read_split_file
from ltdpt_jax.data.synthetic import CLASS_SETS
from ltdpt_jax.data.synthetic import SyntheticLT
