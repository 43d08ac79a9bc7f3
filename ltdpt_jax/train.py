"""The train loop and the evaluation of a checkpoint, readable top to bottom.

`Setup` builds what the config describes before the first step: mesh, dataset info, model,
frozen backbone, optimiser, jitted train step and predict function. `train_and_evaluate` is a
training run (set up, resume, loop, finish) in a `run_dir.RunDir`; what runs after a step is
decided by `itstime`. `evaluate_checkpoint` (--mode=eval) runs the evaluators on a checkpoint.
"""

from __future__ import annotations

import itertools
import math
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
from ltdpt_jax import models
from ltdpt_jax import optim
from ltdpt_jax import plot as plot_lib
from ltdpt_jax import run_dir as run_dir_lib
from ltdpt_jax import sharding
from ltdpt_jax import train_step as step_lib
from ltdpt_jax.models import ltdpt
from ltdpt_jax.models import vit
from ltdpt_jax.models import vit_checkpoint
from ltdpt_jax.run_dir import SetupError


def itstime(step: int, every_n_steps: int, total_steps: int, *, last: bool = True) -> bool:
  """Whether periodic work with period `every_n_steps` (0: never) is due after `step`; with
  `last`, it is also due after the final step (big_vision's `itstime`)."""
  return (every_n_steps > 0 and step % every_n_steps == 0) or (last and step == total_steps)


# ---------------------------------------------------------------------------------------------
# Set-up, shared by training, evaluation and the benchmark.
# ---------------------------------------------------------------------------------------------

class Setup:
  """Everything derived from the config before the first step; each part reads its own section.

  `info` (optional) replaces the dataset's own `DatasetInfo` (the benchmark's synthetic
  stand-in); `for_training=False` skips the check that the training split holds one global
  batch. The frozen partition is put on the devices once, in the compute dtype (bf16 halves it;
  the step never casts it); the trainable one stays float32 (the optimiser's master copies).
  """

  def __init__(self, config, *, info: data_lib.DatasetInfo | None = None,
               for_training: bool = True):
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
    self.pretraining = config.model.method == models.PRETRAIN
    self.model = models.build_model(config.model, self.num_classes, self.image_size)
    key = jax.random.key(int(config.train.seed))
    trainable, frozen = self._pretraining(key) if self.pretraining else self._ltdpt(key)
    self.frozen = jax.device_put(frozen, self.replicated)
    self.state = jax.device_put(step_lib.init_train_state(trainable, self.tx), self.replicated)
    # The schedule as one jitted program: run op by op, each train record would dispatch (the
    # first one compile) a dozen small programs.
    o = config.optim
    self._schedule = jax.jit(
        optim.pretrain_learning_rate(o, self.total_steps, self.steps_per_epoch)
        if self.pretraining else
        optim.learning_rate(o, self.total_steps, int(config.data.batch_size)))

  def _ltdpt(self, key) -> tuple[Any, Any]:
    """LT-DPT and the linear probe: the backbone from its checkpoint (or a seeded random init),
    frozen; prompts and head trained with SGD + GNM on GCL (+ DRW) and the orthogonality loss."""
    config = self.config
    self.drw_start_step = self.steps_per_epoch * (config.train.epochs - config.train.drw_epochs)
    backbone = vit_checkpoint.load_backbone(config.model, self.image_size)
    self.backbone_sha256 = backbone.sha256  # None for a random init
    params = ltdpt.init_params(self.model, key, self.image_size, backbone=backbone.params)
    trainable, frozen = optim.split_params(
        params, optim.param_labels(params, tuple(config.optim.frozen_patterns)))
    self.tx = optim.make_optimizer(config.optim, total_steps=self.total_steps,
                                   global_batch=int(config.data.batch_size),
                                   seed=int(config.train.seed))
    self.train_step = step_lib.make_train_step(
        self.model, self.tx, loss_config=config.loss, seed=int(config.train.seed),
        class_counts=self.info.class_counts, drw_start_step=self.drw_start_step, mesh=self.mesh,
        image_size=self.image_size)
    self.predict_fn = step_lib.make_predict_fn(self.model)
    return trainable, ltdpt.cast_frozen(frozen, self.model)

  def _pretraining(self, key) -> tuple[Any, Any]:
    """Pretraining a backbone: every weight of the ViT and its head trained from a seeded random
    init, with AdamW on label-smoothed cross-entropy; nothing frozen, no DRW."""
    config = self.config
    self.drw_start_step, self.backbone_sha256 = self.total_steps, None
    images = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
    params = jax.jit(lambda k: self.model.init(k, images)['params'])(key)
    self.tx = optim.make_pretrain_optimizer(config.optim, total_steps=self.total_steps,
                                            steps_per_epoch=self.steps_per_epoch)
    self.train_step = step_lib.make_pretrain_step(
        self.model, self.tx, label_smoothing=float(config.loss.label_smoothing),
        num_classes=self.num_classes, mesh=self.mesh, image_size=self.image_size)
    self.predict_fn = step_lib.make_pretrain_predict_fn(self.model)
    return params, {}

  def evaluators(self, workdir: str | None) -> list[evaluators_lib.Scheduled]:
    """The evaluators of `config.evals`, writing their records into `workdir`."""
    return evaluators_lib.from_config(
        self.config, predict_fn=self.predict_fn, frozen=self.frozen, mesh=self.mesh,
        info=self.info, steps_per_epoch=self.steps_per_epoch, workdir=workdir, model=self.model)

  def abstract_state(self):
    return ckpt_lib.replicated_abstract(self.state, self.replicated)

  def learning_rate(self, step: int) -> float:
    """The optimiser's learning rate at `step` (what the train records log)."""
    return float(self._schedule(step))

  def meta(self, epoch: int, **extra) -> dict[str, Any]:
    """What each checkpoint stores beside the state."""
    return {'config': self.config.to_dict(), 'epoch': epoch,
            'steps_per_epoch': self.steps_per_epoch, 'total_steps': self.total_steps,
            'num_classes': self.num_classes,
            'class_counts': np.asarray(self.info.class_counts).tolist(),
            'dataset': self.info.name, 'backbone_sha256': self.backbone_sha256,
            'class_names': list(self.info.class_names), 'image_size': self.image_size, **extra}


def _setup(config, **kwargs) -> Setup:
  """`Setup(config)`, bad inputs (config values, missing files, checkpoint contents) raised as
  one-line SetupErrors."""
  try:
    return Setup(config, **kwargs)
  except (ValueError, FileNotFoundError, KeyError, fetch.FetchError) as e:
    if isinstance(e, SetupError):
      raise
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    raise SetupError(msg if isinstance(e, ValueError) else f'{type(e).__name__}: {msg}') from e


def _format(x: float | None) -> str:
  return 'n/a' if x is None else f'{x:.3g}'


def _log_start(setup: Setup, compiled) -> dict[str, Any]:
  """Logs the config, devices, parameters and FLOPs; returns what `run_info.json` records."""
  config, model = setup.config, setup.model
  logging.info('Config:\n%s', config)
  logging.info('JAX %s: %d process(es), %d device(s) [%s], %d local.', jax.__version__,
               jax.process_count(), jax.device_count(), jax.devices()[0].device_kind,
               jax.local_device_count())
  if setup.pretraining:
    count = vit.count_params(setup.state.params)
    report = {'trainable': count, 'frozen': 0}
    logging.info('Pretraining %s with a %d-class head: %s parameters, all trained.',
                 model.arch.describe(), setup.num_classes, f'{count:,}')
  else:
    report = ltdpt.parameter_report(model, setup.image_size,
                                    frozen_patterns=tuple(config.optim.frozen_patterns))
    logging.info('Parameters: %s', ', '.join(f'{k}={v:,}' for k, v in report.items()))
  flops = step_lib.compiled_flops(compiled)  # of the per-device program; None if not reported
  per_image = flops / (config.data.batch_size / jax.device_count()) if flops else None
  logging.info('Dataset %s: %d train images, %d classes, %d eval images; %d steps/epoch, %d '
               'steps, DRW from step %d. Train step: %s FLOPs (%s per image).',
               setup.info.name, setup.info.num_train, setup.num_classes, setup.info.num_eval,
               setup.steps_per_epoch, setup.total_steps, setup.drw_start_step, _format(flops),
               _format(per_image))
  return {'parameters': report, 'step_flops': flops, 'architecture': model.arch.describe(),
          'backbone_checkpoint': config.model.get('checkpoint'),
          'backbone_sha256': setup.backbone_sha256, 'dataset': setup.info.name,
          'class_names': list(setup.info.class_names),
          'class_counts': np.asarray(setup.info.class_counts).tolist(),
          'devices': jax.device_count(), 'processes': jax.process_count(),
          'device_kind': jax.devices()[0].device_kind,
          'peak_learning_rate': setup.learning_rate(0) if setup.pretraining else
                                optim.peak_learning_rate(config.optim, config.data.batch_size),
          'split_files': data_lib.split_file_digests(config.data)}


# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------

def train_and_evaluate(config, workdir: str, *, allow_config_change: bool = False
                       ) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds a checkpoint) and evaluates; returns {'last',
  'best', 'workdir'} (the last and the best evaluation by `config.train.best_metric`; a finished
  run's stored ones), or {'stopped_at': step} when SIGTERM or SIGINT stopped the run after a
  checkpoint. Raises SetupError for bad inputs (before any step) and FloatingPointError if
  training diverges. The workdir's lifecycle (lock, signals, resume past damaged checkpoints,
  config drift, results) is `run_dir.RunDir`'s."""
  with run_dir_lib.RunDir(workdir, config, allow_config_change=allow_config_change) as run:
    # Set up: the parts the config describes, and the evaluators.
    setup = _setup(config)
    if setup.info.bad_images and jax.process_index() == 0:  # data.on_bad_image='skip'
      run.path('bad_images.txt').write_text(
          ''.join(f'{path}\t{problem}\n' for path, problem in setup.info.bad_images))
    evaluators = setup.evaluators(workdir)
    record_path = next(ev.evaluator for ev in evaluators if ev.name == run.best.name).record_path
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                                         best_metric=run.best.key)
    writer = train_iter = None
    try:
      results = run.finished_results(checkpointer, setup.total_steps, record_path,
                                     setup.abstract_state())
      if results is not None:
        return results
      # Resume: the newest checkpoint that restores, with the data iterator's position.
      train_iter = data_lib.make_train_iterator(config.data, seed=config.train.seed)
      state = run.resume(checkpointer, _restorer(setup, checkpointer, train_iter),
                         backbone_sha256=setup.backbone_sha256) or setup.state
      start = int(jax.device_get(state.step))
      # Records of steps after the resumed one (a run killed before its checkpoint) are dropped.
      writer = metrics_lib.MetricWriter(workdir, resume_step=start)
      if run.preemption.requested:
        logging.warning('SIGTERM received before the first step: stopping at step %d.', start)
        return {'stopped_at': start}
      # Loop.
      stopped_at = _loop(setup, state, train_iter, evaluators, run, checkpointer, writer)
      if stopped_at is not None:
        return {'stopped_at': stopped_at}
    finally:
      checkpointer.close()
      for closing in (writer, train_iter):
        if closing is not None:
          closing.close()
    # Finish.
    return run.finish(record_path)


def _restorer(setup: Setup, checkpointer, train_iter):
  """restore(step) -> (state, meta): the checkpoint's train state, the data iterator moved to
  where it stood."""

  def restore(step: int):
    saved = ckpt_lib.IteratorState()
    state, meta = checkpointer.restore(step, setup.abstract_state(), data_iter=saved)
    try:
      train_iter.set_state(saved.state)
    except ValueError as e:
      raise SetupError(f'Cannot resume from the checkpoint of step {step} in '
                       f'{checkpointer.directory}: {e}') from e
    return state, meta

  return restore


def _loop(setup: Setup, state, train_iter, evaluators, run, checkpointer, writer) -> int | None:
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
  start_info = _log_start(setup, compiled)
  if first_step == 0:
    metrics_lib.write_json(run.path('run_info.json'), start_info)

  progress = metrics_lib.Progress(total, config.data.batch_size, first_step)
  pending = []   # device metrics of steps not yet written

  def save(step, state, iter_state, metrics=None):
    run.check_intact()
    step_lib.check_finite(state, step, checkpointer.latest_step())
    # Every step up to a checkpoint is recorded on disk with it (metrics.jsonl and TensorBoard),
    # so a run killed after it loses none: the state's copy to the host waits for the step anyway.
    if pending:
      _write_train_metrics(writer, pending, progress, setup, step, checkpointer)
      pending.clear()
    checkpointer.save(step, state, data_iter=ckpt_lib.IteratorState(iter_state),
                      meta=setup.meta(step // spe, best=run.best.best), metrics=metrics)
    writer.flush()

  for batch, iter_state in itertools.chain([first_batch], batches):
    state, step_metrics = compiled(state, setup.frozen, batch)
    step += 1
    epoch_end = itstime(step, spe, total)
    if itstime(step, tc.log_every_steps, total) or epoch_end:
      ready, pending = pending, [step_metrics]  # earlier steps' metrics, while this one runs
      if ready:
        _write_train_metrics(writer, ready, progress, setup, step - 1, checkpointer)
    else:
      pending.append(step_metrics)

    due = [ev for ev in evaluators if itstime(step, ev.every_steps, total)]
    best_value = None
    if due:
      step_lib.check_finite(state, step, checkpointer.latest_step())
      t0 = time.perf_counter()
      for ev in due:
        record = ev.evaluator.run(state.params, step=step, epoch=step // spe)
        writer.write(step, ev.name, evaluators_lib.scalars(record))
        value = run.best.update(ev.name, record, step, step // spe)
        best_value = value if value is not None else best_value
      if tc.get('plots', True) and jax.process_index() == 0:
        writer.flush()  # the learning curves read metrics.jsonl
        plot_lib.plot_run_or_warn(run.workdir)
      progress.paused += time.perf_counter() - t0

    saved = epoch_end or itstime(step, tc.checkpoint_every_steps, total)
    if saved:
      save(step, state, iter_state,
           metrics=None if best_value is None else {run.best.key: best_value})
    if step == total:
      break
    if run.preemption.should_stop(step):
      if not saved:
        save(step, state, iter_state)
      if pending:
        _write_train_metrics(writer, pending, progress, setup, step, checkpointer)
      checkpointer.wait()
      logging.warning('Stopped at step %d after a checkpoint; rerun the same command to '
                      'resume.', step)
      return step
  if pending:
    _write_train_metrics(writer, pending, progress, setup, step, checkpointer)
  return None


def _write_train_metrics(writer, ready, progress, setup, step, checkpointer):
  """Averages fetched step metrics, checks for NaN, prints and writes one train record."""
  fetched = jax.device_get(ready)
  scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
  if not all(math.isfinite(v) for v in scalars.values()):
    bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
    kept = step_lib.kept_checkpoint(checkpointer.latest_step())
    raise FloatingPointError(
        f'Non-finite training metrics {bad} around step {step}. The run stopped without '
        f'writing a checkpoint of this state; {kept}. Lower --config.optim.lr or check the data '
        'and rerun.')
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
  """Runs every evaluator of `config.evals` on the checkpoint of `step` (default latest); returns
  the `config.train.best_metric` evaluator's record. Each record (e.g. `eval_<step>.json`) equals
  the training run's of that step, whatever the device or process count. Raises SetupError
  when `workdir` holds no such checkpoint (before anything is built), when it is damaged (naming
  the steps that can be evaluated), and when the config's model or evaluation data, or the
  backbone file, differ from the run's (`run_dir.accept_config`)."""
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
    setup = _setup(config, for_training=False)
    try:
      meta = checkpointer.read_meta(step)
      run_dir_lib.warn_changes(run_dir_lib.accept_config(
          meta, config.to_dict(), setup.backbone_sha256,
          directory=f'{workdir}/checkpoints/{step}', workdir=workdir,
          allow_config_change=allow_config_change, only=run_dir_lib.EVAL_RELEVANT), step)
      state, meta = checkpointer.restore(step, setup.abstract_state())
    except ckpt_lib.CheckpointDamaged as e:
      others = [s for s in checkpointer.readable_steps(setup.abstract_state()) if s != step]
      raise SetupError(f'{e} -- it cannot be evaluated; steps that can: {others} '
                       '(--checkpoint_step=N).') from e
    except ckpt_lib.CheckpointMismatch as e:
      raise SetupError(f'{e} Evaluate with the config that wrote it (see '
                       f'{workdir}/config.json).') from e
  finally:
    checkpointer.close()
  records = {ev.name: ev.evaluator.run(state.params, step=step, epoch=int(meta.get('epoch', -1)))
             for ev in setup.evaluators(workdir)}
  logging.info('Evaluated the checkpoint of step %d in %s with %s.', step, workdir,
               ', '.join(records))
  return records[run_dir_lib.best_metric(config)[0]]
