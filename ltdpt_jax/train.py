"""The train loop and the evaluation of a checkpoint, readable top to bottom (big_vision style).

config -> data -> model -> loss -> optimiser -> step -> checkpoint/metrics/evaluators:

1. `Setup`: the mesh over every device of every host (one axis `data`: batches sharded, state
   replicated), the dataset info, the model (`config.model`), the frozen ViT backbone from its
   `.npz` (or a seeded random init) and the trainable prompts, keys, bias scales and cosine head,
   the optimiser (`config.optim`), the jitted train step (`config.loss`) and the predict function
   the evaluators (`config.evals`) run. The frozen partition is stored on the devices in the
   compute dtype (`config.model.dtype`; bf16 halves it), once.
2. Resume from the latest Orbax checkpoint in `workdir` when there is one.
3. Loop: one compiled step per batch from this host's grain iterator (`config.data`). What runs
   after a step is decided by `itstime`: the train metrics every `log_every_steps` and at epoch
   ends (fetched one step late, so the host never stalls the device), each evaluator at its own
   period, a checkpoint every `checkpoint_every_steps` and at epoch ends; everything at the last
   step. SIGTERM (TPU preemption) writes a final checkpoint and stops.

`evaluate_checkpoint` (`--mode=eval`) restores a checkpoint and runs the same evaluators.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from ltdpt_jax import checkpoint as ckpt_lib
from ltdpt_jax import data as data_lib
from ltdpt_jax import evaluators as evaluators_lib
from ltdpt_jax import fetch
from ltdpt_jax import metrics as metrics_lib
from ltdpt_jax import optim
from ltdpt_jax import sharding
from ltdpt_jax import train_step as step_lib
from ltdpt_jax import run_dir as run_dir_lib
from ltdpt_jax.models import ltdpt
from ltdpt_jax.models import vit_checkpoint


# ---------------------------------------------------------------------------------------------
# Small pieces the loop uses.
# ---------------------------------------------------------------------------------------------

def itstime(step: int, every_n_steps: int, total_steps: int, *, last: bool = True) -> bool:
  """Whether periodic work with period `every_n_steps` (0: never) is due after `step`; with
  `last`, it is also due after the final step (big_vision's `itstime`)."""
  return (every_n_steps > 0 and step % every_n_steps == 0) or (last and step == total_steps)


def best_metric(config) -> tuple[str, str]:
  """(evaluator name, record key) of `config.train.best_metric`, e.g. ('eval', 'accuracy')."""
  name, _, key = config.train.best_metric.partition('/')
  return name, key


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


class _Preemption:
  """Catches SIGTERM (Cloud TPU preemption, `kill`) and SIGINT (Ctrl-C) so the loop can save a
  checkpoint and stop cleanly; a second SIGINT stops at once (KeyboardInterrupt).

  One process: a Python handler sets a flag that the loop reads after every step.
  Several processes: every process must stop after the same step, or the one still training
  waits forever in a collective for the one saving. JAX's preemption sync manager (started by
  `jax.distributed.initialize`) catches SIGTERM on any host, tells all the others through the
  coordination service and agrees on one step (`multihost_utils.reached_preemption_sync_point`,
  called after every step); a Python SIGTERM handler would replace its C++ one, so none is
  installed, and a SIGINT is passed on to it as a SIGTERM to the process itself.
  """

  def __init__(self):
    self.requested = False
    self._previous = {}
    self._multi = jax.process_count() > 1
    self._sync_failed = False
    if threading.current_thread() is not threading.main_thread():
      return
    if not self._multi:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handler)
    self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handler)

  def _handler(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if signum == signal.SIGINT:  # the next Ctrl-C stops at once
      signal.signal(signal.SIGINT, signal.default_int_handler)
      if self._multi:
        os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption sync stops every process
        return
    logging.warning('%s received: saving a checkpoint and stopping%s.', name,
                    ' (Ctrl-C again stops at once, without it)' if signum == signal.SIGINT
                    else '')
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
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


class SetupError(ValueError):
  """A problem with the run's inputs found before any training or evaluation step: a dataset that
  is not prepared, a backbone checkpoint of another architecture, no checkpoint to evaluate, a
  workdir written by an incompatible config. `main` prints it as one line (exit code 2)."""


# What bad inputs raise while setting up (config values, missing files, checkpoint contents).
_SETUP_ERRORS = (ValueError, FileNotFoundError, KeyError, fetch.FetchError)


def _setup_or_raise(config, setup_cls: type | None = None, **kwargs) -> 'Setup':
  try:
    return (setup_cls or Setup)(config, **kwargs)
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
# Set-up shared by training, evaluation and the benchmark.
# ---------------------------------------------------------------------------------------------

class Setup:
  """Everything derived from the config before the first step: data info, model, optimiser.

  Each part reads its own config section. `info` (optional) replaces the dataset's own
  `DatasetInfo` (the benchmark's synthetic stand-in); `for_training=False` skips the check that
  the training split holds one global batch (evaluation only).
  """

  def __init__(self, config, *, info: data_lib.DatasetInfo | None = None,
               for_training: bool = True):
    self._init_mesh_and_data(config, info, for_training)
    self.drw_start_step = self.steps_per_epoch * (config.train.epochs - config.train.drw_epochs)
    self.model = ltdpt.build_model(config.model, self.num_classes, self.image_size)
    backbone = vit_checkpoint.load_backbone(config.model, self.image_size)
    self.backbone_sha256 = backbone.sha256  # None for a random init (from train.seed)
    params = ltdpt.init_params(self.model, jax.random.key(config.train.seed), self.image_size,
                               backbone=backbone.params)
    labels = optim.param_labels(params, tuple(config.optim.frozen_patterns))
    trainable, frozen = optim.split_params(params, labels)
    # Stored in the compute dtype once (bf16 for model.dtype='bfloat16'; the step never casts
    # it); the trainable partition stays float32 (the optimiser's master copies).
    self.frozen = jax.device_put(ltdpt.cast_frozen(frozen, self.model), self.replicated)
    self.tx = optim.make_optimizer(config.optim, total_steps=self.total_steps,
                                   global_batch=int(config.data.batch_size),
                                   seed=int(config.train.seed))
    self.state = jax.device_put(step_lib.init_train_state(trainable, self.tx), self.replicated)
    self.train_step = step_lib.make_train_step(
        self.model, self.tx, loss_config=config.loss, seed=int(config.train.seed),
        class_counts=self.info.class_counts, drw_start_step=self.drw_start_step, mesh=self.mesh,
        image_size=self.image_size)
    self.predict_fn = step_lib.make_predict_fn(self.model)

  def _init_mesh_and_data(self, config, info: data_lib.DatasetInfo | None,
                          for_training: bool) -> None:
    """The config, mesh and shardings, the dataset info and the step counts (also
    `pretrain.PretrainSetup`'s)."""
    self.config = config
    self.mesh = sharding.make_mesh()
    self.replicated = sharding.replicated(self.mesh)
    self.batch_sharding = sharding.batch_sharded(self.mesh)
    self.info = info if info is not None else data_lib.get_dataset_info(config.data)
    self.num_classes = int(self.info.num_classes)
    self.steps_per_epoch = (data_lib.steps_per_epoch(config.data, self.info) if for_training
                            else 1)
    self.total_steps = self.steps_per_epoch * config.train.epochs
    self.image_size = int(config.data.image_size)

  def evaluators(self, workdir: str | None) -> list[evaluators_lib.Scheduled]:
    """The evaluators of `config.evals`, writing their records into `workdir`."""
    return evaluators_lib.from_config(
        self.config, predict_fn=self.predict_fn, frozen=self.frozen, mesh=self.mesh,
        info=self.info, steps_per_epoch=self.steps_per_epoch, workdir=workdir, model=self.model)

  def abstract_state(self):
    return ckpt_lib.replicated_abstract(self.state, self.replicated)

  def learning_rate(self, step: int) -> float:
    """The optimiser's learning rate at `step` (what the train records log)."""
    return float(optim.learning_rate(self.config.optim, self.total_steps,
                                     int(self.config.data.batch_size))(step))

  def log_start(self, compiled) -> dict[str, Any]:
    """Logs the config, devices, parameters and FLOPs; returns what `run_info.json` records."""
    return _log_start(self, compiled)

  def meta(self, epoch: int, **extra) -> dict[str, Any]:
    return {'config': self.config.to_dict(), 'epoch': epoch,
            'steps_per_epoch': self.steps_per_epoch, 'total_steps': self.total_steps,
            'num_classes': self.num_classes,
            'class_counts': np.asarray(self.info.class_counts).tolist(),
            'dataset': self.info.name, 'backbone_sha256': self.backbone_sha256,
            'class_names': list(self.info.class_names), 'image_size': self.image_size, **extra}


def _format(x: float | None) -> str:
  return 'n/a' if x is None else f'{x:.3g}'


def _log_start(setup: Setup, compiled) -> dict[str, Any]:
  config = setup.config
  logging.info('Config:\n%s', config)
  logging.info('JAX %s: %d process(es), %d device(s) [%s], %d local.', jax.__version__,
               jax.process_count(), jax.device_count(), jax.devices()[0].device_kind,
               jax.local_device_count())
  report = ltdpt.parameter_report(setup.model, setup.image_size,
                                  frozen_patterns=tuple(config.optim.frozen_patterns))
  logging.info('Parameters: %s', ', '.join(f'{k}={v:,}' for k, v in report.items()))
  flops = step_lib.compiled_flops(compiled)  # of the per-device program; None if not reported
  per_image = flops / (config.data.batch_size / jax.device_count()) if flops else None
  logging.info('Dataset %s: %d train images, %d classes, %d eval images; %d steps/epoch, %d '
               'steps, DRW from step %d. Train step: %s FLOPs (%s per image).',
               setup.info.name, setup.info.num_train, setup.num_classes, setup.info.num_eval,
               setup.steps_per_epoch, setup.total_steps, setup.drw_start_step, _format(flops),
               _format(per_image))
  return {'parameters': report, 'step_flops': flops,
          'backbone_checkpoint': config.model.checkpoint, 'backbone_sha256': setup.backbone_sha256,
          'dataset': setup.info.name, 'class_names': list(setup.info.class_names),
          'class_counts': np.asarray(setup.info.class_counts).tolist()}


# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------

def train_and_evaluate(config, workdir: str, *, allow_config_change: bool = False,
                       setup_cls: type | None = None) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds a checkpoint) and evaluates; returns results.

  Returns {'last', 'best', 'workdir'} (the records of the last and the best evaluation by
  `config.train.best_metric`), or {'stopped_at': step} when SIGTERM or SIGINT stopped the run
  after a checkpoint. A workdir whose run has finished is not trained again: its stored results
  are returned. A resume falls back past damaged checkpoints (set aside as `<step>.damaged`) and
  refuses a config that differs from the stored one beyond `workdir.RESUME_ALLOWED`, or another
  backbone file, unless `allow_config_change` (the change is recorded in the workdir). The
  workdir is checked to be writable, seen by every process (multi-host) and locked
  (`workdir.WorkdirLock`) before anything is built. Raises SetupError for bad inputs (before any step: an unwritable or busy
  workdir included) and FloatingPointError if training diverges.

  `setup_cls` (default `Setup`) builds the run from the config: another trainer with the same
  loop, checkpoints, metrics and resume (`ltdpt_jax.tools.pretrain`'s) passes a `Setup` subclass.
  """
  try:
    created = run_dir_lib.prepare(workdir)
    run_dir_lib.check_shared(workdir)  # multi-host: one workdir that every host sees
  except run_dir_lib.WorkdirError as e:
    raise SetupError(str(e)) from e
  lock = _lock(workdir)  # before anything is built
  preemption = _Preemption()  # early: a signal during set-up or compilation stops cleanly too
  try:
    return _train_and_evaluate(config, workdir, preemption, allow_config_change, setup_cls)
  except SetupError:
    lock.release()
    if jax.process_index() == 0:
      run_dir_lib.remove_if_unused(workdir, created)
    raise
  finally:
    preemption.restore()
    lock.release()


def _lock(workdir: str) -> run_dir_lib.WorkdirLock:
  """The workdir's lock, taken by process 0; every process fails alike when it is held."""
  lock = run_dir_lib.WorkdirLock(workdir)
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except run_dir_lib.WorkdirBusy as e:
      error = str(e)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if not int(multihost_utils.broadcast_one_to_all(np.int32(error is None))):
      error = error or f'--workdir={workdir} is in use by another run (process 0 could not lock it).'
  if error:
    raise SetupError(error)
  return lock


class _Best:
  """The last record of the `config.train.best_metric` evaluator and its best value so far
  (`best` is {'step', 'epoch', <metric>: value}, stored in the checkpoint metadata)."""

  def __init__(self, config, best: dict[str, Any] | None = None):
    self.name, self.key = best_metric(config)
    self.best, self.last = best, None

  def update(self, name: str, record: dict[str, Any], step: int, epoch: int) -> float | None:
    """Takes an evaluator's record; returns the metric when it is the ranked evaluator's."""
    if name != self.name:
      return None
    value = record[self.key]
    self.last = record
    if self.best is None or value > self.best[self.key]:
      self.best = {'step': step, 'epoch': epoch, self.key: value}
    return value

  def results(self, workdir: str, primary) -> dict[str, Any]:
    """results.json: the last record and the full record of the best step."""
    results = {'last': self.last, 'best': self.best, 'workdir': workdir}
    if self.last is not None and self.best is not None:
      if self.best['step'] == self.last['step']:
        results['best'] = self.last
      else:
        best_eval = metrics_lib.read_json(primary.record_path(self.best['step']))
        if best_eval is not None:
          results['best'] = best_eval
    return results


def _finished_results(workdir: str, primary, meta: dict[str, Any], step: int) -> dict[str, Any]:
  results = metrics_lib.read_json(epath.Path(workdir) / 'results.json')
  if results is not None:
    return results
  return {'last': metrics_lib.read_json(primary.record_path(step)), 'best': meta.get('best'),
          'workdir': workdir}


def _train_and_evaluate(config, workdir: str, preemption: _Preemption,
                        allow_config_change: bool, setup_cls: type | None = None
                        ) -> dict[str, Any]:
  setup = _setup_or_raise(config, setup_cls)
  if setup.info.bad_images and jax.process_index() == 0:  # data.on_bad_image='skip'
    (epath.Path(workdir) / 'bad_images.txt').write_text(
        ''.join(f'{path}\t{problem}\n' for path, problem in setup.info.bad_images))
  evaluators = setup.evaluators(workdir)
  tracker = _Best(config)
  primary = next(ev.evaluator for ev in evaluators if ev.name == tracker.name)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                                       best_metric=tracker.key)
  writer = train_iter = None
  try:
    latest = checkpointer.latest_step()
    if latest is not None and latest >= setup.total_steps:
      try:
        meta = checkpointer.read_meta(latest)
        logging.info('The run in %s has finished (checkpoint of step %d of %d); nothing to '
                     'train. Evaluate it with --mode=eval.', workdir, latest, setup.total_steps)
        return _finished_results(workdir, primary, meta, latest)
      except ckpt_lib.CheckpointDamaged:
        pass  # the resume below sets it aside and continues from an older one
    train_iter = data_lib.make_train_iterator(config.data, seed=config.train.seed)
    state = _resume(setup, checkpointer, train_iter, tracker, workdir, allow_config_change)
    # From the step it starts at (0 too: records of a run killed before its first checkpoint go).
    writer = metrics_lib.MetricWriter(workdir, resume_step=int(jax.device_get(state.step)))
    if preemption.requested:
      step = int(jax.device_get(state.step))
      logging.warning('SIGTERM received before the first step: stopping at step %d.', step)
      return {'stopped_at': step}
    stopped_at = _loop(setup, state, train_iter, evaluators, tracker, checkpointer, writer,
                       preemption, workdir)
    if stopped_at is not None:
      return {'stopped_at': stopped_at}
  finally:
    checkpointer.close()
    if writer is not None:
      writer.close()
    if train_iter is not None:
      train_iter.close()
  results = tracker.results(workdir, primary)
  metrics_lib.write_json(epath.Path(workdir) / 'results.json', results)
  logging.info('Done. Metrics: %s/metrics.jsonl (TensorBoard: %s/tb), checkpoints: %s/'
               'checkpoints, results: %s/results.json', workdir, workdir, workdir, workdir)
  return results


def _resume(setup: Setup, checkpointer, train_iter, tracker: _Best, workdir: str,
            allow_config_change: bool):
  """The train state to start from: the newest checkpoint that restores (the data iterator and
  the best metric restored with it), or the initial one (config.json written) when there is
  none. Damaged checkpoints are set aside as `<step>.damaged`, each with one line in the log;
  when every one is damaged, SetupError (never a silent start from scratch)."""
  damaged = []
  for step in sorted(checkpointer.all_steps(), reverse=True):
    try:
      meta = checkpointer.read_meta(step)
      changes = _accept_config(setup, meta, step, workdir, allow_config_change)
      saved = _IteratorState()
      state, meta = checkpointer.restore(step, setup.abstract_state(), data_iter=saved)
    except ckpt_lib.CheckpointDamaged as e:
      moved = checkpointer.set_aside(step)
      logging.warning('%s -- set aside as %s; trying the checkpoint before it.', e, moved)
      damaged.append(step)
      continue
    except ckpt_lib.CheckpointMismatch as e:
      raise SetupError(f'Cannot resume: {e} Resume with the config that wrote it (see '
                       f'{workdir}/config.json) or use a new --workdir.') from e
    try:
      train_iter.set_state(saved.state)
    except ValueError as e:
      raise SetupError(f'Cannot resume from the checkpoint of step {step} in '
                       f'{checkpointer.directory}: {e}') from e
    tracker.best = meta.get('best')
    logging.info('Resumed from the checkpoint of step %d in %s%s.', step, workdir,
                 f' (newer ones damaged: {sorted(damaged)})' if damaged else '')
    _warn_changes(changes, step)
    if changes and jax.process_index() == 0:
      run_dir_lib.record_config_change(workdir, setup.config.to_dict(), changes, step=step,
                                       how=_how(changes))
    return state
  if damaged:
    raise SetupError(
        f'No checkpoint in {checkpointer.directory} can be restored: steps {sorted(damaged)} are '
        'damaged (kept as <step>.damaged). Use a new --workdir, or remove that checkpoints '
        'directory to train from scratch here.')
  metrics_lib.write_json(epath.Path(workdir) / 'config.json', setup.config.to_dict())
  return setup.state


def _how(changes: dict[str, list]) -> str:
  allowed = all(run_dir_lib.is_allowed(k) for k in changes)
  return 'allowed' if allowed else '--allow_config_change'


def _accept_config(setup: Setup, meta: dict[str, Any], step: int, workdir: str,
                   allow_config_change: bool, *, only=None) -> dict[str, list]:
  """Compares the config and the backbone file with those stored with the checkpoint of `step`;
  returns the accepted changes ({key: [stored, current]}).

  Changes in `run_dir_lib.RESUME_ALLOWED` pass with a warning; any other change, or a backbone
  file with another SHA-256, raises SetupError listing both values, unless
  `allow_config_change`.
  """
  directory = f'{workdir}/checkpoints/{step}'
  stored_sha, sha = meta.get('backbone_sha256'), setup.backbone_sha256
  if 'backbone_sha256' in meta and stored_sha != sha and not allow_config_change:
    none = '(none: a random init)'
    raise SetupError(
        f'The backbone is not the one the checkpoint in {directory} was trained on: its file has '
        f'SHA-256 {sha or none}, the run recorded {stored_sha or none}. Point '
        'config.model.checkpoint at the original file, or pass --allow_config_change to use '
        'this one.')
  if 'config' not in meta:
    return {}
  allowed, refused = run_dir_lib.config_changes(meta['config'], setup.config.to_dict(), only=only)
  if refused and not allow_config_change:
    raise SetupError(
        f'The config differs from the one that wrote the checkpoint in {directory}: '
        f'{run_dir_lib.describe_changes(refused)}. Rerun with the config in {workdir}/config.json, '
        'pass --allow_config_change to accept the change (it is recorded in the workdir), or use '
        'a new --workdir.')
  changes = {**allowed, **refused}
  if stored_sha != sha and 'backbone_sha256' in meta:
    changes['backbone_sha256'] = [stored_sha, sha]
  return changes


def _warn_changes(changes: dict[str, list], step: int) -> None:
  if changes:
    logging.warning('The config differs from the checkpoint of step %d (%s): %s.', step,
                    _how(changes), run_dir_lib.describe_changes(changes))


def _loop(setup: Setup, state, train_iter, evaluators, tracker: _Best, checkpointer, writer,
          preemption: _Preemption, workdir: str) -> int | None:
  """Compiles the step, then trains to the end; returns the step a signal stopped it at, if any.

  After each step `itstime` decides what else runs: train metrics (fetched one step late, so
  the host does not wait for the step just dispatched), the evaluators due, a checkpoint.
  """
  config, tc = setup.config, setup.config.train
  spe, total = setup.steps_per_epoch, setup.total_steps
  first_step = step = int(jax.device_get(state.step))
  batches = sharding.prefetch_to_device(train_iter, setup.batch_sharding)
  first_batch = next(batches)
  compiled = setup.train_step.lower(state, setup.frozen, first_batch[0]).compile()
  start_info = setup.log_start(compiled)
  if first_step == 0:
    metrics_lib.write_json(epath.Path(workdir) / 'run_info.json', start_info)

  def save(step, state, iter_state, metrics=None):
    _check_finite(state, step, checkpointer.latest_step())
    checkpointer.save(step, state, data_iter=_IteratorState(iter_state),
                      meta=setup.meta(step // spe, best=tracker.best), metrics=metrics)

  progress = metrics_lib.Progress(total, config.data.batch_size, first_step)
  pending = []   # device metrics of steps not yet written
  for batch, iter_state in itertools.chain([first_batch], batches):
    state, step_metrics = compiled(state, setup.frozen, batch)
    step += 1
    epoch_end = itstime(step, spe, total)
    if itstime(step, tc.log_every_steps, total) or epoch_end:
      ready, pending = pending, [step_metrics]  # earlier steps' metrics, while this one runs
      if ready:
        _write_train_metrics(writer, ready, progress, setup, step - 1)
    else:
      pending.append(step_metrics)

    due = [ev for ev in evaluators if itstime(step, ev.every_steps, total)]
    best_value = None
    if due:
      _check_finite(state, step, checkpointer.latest_step())
      t0 = time.perf_counter()
      for ev in due:
        record = ev.evaluator.run(state.params, step=step, epoch=step // spe)
        writer.write(step, ev.name, evaluators_lib.scalars(record))
        value = tracker.update(ev.name, record, step, step // spe)
        best_value = value if value is not None else best_value
      if tc.get('plots', True):
        _plot(writer, workdir)
      progress.paused += time.perf_counter() - t0

    saved = epoch_end or itstime(step, tc.checkpoint_every_steps, total)
    if saved:
      save(step, state, iter_state,
           metrics=None if best_value is None else {tracker.key: best_value})
    if step == total:
      break
    if preemption.should_stop(step):
      if not saved:
        save(step, state, iter_state)
      if pending:
        _write_train_metrics(writer, pending, progress, setup, step)
      checkpointer.wait()
      logging.warning('Stopped at step %d after a checkpoint; rerun the same command to '
                      'resume.', step)
      return step
  if pending:
    _write_train_metrics(writer, pending, progress, setup, step)
  return None


def _plot(writer, workdir: str) -> None:
  """`plot.plot_run` on process 0 after an evaluation (config.train.plots); a figure that
  cannot be drawn is a warning, never the end of a run."""
  if jax.process_index() != 0:
    return
  writer.flush()  # the learning curves read metrics.jsonl
  try:
    from ltdpt_jax import plot as plot_lib  # pylint: disable=g-import-not-at-top
    plot_lib.plot_run(workdir)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('Plots of %s not drawn: %s: %s', workdir, type(e).__name__, e)


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
  scalars.update(rates, epoch=epoch, lr=setup.learning_rate(step))
  writer.write(step, 'train', scalars)
  logging.info('[step %d/%d, epoch %.2f] loss %.4f | %.1f img/s | %.2f steps/s | ETA %s',
               step, setup.total_steps, epoch, scalars.get('loss', float('nan')),
               rates['images_per_s'], rates['steps_per_s'],
               metrics_lib.format_eta(rates['eta_s']))


# ---------------------------------------------------------------------------------------------
# Evaluation of a checkpoint (--mode=eval).
# ---------------------------------------------------------------------------------------------

def evaluate_checkpoint(config, workdir: str, step: int | None = None, *,
                        allow_config_change: bool = False) -> dict[str, Any]:
  """Runs every evaluator of `config.evals` on the checkpoint of `step` (default latest).

  Each writes its record into `workdir` (e.g. `eval_<step>.json`), equal to the one the training
  run wrote for that step (same eval step, data order and padding), whatever the device or
  process count. Returns the record of the `config.train.best_metric` evaluator. Raises
  SetupError when `workdir` holds no checkpoint (or none of `step`), before anything is built;
  when the checkpoint is damaged (naming the steps that can be evaluated); and when the config's
  model or evaluation data, or the backbone file, differ from the run's (see `_accept_config`).
  """
  if jax.process_count() > 1 and epath.Path(workdir).is_dir():
    try:
      run_dir_lib.check_shared(workdir)  # or process 0 alone would find the checkpoints
    except run_dir_lib.WorkdirError as e:
      raise SetupError(str(e)) from e
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
    step = max(available) if step is None else step
    setup = _setup_or_raise(config, for_training=False)
    try:
      meta = checkpointer.read_meta(step)
      _warn_changes(_accept_config(setup, meta, step, workdir, allow_config_change,
                                   only=run_dir_lib.EVAL_RELEVANT), step)
      state, meta = checkpointer.restore(step, setup.abstract_state())
    except ckpt_lib.CheckpointDamaged as e:
      others = [s for s in checkpointer.readable_steps(setup.abstract_state()) if s != step]
      raise SetupError(f'{e} -- it cannot be evaluated; steps that can: {others} '
                       '(--checkpoint_step=N).') from e
    except ckpt_lib.CheckpointMismatch as e:
      raise SetupError(f'{e} Evaluate with the config that wrote it (see {workdir}/config.json).'
                       ) from e
  finally:
    checkpointer.close()
  records = {ev.name: ev.evaluator.run(state.params, step=step, epoch=int(meta.get('epoch', -1)))
             for ev in setup.evaluators(workdir)}
  logging.info('Evaluated the checkpoint of step %d in %s with %s.', step, workdir,
               ', '.join(records))
  return records[best_metric(config)[0]]
