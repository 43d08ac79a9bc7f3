"""The device mesh, and host batches onto it: what the train loop, evaluators and benchmark share.

One 1-D mesh named 'data' over every device of every process: batches are sharded over it,
the (small) train state and the frozen backbone are replicated. Each process holds only its
slice of a global batch; `to_global` assembles the slices into one global array.
"""

from __future__ import annotations

import collections
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh named 'data' over all devices of all processes."""
  return jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Every device holds the whole array (train state, frozen backbone, metrics)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P('data'))


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into one global array, sharded over 'data'."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def prefetch_to_device(it, sharding: NamedSharding, size: int = 2) -> Iterator[tuple[Any, Any]]:
  """Yields (global device batch, iterator state after it); transfers `size` batches ahead.

  The iterator state is recorded with each batch, so a checkpoint written after training on a
  batch stores the position right after that batch, not after the prefetched ones.
  """
  queue = collections.deque()

  def enqueue():
    batch = next(it)
    queue.append((to_global(batch, sharding), it.get_state()))

  for _ in range(size):
    enqueue()
  while True:
    yield queue.popleft()
    enqueue()
