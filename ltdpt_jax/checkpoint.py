"""Orbax checkpoints of a run: trainable parameters, optimiser state, step, data-iterator state, meta.

One `ocp.CheckpointManager` under `workdir/checkpoints/` with three items per step:

* `state`: the train state pytree without the frozen backbone (trainable params, optimiser state
  including the GNM RNG key, step). The backbone is reloaded from its `.npz`, so a checkpoint of
  ViT-B/16 LT-DPT is a few MB instead of 340 MB.
* `data_iter`: the grain iterator state of every process, one `process_<i>-of-<n>.json` each
  (grain's checkpoint handler). The LT-DPT train iterator's state is the same on every host (the
  next global step, the seed, the sizes), so a checkpoint written by n processes restores onto any
  other number: a process whose own file is missing reads process 0's.
* `meta`: JSON with the config, the epoch, the class counts and evaluation results.

Saves are asynchronous (the train loop goes on while the files are written) and atomic: Orbax
writes to a temporary directory and renames it when complete, so a killed run never leaves a
half-written checkpoint that a restart would read. Preservation keeps the last `keep` checkpoints
plus the best one by evaluation accuracy (its metrics are stored with it, so a resumed run still
knows which one is best).

Restoring onto another device count works because the abstract target carries the shardings of
the *current* mesh (everything in the state is replicated).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as cm

from ltdpt_jax import fetch

class IteratorHandler(grain.checkpoint.CheckpointHandler):
  """grain's iterator handler, restoring onto another process count (see the module docstring).

  Only for iterators whose state does not depend on the process (as `data.TrainIterator`'s);
  the state itself checks that the data order matches.
  """

  def restore(self, directory: epath.Path, item: Any = None, args: Any = None) -> Any:
    item = item or args.item
    own = directory / f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    path = own
    if not own.exists():
      found = sorted(directory.glob('process_*-of-*.json'))
      if not found:
        raise FileNotFoundError(f'No data-iterator state in {directory}.')
      path = next((f for f in found if f.name.startswith('process_0-')), found[0])
      logging.info('Data-iterator state %s restored from %s (written with another process '
                   'count).', own.name, path.name)
    state = path.read_text()
    if isinstance(item, grain.DatasetIterator):
      item.set_state(json.loads(state))
    else:
      item.set_state(state.encode())
    item.start_prefetch()
    return item


@ocp.args.register_with_handler(IteratorHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(IteratorHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
  item: Any


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the items of an LT-DPT run."""

  def __init__(self, workdir: str, *, keep: int = 3, best_metric: str = 'accuracy',
               async_save: bool = True, read_only: bool = False):
    """`best_metric`: the key of the `metrics` given to `save` that ranks checkpoints (higher
    is better); checkpoints saved without metrics are never the best."""
    if not fetch.is_remote(workdir):  # Orbax needs absolute paths; users type relative ones.
      workdir = os.path.abspath(workdir)
    self.directory = epath.Path(workdir) / 'checkpoints'
    best_fn = lambda metrics: float(metrics[best_metric])  # pylint: disable=unnecessary-lambda-assignment
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(keep),
        cm.BestN(get_metric_fn=best_fn, n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save,
        preservation_policy=policy,
        # best_fn makes Orbax write each checkpoint's metrics to disk and read them back when a
        # run restarts; without it the best checkpoint is forgotten (and deleted) on resume.
        best_fn=best_fn,
        best_mode='max',
        read_only=read_only,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
    )
    handlers = {
        'state': ocp.StandardCheckpointHandler(),
        'data_iter': IteratorHandler(),
        'meta': ocp.JsonCheckpointHandler(),
    }
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=tuple(handlers), item_handlers=handlers)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, *, data_iter=None, meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> bool:
    """Starts an asynchronous save of `state` (a pytree of jax arrays) at `step`."""
    if step in self.manager.all_steps():
      return False
    items = {'state': ocp.args.StandardSave(state), 'meta': ocp.args.JsonSave(meta)}
    if data_iter is not None:
      items['data_iter'] = IteratorSave(data_iter)
    saved = self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    if saved:
      logging.info('Saving checkpoint of step %d to %s (asynchronously).', step, self.directory)
    return saved

  def restore(self, step: int | None, abstract_state: Any, *, data_iter=None):
    """Restores (state, meta) at `step` (None = latest); `data_iter` is restored in place.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with the shardings of the current
    mesh (from `jax.eval_shape`), so the checkpoint can come from another device count.
    """
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}.')
    if step not in self.manager.all_steps():
      raise FileNotFoundError(
          f'No checkpoint of step {step} in {self.directory}; available: {self.all_steps()}.')
    items = {'state': ocp.args.StandardRestore(abstract_state), 'meta': ocp.args.JsonRestore()}
    if data_iter is not None:
      items['data_iter'] = IteratorRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored['state'], restored['meta']

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored['meta']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def replicated_abstract(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree` with `sharding` attached (a restore target)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
