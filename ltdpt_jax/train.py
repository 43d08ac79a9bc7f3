"""The train loop and the evaluation of LT-DPT, readable top to bottom (big_vision style).

config -> data -> model -> loss -> optimiser -> step -> checkpoint/metrics:

1. Mesh over every device of every host, one axis `data`: batches sharded, state replicated.
2. Data: per-host grain iterators (each host loads its slice of every global batch).
3. Model: the frozen ViT backbone from its `.npz` (or a seeded random init) plus the trainable
   prompts, keys, bias scales and cosine head.
4. Optimiser: SGD momentum + coupled weight decay + per-step cosine schedule, wrapped by GNM.
5. Resume from the latest Orbax checkpoint in `workdir` when there is one.
6. Loop: one compiled step per batch; every `log_every_steps` the metrics of the previous steps
   are fetched (never the step just dispatched, so the host does not stall the device), printed
   and written; evaluation every `eval_every_epochs`; checkpoints every `checkpoint_every_steps`,
   at epoch ends and at the end; SIGTERM (TPU preemption) writes a final checkpoint and exits.
"""

from __future__ import annotations

import collections
import json
import math
import os
import signal
import threading
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ltdpt_jax import checkpoint as ckpt_lib
from ltdpt_jax import data as data_lib
from ltdpt_jax import metrics as metrics_lib
from ltdpt_jax import optim
from ltdpt_jax import train_step as step_lib
from ltdpt_jax.models import ltdpt


# ---------------------------------------------------------------------------------------------
# Small pieces the loop uses.
# ---------------------------------------------------------------------------------------------

def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh named 'data' over all devices of all processes."""
  return jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into one global array, sharded over 'data'."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


class _IteratorState:
  """A saved grain iterator state, in the form grain's Orbax handler saves and restores."""

  def __init__(self, state: Any = None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes):
    self.state = json.loads(state.decode())

  def start_prefetch(self):
    pass


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


class _Preemption:
  """Catches SIGTERM (Cloud TPU preemption, `kill`) so the loop can save and stop cleanly.

  One process: a Python SIGTERM handler sets a flag that the loop reads after every step.
  Several processes: every process must stop after the same step, or the one still training
  waits forever in a collective for the one saving. JAX's preemption sync manager (started by
  `jax.distributed.initialize`) catches SIGTERM on any host, tells all the others through the
  coordination service and agrees on one step (`multihost_utils.reached_preemption_sync_point`,
  called after every step); a Python handler would replace its C++ one, so none is installed.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._multi = jax.process_count() > 1
    self._sync_failed = False
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if self._multi and not self._sync_failed:
      try:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        if multihost_utils.reached_preemption_sync_point(step):
          logging.warning('Preemption sync point reached at step %d on all processes.', step)
          return True
      except Exception as e:  # pylint: disable=broad-except
        self._sync_failed = True
        logging.warning('No preemption sync across processes (%s): SIGTERM is not handled.', e)
    return self.requested

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def summarize_eval(correct: np.ndarray, count: np.ndarray,
                   class_counts: np.ndarray) -> dict[str, Any]:
  """Top-1, Head/Medium/Tail (sample-weighted, None = no class in that group) and per class."""
  correct = np.asarray(correct, np.float64)
  count = np.asarray(count, np.float64)
  groups = data_lib.shot_groups(class_counts)
  out = {'accuracy': float(correct.sum() / max(count.sum(), 1.0)),
         'num_examples': int(count.sum())}
  for name in ('head', 'medium', 'tail'):
    idx = np.asarray(groups[name], np.int64)
    n = count[idx].sum() if idx.size else 0.0
    out[f'{name}_accuracy'] = float(correct[idx].sum() / n) if n > 0 else None
    out[f'{name}_classes'] = int(idx.size)
  with np.errstate(invalid='ignore', divide='ignore'):
    per_class = np.where(count > 0, correct / np.maximum(count, 1.0), np.nan)
  out['per_class_accuracy'] = [None if math.isnan(v) else float(v) for v in per_class]
  out['mean_per_class_accuracy'] = float(np.nanmean(per_class)) if np.any(count > 0) else None
  return out


def run_evaluation(eval_step, state, frozen, config, mesh, num_classes) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
  """Runs the eval step over the whole eval split; returns per-class (correct, count)."""
  sharding = NamedSharding(mesh, P('data'))
  correct = jnp.zeros((num_classes,), jnp.int32)
  count = jnp.zeros((num_classes,), jnp.int32)
  for batch in data_lib.make_eval_iterator(config):
    batch = to_global({k: batch[k] for k in ('image', 'label', 'mask')}, sharding)
    c, n = eval_step(state.params, frozen, batch)
    correct, count = correct + c, count + n
  return np.asarray(jax.device_get(correct)), np.asarray(jax.device_get(count))


def _write_json(path: str, obj: Any):
  """Writes JSON atomically (temp file + rename), on process 0 only; local or gs:// paths."""
  if jax.process_index() != 0:
    return
  path = epath.Path(path)
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(obj, indent=1))
  tmp.replace(path)


def _read_json(path: str) -> Any | None:
  path = epath.Path(path)
  return json.loads(path.read_text()) if path.exists() else None


def _eval_record(step: int, epoch: int, summary: dict[str, Any]) -> dict[str, Any]:
  return {'step': step, 'epoch': epoch, **summary}


class SetupError(ValueError):
  """A problem with the run's inputs found before any training or evaluation step: a dataset that
  is not prepared, a backbone checkpoint of another architecture, no checkpoint to evaluate, a
  workdir written by an incompatible config. `main` prints it as one line (exit code 2)."""


# What bad inputs raise while setting up (config values, missing files, checkpoint contents).
_SETUP_ERRORS = (ValueError, FileNotFoundError, KeyError)


def _setup_or_raise(config, **kwargs) -> 'Setup':
  try:
    return Setup(config, **kwargs)
  except _SETUP_ERRORS as e:
    raise SetupError(_describe(e)) from e


def _describe(e: BaseException) -> str:
  msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  return msg if isinstance(e, (ValueError, SetupError)) else f'{type(e).__name__}: {msg}'


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _check_finite(state, step: int, last_saved: int | None):
  """Raises FloatingPointError if the trainable parameters or optimiser state hold NaN/inf.

  Called before every checkpoint and evaluation, so no checkpoint of a diverged state is ever
  written. It waits for the step just dispatched, but only where the checkpoint's own
  device-to-host copy waits for it anyway (checkpoint and epoch-end steps).
  """
  if not bool(_all_finite((state.params, state.opt_state))):
    kept = (f'the last checkpoint (step {last_saved}) is intact' if last_saved is not None
            else 'no checkpoint was written')
    raise FloatingPointError(
        f'The trainable parameters are not finite (NaN/inf) after step {step}: training diverged. '
        f'The run stopped without checkpointing this state; {kept}. Lower --config.optim.lr '
        '(or check the data) and start again.')


# ---------------------------------------------------------------------------------------------
# Set-up shared by training and evaluation.
# ---------------------------------------------------------------------------------------------

class Setup:
  """Everything derived from the config before the first step: data info, model, optimiser."""

  def __init__(self, config, *, for_training: bool = True):
    self.config = config
    self.mesh = make_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P('data'))
    self.info = data_lib.get_dataset_info(config)
    self.num_classes = int(self.info.num_classes)
    self.steps_per_epoch = data_lib.steps_per_epoch(config, self.info) if for_training else 1
    self.total_steps = self.steps_per_epoch * config.train.epochs
    self.drw_start_step = self.steps_per_epoch * (config.train.epochs - config.train.drw_epochs)
    self.model = ltdpt.build_model(config, self.num_classes)
    params = ltdpt.init_params(config, self.num_classes, jax.random.key(config.train.seed),
                               config.data.image_size)
    labels = optim.param_labels(params, tuple(config.optim.frozen_patterns))
    trainable, frozen = optim.split_params(params, labels)
    self.frozen = jax.device_put(frozen, self.replicated)
    self.tx = optim.make_optimizer(config, total_steps=self.total_steps)
    self.state = jax.device_put(
        step_lib.init_train_state(trainable, self.tx), self.replicated)
    self.train_step = step_lib.make_train_step(
        self.model, self.tx, config=config, class_counts=self.info.class_counts,
        drw_start_step=self.drw_start_step, mesh=self.mesh)
    self.eval_step = step_lib.make_eval_step(self.model, config=config,
                                             num_classes=self.num_classes, mesh=self.mesh)

  def abstract_state(self):
    return ckpt_lib.replicated_abstract(self.state, self.replicated)

  def meta(self, epoch: int, **extra) -> dict[str, Any]:
    return {'config': self.config.to_dict(), 'epoch': epoch,
            'steps_per_epoch': self.steps_per_epoch, 'total_steps': self.total_steps,
            'num_classes': self.num_classes,
            'class_counts': np.asarray(self.info.class_counts).tolist(),
            'dataset': self.info.name, **extra}


def _log_start(setup: Setup, compiled) -> dict[str, Any]:
  config = setup.config
  logging.info('Config:\n%s', config)
  logging.info('JAX %s: %d process(es), %d device(s) [%s], %d local.', jax.__version__,
               jax.process_count(), jax.device_count(), jax.devices()[0].device_kind,
               jax.local_device_count())
  report = ltdpt.parameter_report(config, setup.num_classes)
  logging.info('Parameters: %s', ', '.join(f'{k}={v:,}' for k, v in report.items()))
  flops = step_lib.compiled_flops(compiled)
  per_image = flops / (config.data.batch_size / jax.device_count())  # per-device program if flops else float('nan')
  logging.info('Dataset %s: %d train images, %d classes, %d eval images; %d steps/epoch, %d '
               'steps, DRW from step %d. Train step: %.3g FLOPs (%.3g per image).',
               setup.info.name, setup.info.num_train, setup.num_classes, setup.info.num_eval,
               setup.steps_per_epoch, setup.total_steps, setup.drw_start_step, flops or 0,
               per_image)
  return {'parameters': report, 'step_flops': flops}


# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------

def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds a checkpoint) and evaluates; returns results.

  Returns {'last', 'best', 'workdir'} (the eval records of the last and the best evaluation), or
  {'stopped_at': step} when SIGTERM stopped the run after a checkpoint. A workdir whose run has
  finished is not trained again: its stored results are returned.
  Raises SetupError for bad inputs (before any step) and FloatingPointError if training diverges.
  """
  preemption = _Preemption()  # early: a SIGTERM during set-up or compilation stops cleanly too
  try:
    return _train_and_evaluate(config, workdir, preemption)
  finally:
    preemption.restore()


def _finished_results(workdir: str, meta: dict[str, Any], step: int) -> dict[str, Any]:
  results = _read_json(os.path.join(workdir, 'results.json'))
  if results is not None:
    return results
  return {'last': _read_json(os.path.join(workdir, f'eval_{step}.json')),
          'best': meta.get('best'), 'workdir': workdir}


def _train_and_evaluate(config, workdir: str, preemption: _Preemption) -> dict[str, Any]:
  setup = _setup_or_raise(config)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  writer = None
  train_iter = None
  try:
    # --- Resume -----------------------------------------------------------------------------
    state = setup.state
    first_step = 0
    best = None
    latest = checkpointer.latest_step()
    if latest is not None and latest >= setup.total_steps:
      meta = checkpointer.read_meta(latest)
      logging.info('The run in %s has finished (checkpoint of step %d of %d); nothing to train. '
                   'Evaluate it with --mode=eval.', workdir, latest, setup.total_steps)
      return _finished_results(workdir, meta, latest)
    train_iter = data_lib.make_train_iterator(config)
    if latest is not None:
      saved = _IteratorState()
      try:
        state, meta = checkpointer.restore(latest, setup.abstract_state(), data_iter=saved)
        train_iter.set_state(saved.state)
      except _SETUP_ERRORS as e:
        raise SetupError(
            f'Cannot resume from the checkpoint of step {latest} in {checkpointer.directory}: '
            f'{_describe(e)} -- Resume with the config that wrote it (see {workdir}/config.json) or '
            'use a new --workdir.') from e
      first_step = int(jax.device_get(state.step))
      best = meta.get('best')
      logging.info('Resumed from the checkpoint of step %d in %s.', first_step, workdir)
    else:
      _write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    writer = metrics_lib.MetricWriter(workdir)
    if preemption.requested:
      logging.warning('SIGTERM received before the first step: stopping at step %d.', first_step)
      return {'stopped_at': first_step}

    # --- Compile once, report sizes and FLOPs -----------------------------------------------
    batches = prefetch_to_device(train_iter, setup.batch_sharding)
    first_batch, first_iter_state = next(batches)
    compiled = setup.train_step.lower(state, setup.frozen, first_batch).compile()
    start_info = _log_start(setup, compiled)
    if first_step == 0:
      _write_json(os.path.join(workdir, 'run_info.json'), start_info)

    def batch_stream():
      yield first_batch, first_iter_state
      yield from batches

    def evaluate(step, state):
      correct, count = run_evaluation(setup.eval_step, state, setup.frozen, config, setup.mesh,
                                      setup.num_classes)
      summary = summarize_eval(correct, count, setup.info.class_counts)
      epoch = step // setup.steps_per_epoch
      _write_json(os.path.join(workdir, f'eval_{step}.json'), _eval_record(step, epoch, summary))
      # JSON lines get every group (null where a group has no class); TensorBoard the numbers.
      writer.write(step, 'eval', {k: v for k, v in summary.items() if k != 'per_class_accuracy'})
      logging.info('[eval step %d, epoch %d] top-1 %.2f%% | head %s | medium %s | tail %s', step,
                   epoch, 100 * summary['accuracy'], *[
                       'n/a' if summary[f'{g}_accuracy'] is None
                       else f"{100 * summary[f'{g}_accuracy']:.2f}%"
                       for g in ('head', 'medium', 'tail')])
      return summary

    def save(step, state, iter_state, epoch, metrics=None):
      _check_finite(state, step, checkpointer.latest_step())
      checkpointer.save(step, state, data_iter=_IteratorState(iter_state),
                        meta=setup.meta(epoch, best=best), metrics=metrics)

    # --- Loop -------------------------------------------------------------------------------
    progress = metrics_lib.Progress(setup.total_steps, config.data.batch_size, first_step)
    pending = []   # device metrics of steps not yet written
    last = None
    step = first_step
    stream = batch_stream()
    while step < setup.total_steps:
      batch, iter_state = next(stream)
      state, step_metrics = compiled(state, setup.frozen, batch)
      step += 1
      epoch_end = step % setup.steps_per_epoch == 0
      final = step == setup.total_steps

      if step % config.train.log_every_steps == 0 or epoch_end or final:
        # Fetch the metrics of earlier steps (already computed) while this step runs.
        ready, pending = pending, [step_metrics]
        if ready:
          _write_train_metrics(writer, ready, progress, setup, step - 1)
      else:
        pending.append(step_metrics)

      saved_this_step = False
      if epoch_end:
        epoch = step // setup.steps_per_epoch
        summary = None
        if epoch % config.train.eval_every_epochs == 0 or final:
          _check_finite(state, step, checkpointer.latest_step())
          t0 = time.perf_counter()
          summary = evaluate(step, state)
          progress.paused += time.perf_counter() - t0
          if best is None or summary['accuracy'] > best['accuracy']:
            best = {'step': step, 'epoch': epoch, 'accuracy': summary['accuracy']}
          last = _eval_record(step, epoch, summary)
        save(step, state, iter_state, epoch,
             metrics={'accuracy': summary['accuracy']} if summary else None)
        saved_this_step = True
      elif step % config.train.checkpoint_every_steps == 0:
        save(step, state, iter_state, step // setup.steps_per_epoch)
        saved_this_step = True

      if not final and preemption.should_stop(step):
        if not saved_this_step:
          save(step, state, iter_state, step // setup.steps_per_epoch)
        if pending:
          _write_train_metrics(writer, pending, progress, setup, step)
          pending = []
        checkpointer.wait()
        logging.warning('Stopped at step %d after a checkpoint; rerun the same command to '
                        'resume.', step)
        return {'stopped_at': step}
    if pending:
      _write_train_metrics(writer, pending, progress, setup, step)
      pending = []
  finally:
    checkpointer.close()
    if writer is not None:
      writer.close()
    if train_iter is not None:
      train_iter.close()

  results = {'last': last, 'best': best, 'workdir': workdir}
  if last is not None and best is not None:
    if best['step'] != last['step']:
      best_eval = _read_json(os.path.join(workdir, f"eval_{best['step']}.json"))
      if best_eval is not None:
        results['best'] = best_eval
    else:
      results['best'] = last
  _write_json(os.path.join(workdir, 'results.json'), results)
  logging.info('Done. Metrics: %s/metrics.jsonl (TensorBoard: %s/tb), checkpoints: %s/'
               'checkpoints, results: %s/results.json', workdir, workdir, workdir, workdir)
  return results


def _write_train_metrics(writer, ready, progress, setup, step):
  """Averages fetched step metrics, checks for NaN, prints and writes one train record."""
  fetched = jax.device_get(ready)
  scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
  if not all(math.isfinite(v) for v in scalars.values()):
    bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
    raise FloatingPointError(
        f'Non-finite training metrics {bad} around step {step}. The run stopped without '
        'writing a checkpoint of this state; the last checkpoint is intact. Lower '
        '--config.optim.lr or check the data and rerun.')
  rates = progress.report(step)
  epoch = step / setup.steps_per_epoch
  scalars.update(rates, epoch=epoch, lr=float(optim.learning_rate(setup.config,
                                                                  setup.total_steps)(step)))
  writer.write(step, 'train', scalars)
  logging.info('[step %d/%d, epoch %.2f] loss %.4f | %.1f img/s | %.2f steps/s | ETA %s',
               step, setup.total_steps, epoch, scalars.get('loss', float('nan')),
               rates['images_per_s'], rates['steps_per_s'],
               metrics_lib.format_eta(rates['eta_s']))


# ---------------------------------------------------------------------------------------------
# Evaluation of a checkpoint (--mode=eval).
# ---------------------------------------------------------------------------------------------

def evaluate_checkpoint(config, workdir: str, step: int | None = None) -> dict[str, Any]:
  """Evaluates the checkpoint of `step` (default latest) and writes `workdir/eval_<step>.json`.

  The record equals the one the training run wrote for that step (same eval step, data order
  and padding), whatever the device or process count. Raises SetupError when `workdir` holds
  no checkpoint (or none of `step`), before anything is built.
  """
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    available = checkpointer.all_steps()
    if not available:
      raise SetupError(
          f'No checkpoint in {checkpointer.directory}: train first with --mode=train and the '
          'same --workdir (or pass the --workdir of a trained run).')
    if step is not None and step not in available:
      raise SetupError(f'No checkpoint of step {step} in {checkpointer.directory}; available '
                       f'steps: {sorted(available)} (--checkpoint_step).')
    setup = _setup_or_raise(config, for_training=False)
    try:
      state, meta = checkpointer.restore(step, setup.abstract_state())
    except _SETUP_ERRORS as e:
      raise SetupError(
          f'Cannot restore the checkpoint of step {step or max(available)} in '
          f'{checkpointer.directory} with this config: {_describe(e)} -- Evaluate with the config '
          f'that wrote it (see {workdir}/config.json).') from e
  finally:
    checkpointer.close()
  step = int(jax.device_get(state.step))
  correct, count = run_evaluation(setup.eval_step, state, setup.frozen, config, setup.mesh,
                                  setup.num_classes)
  summary = summarize_eval(correct, count, setup.info.class_counts)
  record = _eval_record(step, int(meta.get('epoch', -1)), summary)
  _write_json(os.path.join(workdir, f'eval_{step}.json'), record)
  logging.info('Checkpoint of step %d: top-1 %.2f%%; written to %s', step,
               100 * summary['accuracy'], os.path.join(workdir, f'eval_{step}.json'))
  return record
