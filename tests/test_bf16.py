"""bf16 end to end (`config.model.dtype='bfloat16'`): a run stopped and resumed equals the straight
one, the evaluation of its checkpoint equals the training run's, and its predictions and maps come
from the bf16 model (against the float32 model with the same parameters)."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

import cli_worker
import train_utils
from ltdpt_jax import data as data_lib
from ltdpt_jax import maps
from ltdpt_jax import optim
from ltdpt_jax import run_dir
from ltdpt_jax import train
from ltdpt_jax.data import transforms
from ltdpt_jax.tools import predict as predict_lib

STEPS = 14  # train_utils.run_config(): 2 epochs of 7 steps, evaluations at 7 and 14


def _config():
  config = train_utils.run_config()
  config.model.dtype = 'bfloat16'
  return config


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('bf16') / 'straight'
  results = train.train_and_evaluate(_config(), str(workdir))
  return workdir, results


def _eval_images(config):
  src = data_lib.get_sources(config.data).eval
  images = np.stack([transforms.eval_transform(src[i]['image'], config.data.image_size)
                     for i in range(len(src))])
  return images, np.array([int(src[i]['label']) for i in range(len(src))])


def test_bf16_run_stopped_and_resumed_equals_the_straight_run(straight, tmp_path, monkeypatch):
  workdir, results = straight
  resumed = tmp_path / 'resumed'
  with monkeypatch.context() as m:
    m.setattr(run_dir.Preemption, 'should_stop', lambda self, step: step == 5)
    assert train.train_and_evaluate(_config(), str(resumed)) == {'stopped_at': 5}
  assert train.train_and_evaluate(_config(), str(resumed))['last'] == results['last']
  for name in ('eval_7.json', 'eval_14.json'):
    assert (resumed / name).read_bytes() == (workdir / name).read_bytes(), name
  a, _ = cli_worker.restore_state(resumed, STEPS)
  b, _ = cli_worker.restore_state(workdir, STEPS)
  for x, y in zip(jax.tree.leaves(a['params']), jax.tree.leaves(b['params'])):
    np.testing.assert_array_equal(x, y)
    assert x.dtype == np.float32  # the trainable master copies stay float32


def test_bf16_evaluation_of_a_checkpoint_equals_the_training_runs(straight, tmp_path):
  workdir, _ = straight
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  (copy / 'eval_7.json').unlink()
  record = train.evaluate_checkpoint(_config(), str(copy), step=7)
  assert (copy / 'eval_7.json').read_bytes() == (workdir / 'eval_7.json').read_bytes()
  assert record == json.loads((workdir / 'eval_7.json').read_text())


def test_bf16_predictions_agree_with_its_evaluation_and_differ_from_float32(straight):
  """The Predictor rebuilds the bf16 model from the workdir: its accuracy on the eval split is
  the evaluation's; the same parameters in a float32 model give close, not equal,
  probabilities (so the bf16 path really ran)."""
  workdir, results = straight
  predictor = predict_lib.Predictor.from_workdir(str(workdir))
  assert predictor.setup.model.dtype == jax.numpy.bfloat16
  images, labels = _eval_images(_config())
  out = predictor.predict(images, preprocess=False)
  assert np.mean(out['prediction'] == labels) == pytest.approx(results['last']['accuracy'])
  f32 = _config()
  f32.model.dtype = 'float32'
  setup32 = train.Setup(f32, info=predictor.setup.info, for_training=False)
  probs32 = np.asarray(jax.jit(setup32.predict_fn)(
      predictor.params, setup32.frozen, images)['logits'])
  probs16 = np.asarray(jax.jit(predictor.setup.predict_fn)(
      predictor.params, predictor.setup.frozen, images)['logits'])
  assert not np.array_equal(probs16, probs32)
  np.testing.assert_allclose(probs16, probs32, atol=0.05)  # cosine logits in [-1, 1]


def test_bf16_maps_are_those_of_the_float32_model_to_bf16_precision(straight):
  """Saliency, Grad-CAM and the prompts' attention of the bf16 run (the maps' program runs the
  model's own dtype): finite, and close to the float32 model's with the same parameters."""
  workdir, _ = straight
  predictor = predict_lib.Predictor.from_workdir(str(workdir))
  images, labels = _eval_images(_config())
  images, labels = images[:6], labels[:6]
  params = optim.merge_params(predictor.params, predictor.setup.frozen)
  size = _config().data.image_size
  scale = float(_config().loss.s)
  got = maps.compute(predictor.setup.model, params, images, labels, image_size=size, scale=scale)
  f32_model = predictor.setup.model.clone(dtype=jax.numpy.float32)
  params32 = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  want = maps.compute(f32_model, params32, images, labels, image_size=size, scale=scale)
  assert set(got) == set(want)
  assert not all(np.array_equal(got[n], want[n]) for n in got)  # the bf16 model really ran
  for name in got:
    assert np.isfinite(got[name]).all(), name
    np.testing.assert_allclose(got[name], want[name], atol=0.05, err_msg=name)
