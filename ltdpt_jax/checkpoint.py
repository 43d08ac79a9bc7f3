"""Orbax checkpoints of a run: trainable parameters, optimiser state, step, data-iterator state.

`Checkpointer` wraps one `ocp.CheckpointManager` under `workdir/checkpoints/`; a checkpoint that
cannot be read raises `CheckpointDamaged`, a readable one of another model or optimiser raises
`CheckpointMismatch`. `IteratorHandler` restores the data-iterator state onto any process count.
"""

from __future__ import annotations

import dataclasses
import gc
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
from ltdpt_jax.optim import path_name

class CheckpointDamaged(Exception):
  """A checkpoint whose files cannot be read (truncated, garbage, missing parts).

  The train loop sets it aside as `<step>.damaged` and falls back to the newest older one.
  """

  def __init__(self, step: int, directory, reason: str):
    super().__init__(f'The checkpoint of step {step} in {directory} is damaged: {reason}')
    self.step, self.reason = step, reason


class CheckpointMismatch(ValueError):
  """A readable checkpoint of another model or optimiser than the one being restored."""


def _first_line(e: BaseException) -> str:
  """The first line of the root cause (Orbax wraps TensorStore's precise error in a vague one)."""
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0][:300] if text else ""}'


class IteratorHandler(grain.checkpoint.CheckpointHandler):
  """grain's iterator handler, restoring onto another process count.

  grain writes one `process_<i>-of-<n>.json` per process. The LT-DPT train iterator's state is
  the same on every host (the next global step, the seed, the sizes), so a process whose own
  file is missing reads process 0's. Only for iterators whose state does not depend on the
  process (as `data.TrainIterator`'s); the state itself checks that the data order matches.
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
  """Thin wrapper over `ocp.CheckpointManager` with the items of an LT-DPT run.

  Three items per step: `state`, the train state without the frozen backbone (trainable params,
  optimiser state including the GNM key, step; the backbone is reloaded from its `.npz`, so a
  checkpoint is a few MB); `data_iter`, the grain iterator state (`IteratorHandler`); `meta`,
  JSON with the config, the epoch, the class counts and evaluation results. Saves are
  asynchronous and atomic (Orbax writes to a temporary directory and renames it when complete),
  so a killed run never leaves a half-written checkpoint that a restart would read. It keeps the
  last `keep` checkpoints plus the best one by `best_metric`.
  """

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

  def _step(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}.')
    if step not in self.manager.all_steps():
      raise FileNotFoundError(
          f'No checkpoint of step {step} in {self.directory}; available: {self.all_steps()}.')
    return step

  def restore(self, step: int | None, abstract_state: Any, *, data_iter=None):
    """Restores (state, meta) at `step` (None = latest); `data_iter` is restored in place.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with the shardings of the current
    mesh (from `jax.eval_shape`), so the checkpoint can come from another device count. Raises
    CheckpointMismatch when the checkpoint holds other arrays than `abstract_state` (another
    model or optimiser) and CheckpointDamaged when its files cannot be read.
    """
    step = self._step(step)
    self.check_arrays(step, abstract_state)
    items = {'state': ocp.args.StandardRestore(abstract_state), 'meta': ocp.args.JsonRestore()}
    if data_iter is not None:
      items['data_iter'] = IteratorRestore(data_iter)
    restored = self._read(step, items, 'its arrays')
    return restored['state'], restored['meta']

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (CheckpointDamaged when it cannot be read)."""
    step = self._step(step)
    meta = self._read(step, {'meta': ocp.args.JsonRestore()}, 'its metadata')['meta']
    if not isinstance(meta, dict):
      raise CheckpointDamaged(step, self.directory, f'its metadata is not a JSON object: {meta!r}')
    return meta

  def _read(self, step: int, items: dict[str, Any], what: str):
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except  # Orbax/TensorStore raise bare ones
      # A failed restore leaves asyncio tasks whose errors nobody retrieves; freed here, at a known
      # point, their logging cannot run inside a later parse (which corrupts CPython 3.11's
      # parser state: "AST constructor recursion depth mismatch").
      gc.collect()
      raise CheckpointDamaged(step, self.directory, f'{what} cannot be read: {_first_line(e)}'
                              ) from e

  def check_arrays(self, step: int, abstract_state: Any) -> None:
    """Raises CheckpointMismatch naming the arrays where the checkpoint of `step` and
    `abstract_state` differ (path, shape or dtype); CheckpointDamaged if it has no readable
    array metadata."""
    try:
      stored = self.manager.item_metadata(step)['state']
      stored = {path_name(p): (tuple(m.shape), str(m.dtype))
                for p, m in jax.tree_util.tree_flatten_with_path(stored)[0]}
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointDamaged(step, self.directory,
                              f'its array metadata cannot be read: {_first_line(e)}') from e
    want = {path_name(p): (tuple(x.shape), str(x.dtype))
            for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    diffs = [f'{k}: checkpoint {stored.get(k, "absent")}, this config {want.get(k, "absent")}'
             for k in sorted(stored.keys() | want.keys()) if stored.get(k) != want.get(k)]
    if diffs:
      raise CheckpointMismatch(
          f'The checkpoint of step {step} in {self.directory} holds other arrays than this '
          f'config trains ({len(diffs)} differ, e.g. ' + '; '.join(diffs[:3]) + ').')

  def set_aside(self, step: int) -> str:
    """Renames a damaged checkpoint to `<step>.damaged` (kept, never chosen again)."""
    src = self.directory / str(step)
    dest = self.directory / f'{step}.damaged'
    n = 1
    while dest.exists():
      n += 1
      dest = self.directory / f'{step}.damaged{n}'
    if jax.process_index() == 0:
      src.rename(dest)
    self.manager.reload()
    return str(dest)

  def readable_steps(self, abstract_state: Any) -> list[int]:
    """The steps whose metadata and array metadata read and match `abstract_state`."""
    out = []
    for step in self.all_steps():
      try:
        self.read_meta(step)
        self.check_arrays(step, abstract_state)
      except (CheckpointDamaged, CheckpointMismatch):
        continue
      out.append(step)
    return out

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def replicated_abstract(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree` with `sharding` attached (a restore target)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class IteratorState:
  """A grain iterator state held apart from its iterator, in the form `IteratorHandler` saves and
  restores: what the loop saves with each step's batch, and restores into the iterator."""

  def __init__(self, state: Any = None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes):
    self.state = json.loads(state.decode())

  def start_prefetch(self):
    pass
