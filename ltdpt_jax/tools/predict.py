r"""Predictions from a trained run for new images: a command and a Python API (`Predictor`).

  python -m ltdpt_jax.tools.predict --workdir=runs/demo --images=photos/ --out=predictions.csv
  python -m ltdpt_jax.tools.predict --workdir=RUN --checkpoint_step=N --images=a.jpg list.txt

  predictor = Predictor.from_workdir('runs/demo')     # latest checkpoint
  out = predictor.predict(images_uint8)               # (N, H, W, 3) or a list of HWC arrays
  rows = predictor.predict_files(['a.jpg', 'b.png'])
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging

from ltdpt_jax import checkpoint as ckpt_lib
from ltdpt_jax import cli
from ltdpt_jax import data as data_lib
from ltdpt_jax import evaluators as evaluators_lib
from ltdpt_jax import metrics as metrics_lib
from ltdpt_jax import run_dir
from ltdpt_jax import sharding
from ltdpt_jax import train
from ltdpt_jax.data import files
from ltdpt_jax.data import transforms
from ltdpt_jax.evaluators import longtail

LIST_EXTENSIONS = ('.txt', '.csv', '.lst')
_PROGRESS_EVERY_S = 10.0


class PredictError(ValueError):
  """A workdir, checkpoint or input that cannot be used: one line naming it and the fix."""


class Predictor:
  """A trained run, ready to classify images.

  Every image goes through the evaluation transform (resize to int(S * 256 / 224), centre crop
  S) and the jitted forward with saliency, in batches of `config.data.eval_batch_size` (rounded
  up to the device count; the last batch padded); the probabilities are softmax(s * cosine
  logits) with s = `config.loss.s`.
  """

  def __init__(self, setup: train.Setup, params: Any, meta: dict[str, Any], step: int):
    self.setup, self.params, self.meta, self.step = setup, params, meta, step
    self.class_names = tuple(setup.info.class_names)
    self.image_size = setup.image_size
    self.images_per_s = None  # of the last `predict_files`
    n_dev = jax.device_count()
    self.batch_size = -(-int(setup.config.data.eval_batch_size) // n_dev) * n_dev
    scale = float(setup.config.loss.s)
    rep = sharding.replicated(setup.mesh)

    def probabilities(trainable, frozen, images):
      logits = setup.predict_fn(trainable, frozen, images)['logits']
      return jax.nn.softmax(scale * logits.astype(jnp.float32), axis=-1)

    self._probabilities = jax.jit(probabilities,
                                  in_shardings=(rep, rep, setup.batch_sharding),
                                  out_shardings=rep)

  def _run(self, images: np.ndarray) -> np.ndarray:
    """Probabilities of one full batch of (S, S) crops."""
    batch = sharding.to_global({'image': images}, self.setup.batch_sharding)['image']
    return np.asarray(jax.device_get(self._probabilities(self.params, self.setup.frozen, batch)))

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None) -> 'Predictor':
    """The run in `workdir` at checkpoint `step` (default: the latest): `from_record` of
    `read_run`."""
    return cls.from_record(read_run(workdir, step))

  @classmethod
  def from_record(cls, record: 'RunRecord') -> 'Predictor':
    """The run `record` describes, built and restored; PredictError when its backbone file is
    not the one it trained on or its checkpoint does not restore.

    The run is rebuilt from its own records, not from its training data: the config that ran
    (`<workdir>/config.json`), the class names, counts and image size of the checkpoint's
    metadata, the trained prompts and head from the checkpoint, and the frozen backbone from
    `config.model.checkpoint` (its SHA-256 must be the one the run recorded).
    """
    config, meta, workdir = record.config, record.meta, record.workdir
    setup = train.Setup(config, info=record.info, for_training=False)
    stored = meta.get('backbone_sha256')
    if 'backbone_sha256' in meta and stored != setup.backbone_sha256:
      raise PredictError(
          f'The backbone is not the one the run trained on: {config.model.checkpoint} has '
          f'SHA-256 {setup.backbone_sha256}, the run recorded {stored}. Point '
          f'config.model.checkpoint in {workdir}/config.json at the original file.')
    checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
    try:
      state, meta = checkpointer.restore(record.step, setup.abstract_state())
    except (ckpt_lib.CheckpointDamaged, ckpt_lib.CheckpointMismatch) as e:
      raise PredictError(str(e)) from e
    finally:
      checkpointer.close()
    logging.info('Predicting with the checkpoint of step %d in %s (%d classes, %d px).',
                 record.step, workdir, setup.num_classes, setup.image_size)
    return cls(setup, state.params, meta, record.step)

  def predict(self, images, *, preprocess: bool = True) -> dict[str, np.ndarray]:
    """Class probabilities of images: an (N, H, W, 3) uint8 array or a list of HWC uint8 arrays
    of any sizes. With `preprocess` (default) each goes through the evaluation transform first,
    as files do; without, they must already be (S, S) crops. Returns {'probabilities' (N, C),
    'prediction' (N,) class indices}."""
    if preprocess:
      images = [transforms.eval_transform(np.asarray(im), self.image_size) for im in images]
    images = np.asarray(images, np.uint8)
    s = self.image_size
    if images.ndim != 4 or images.shape[1:] != (s, s, 3):
      raise PredictError(f'images must be (N, {s}, {s}, 3) uint8 after preprocessing; got '
                         f'{images.shape}.')
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      padded = np.zeros((self.batch_size, s, s, 3), np.uint8)
      padded[:len(chunk)] = chunk
      out.append(self._run(padded)[:len(chunk)])
    probs = np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)
    return {'probabilities': probs, 'prediction': probs.argmax(-1) if len(probs) else
            np.zeros((0,), np.int64)}

  def predict_files(self, paths: Sequence[str], *, labels: Sequence[int] | None = None,
                    top_k: int = 5, checked: bool = False) -> list[dict[str, Any]]:
    """One record per file: path, label name ('' unknown), prediction, probability, top-k
    [(name, probability)]. Files that are not readable images raise PredictError first
    (`check_files`; `checked`: the caller did that). The files are decoded and transformed by
    the run's input workers (`config.data.num_workers`, as its evaluation), batches ahead of
    the model; progress (images/s, ETA) is logged, and `images_per_s` keeps the rate."""
    if not checked:
      check_files(paths)
    k = max(1, min(int(top_k), len(self.class_names)))
    source = files.ImageFiles(paths, np.zeros(len(paths), np.int64) if labels is None else
                              np.asarray(labels, np.int64))
    workers = data_lib.num_workers(int(self.setup.config.data.get('num_workers', -1)))
    batches = data_lib.eval_batches(source, image_size=self.image_size,
                                    batch_size=self.batch_size, workers=workers,
                                    process_index=0, process_count=1)
    rows, t0 = [], time.perf_counter()
    last = t0
    for batch in batches:
      probs = self._run(batch['image'])
      for p, i in zip(probs[batch['mask']], batch['id'][batch['mask']]):
        order = np.argsort(-p, kind='stable')[:k]
        label = None if labels is None else int(labels[i])
        rows.append({'path': paths[i], 'label': label,
                     'label_name': '' if label is None else self.class_names[label],
                     'prediction': int(order[0]), 'prediction_name': self.class_names[order[0]],
                     'probability': float(p[order[0]]),
                     'top_k': [(self.class_names[c], float(p[c])) for c in order]})
      now = time.perf_counter()
      if now - last >= _PROGRESS_EVERY_S:
        rate = len(rows) / (now - t0)
        logging.info('Predicted %d/%d images, %.0f images/s, ETA %.0f s.', len(rows), len(paths),
                     rate, (len(paths) - len(rows)) / rate)
        last = now
    self.images_per_s = len(rows) / max(time.perf_counter() - t0, 1e-9)
    logging.info('Predicted %d images in %.1f s: %.0f images/s (%s).', len(rows),
                 time.perf_counter() - t0, self.images_per_s,
                 f'{workers} input worker processes' if workers else 'input threads')
    return rows

  def summary(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The `--mode=eval` record of labelled rows (top-1, head/medium/tail, per class)."""
    n = len(self.class_names)
    labels = np.asarray([r['label'] for r in rows], np.int64)
    hits = np.asarray([r['prediction'] == r['label'] for r in rows], np.int64)
    correct = np.bincount(labels, weights=hits, minlength=n)
    count = np.bincount(labels, minlength=n)
    confusion = None
    if n <= longtail.MAX_CONFUSION_CLASSES:
      predicted = np.asarray([r['prediction'] for r in rows], np.int64)
      confusion = np.zeros((n, n), np.int64)
      np.add.at(confusion, (labels, predicted), 1)
    thresholds = tuple(self.setup.config.data.get('shot_thresholds',
                                                  (longtail.TAIL_MAX, longtail.HEAD_MIN)))
    return {'step': self.step, 'epoch': int(self.meta.get('epoch', -1)),
            **evaluators_lib.summarize_eval(correct, count, self.setup.info.class_counts,
                                            class_names=self.class_names, thresholds=thresholds,
                                            confusion=confusion)}


def _info_of(meta: dict[str, Any], config) -> data_lib.DatasetInfo:
  """The dataset facts a checkpoint keeps (no training data needed to predict)."""
  counts = np.asarray(meta['class_counts'], np.int64)
  names = tuple(meta.get('class_names') or (str(c) for c in range(len(counts))))
  return data_lib.DatasetInfo(name=meta.get('dataset', ''), num_classes=len(counts),
                              class_counts=counts, num_train=int(counts.sum()), num_eval=0,
                              image_size=int(meta.get('image_size', config.data.image_size)),
                              class_names=names)


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """What a workdir says about its run, read without building the model or restoring arrays:
  the config that ran, the checkpoint step and that checkpoint's metadata (`read_run`)."""
  workdir: str
  config: ml_collections.ConfigDict
  step: int
  meta: dict[str, Any]

  @property
  def info(self) -> data_lib.DatasetInfo:
    return _info_of(self.meta, self.config)

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(self.info.class_names)

  @property
  def image_size(self) -> int:
    return int(self.config.data.image_size)  # what `train.Setup` builds the model for


def read_run(workdir: str, step: int | None = None) -> RunRecord:
  """The run in `workdir` at checkpoint `step` (default: the latest): its config.json and the
  checkpoint's metadata (JSON), in a second or so; PredictError when the workdir holds no run
  or no such checkpoint, or the metadata does not read."""
  config_dict = metrics_lib.read_json(os.path.join(workdir, 'config.json'))
  if config_dict is None:
    raise PredictError(f'{workdir} holds no run ({os.path.join(workdir, "config.json")} is '
                       'missing): pass the --workdir of a trained run.')
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    available = checkpointer.all_steps()
    if not available:
      raise PredictError(f'No checkpoint in {checkpointer.directory}: train first '
                         '(python -m ltdpt_jax.main --mode=train with this --workdir).')
    if step is not None and step not in available:
      raise PredictError(f'No checkpoint of step {step} in {checkpointer.directory}; '
                         f'available steps: {sorted(available)} (--checkpoint_step).')
    step = max(available) if step is None else step
    meta = checkpointer.read_meta(step)
  except ckpt_lib.CheckpointDamaged as e:
    raise PredictError(str(e)) from e
  finally:
    checkpointer.close()
  return RunRecord(workdir, ml_collections.ConfigDict(config_dict), step, meta)


def check_files(paths: Sequence[str]) -> None:
  """PredictError listing the files that are not readable images (`files.check_images`)."""
  bad = files.check_images(list(paths), cache=False)
  if bad:
    listed = '; '.join(f'{p}: {r}' for p, r in list(bad.items())[:5])
    raise PredictError(f'{len(bad)} file(s) are not readable images: {listed}'
                       f'{" ..." if len(bad) > 5 else ""}. Remove or replace them.')


def resolve_inputs(paths: Sequence[str], class_names: Sequence[str]
                   ) -> tuple[list[str], list[int] | None]:
  """(image paths, labels or None) of PATHs: images, directories (recursive; labelled when
  their sub-folders are classes of the run) and list files (labelled: `<path> <label>` lines or
  a `path,label` CSV, paths relative to the list's folder). PredictError for a PATH that is none
  of these, a symbolic link loop in a directory, or no image at all."""
  out, labels, labelled, loops = [], [], True, {}
  for path in paths:
    path = os.path.expanduser(path)
    if os.path.isdir(path):
      found, found_labels = _scan_directory(path, class_names, loops)
      out += found
      labels += found_labels or []
      labelled = labelled and found_labels is not None
    elif os.path.isfile(path) and os.path.splitext(path)[1].lower() in LIST_EXTENSIONS:
      scan = files.read_list(path, class_names=class_names, key='images')
      out += scan.paths
      labels += scan.labels.tolist()
    elif os.path.isfile(path):
      out.append(os.path.abspath(path))
      labelled = False
    else:
      raise PredictError(f'--images: {path} is not an image, a directory or a list file.')
  if loops:
    listed = '; '.join(f'{p}: {r}' for p, r in list(loops.items())[:5])
    raise PredictError(f'--images: {len(loops)} symbolic link loop(s): {listed}. Remove them.')
  if not out:
    raise PredictError(f'--images: no image files in {list(paths)} (extensions '
                       f'{", ".join(files.IMAGE_EXTENSIONS)}).')
  return out, labels if labelled else None


def _scan_directory(path: str, class_names: Sequence[str], loops: dict[str, str]
                    ) -> tuple[list[str], list[int] | None]:
  """(image paths, labels) of a directory: labelled (`files.scan_folder`) when its sub-folders
  are classes of the run and it holds no loose image, else unlabelled (labels None); `loops`
  gets its links that loop."""
  with os.scandir(path) as it:
    entries = list(it)
  subdirs = [e.name for e in entries if files.is_folder(e) and not e.name.startswith('.')]
  loose = [e.name for e in entries if files.is_image_name(e.name) and not files.is_folder(e)]
  if subdirs and not loose and set(subdirs) <= set(class_names):
    scan = files.scan_folder(path, class_names=class_names, key='images',
                             allow_empty_classes=True)
    loops.update(scan.problems)
    return list(scan.paths), scan.labels.tolist()
  return files.walk_images(os.path.abspath(path), problems=loops), None


def write_csv(rows: Sequence[dict[str, Any]], path: str, top_k: int) -> None:
  """One row per image: path, label (empty when unknown), prediction, probability, then top1,
  top1_probability, ..., top<k>, top<k>_probability."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  k = len(rows[0]['top_k']) if rows else top_k
  header = ['path', 'label', 'prediction', 'probability']
  for i in range(1, k + 1):
    header += [f'top{i}', f'top{i}_probability']
  tmp = f'{path}.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for r in rows:
      line = [r['path'], r['label_name'], r['prediction_name'], f"{r['probability']:.6f}"]
      for name, p in r['top_k']:
        line += [name, f'{p:.6f}']
      writer.writerow(line)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------

def define_flags() -> None:
  """The command's flags (defined when it runs, so that modules importing this one, such as
  `visualize`, can define their own)."""
  flags.DEFINE_string('workdir', None, 'The trained run (its --workdir).')
  flags.DEFINE_integer('checkpoint_step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_multi_string('images', None, 'An image, a directory (recursive) or a list '
                            'file; more PATHs may follow as arguments.')
  flags.DEFINE_string('out', 'predictions.csv', 'The CSV to write.')
  flags.DEFINE_integer('top_k', 5, 'How many classes each row lists.')


def start(argv: Sequence[str]) -> None:
  """`cli.start` for the commands whose arguments are PATHs (this one and `visualize`): the
  library logs (Orbax, grain) stay quiet unless --verbosity=1 or more asks for them."""
  cli.start(argv[:1])
  if flags.FLAGS.verbosity >= 1:
    handler = logging.get_absl_handler()
    for quiet in [f for f in handler.filters if isinstance(f, cli.QuietLibraries)]:
      handler.removeFilter(quiet)


def predict_paths(workdir: str, paths: Sequence[str], *, step: int | None = None,
                  top_k: int = 5) -> tuple[Predictor, list[dict[str, Any]], list[int] | None]:
  """(predictor, `predict_files` rows, labels or None) of PATHs (`resolve_inputs`) with the run
  in `workdir`. The run's records and every input are checked before the model is built or the
  checkpoint restored, so a bad one fails in a second."""
  record = read_run(workdir, step)
  images, labels = resolve_inputs(paths, record.class_names)
  check_files(images)
  predictor = Predictor.from_record(record)
  rows = predictor.predict_files(images, labels=labels, top_k=top_k, checked=True)
  return predictor, rows, labels


def main(argv: Sequence[str]) -> None:
  """Writes the CSV and, when every image is labelled, the `--mode=eval` summary (top-1,
  head/medium/tail, per class) next to it as `<out stem>_summary.json`."""
  start(argv)
  f = flags.FLAGS
  paths = list(f.images or []) + list(argv[1:])
  try:
    if not f.workdir or not paths:
      raise PredictError('pass --workdir=RUN and --images=PATH [PATH ...].')
    predictor, rows, labels = predict_paths(f.workdir, paths, step=f.checkpoint_step,
                                            top_k=f.top_k)
  except (PredictError, files.DataError, run_dir.SetupError, ValueError, FileNotFoundError) as e:
    cli.fail(str(e), cli.EXIT_BAD_INPUT)
  write_csv(rows, f.out, f.top_k)
  logging.info('Wrote %d predictions to %s.', len(rows), f.out)
  if labels is not None:
    summary = predictor.summary(rows)
    stem = os.path.splitext(f.out)[0]
    metrics_lib.write_json(f'{stem}_summary.json', summary)
    logging.info('Labelled images: top-1 %.2f%% over %d images; summary in %s_summary.json.',
                 100 * summary['accuracy'], summary['num_examples'], stem)


def run() -> None:
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
