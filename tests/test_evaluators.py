"""Evaluators: the long-tailed classification evaluator against numpy, and the config registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_utils
from ltdpt_jax import data as data_lib
from ltdpt_jax import evaluators
from ltdpt_jax import models
from ltdpt_jax import optim
from ltdpt_jax import sharding
from ltdpt_jax import train
from ltdpt_jax import train_step as step_lib
from ltdpt_jax.evaluators import longtail
from ltdpt_jax.models import ltdpt


def _info(counts):
  counts = np.asarray(counts, np.int64)
  return data_lib.DatasetInfo(name='test', num_classes=len(counts), class_counts=counts,
                              num_train=int(counts.sum()), num_eval=10, image_size=16)


def test_eval_step_counts_per_class_with_mask():
  """Per-class (correct, count) of one batch with padding rows, against numpy on the logits."""
  config = train_utils.tiny_config()
  mesh = sharding.make_mesh()
  model = models.build_model(config.model, 6, 16)
  params = ltdpt.init_params(model, jax.random.key(0), 16)
  tr, fr = optim.split_params(params, optim.param_labels(params))
  ev = longtail.Evaluator(step_lib.make_predict_fn(model), name='eval', frozen=fr, mesh=mesh,
                          data=config.data, info=_info([50, 40, 30, 20, 10, 5]))
  rs = np.random.RandomState(3)
  batch = {'image': rs.randint(0, 256, (16, 16, 16, 3)).astype(np.uint8),
           'label': rs.randint(0, 6, (16,)).astype(np.int32), 'mask': np.arange(16) < 11}
  correct, count, confusion = ev.eval_step(tr, fr, batch)
  logits = jax.jit(lambda p, images: step_lib.forward(model, p, images, train=False)['logits'],
                   compiler_options=train_utils.QUICK)(params, batch['image'])
  pred = np.asarray(jnp.argmax(logits, -1))
  want_count = np.bincount(batch['label'][:11], minlength=6)
  want_correct = np.bincount(batch['label'][:11], weights=(pred == batch['label'])[:11],
                             minlength=6)
  np.testing.assert_array_equal(np.asarray(count), want_count)
  np.testing.assert_array_equal(np.asarray(correct), want_correct)
  want_confusion = np.zeros((6, 6), np.int64)
  np.add.at(want_confusion, (batch['label'][:11], pred[:11]), 1)
  np.testing.assert_array_equal(np.asarray(confusion), want_confusion)


def test_summarize_eval_by_hand():
  # Training counts: head (> 100): 0, 1; medium (20..100): 2, 3; tail (< 20): 4.
  class_counts = [500, 101, 100, 20, 19]
  correct = np.array([9, 2, 0, 5, 1])
  count = np.array([10, 4, 0, 10, 5])   # class 2 has no eval image
  s = longtail.summarize_eval(correct, count, class_counts)
  assert s['accuracy'] == pytest.approx(17 / 29) and s['num_examples'] == 29
  assert s['head_accuracy'] == pytest.approx(11 / 14) and s['head_classes'] == 2
  assert s['medium_accuracy'] == pytest.approx(5 / 10) and s['medium_classes'] == 2
  assert s['tail_accuracy'] == pytest.approx(1 / 5) and s['tail_classes'] == 1
  assert s['per_class_accuracy'] == [0.9, 0.5, None, 0.5, 0.2]
  assert s['mean_per_class_accuracy'] == pytest.approx((0.9 + 0.5 + 0.5 + 0.2) / 4)
  # A group with no class is n/a (None), never 0.
  s = longtail.summarize_eval(np.array([1, 1]), np.array([2, 2]), [50, 30])
  assert s['head_accuracy'] is None and s['tail_accuracy'] is None
  assert s['head_classes'] == 0 and s['medium_accuracy'] == 0.5


def test_scalars_of_a_record():
  record = {'step': 7, 'epoch': 1, 'accuracy': 0.5, 'head_accuracy': None, 'num_examples': 30,
            'per_class_accuracy': [0.5, None], 'extra': {'a': 1}, 'name': 'x'}
  assert evaluators.scalars(record) == {'accuracy': 0.5, 'head_accuracy': None,
                                        'num_examples': 30}


def test_from_config_builds_each_evaluator_with_its_period():
  config = train_utils.tiny_config()
  config.train.eval_every_epochs = 2
  config.evals.val = {'type': 'longtail', 'every_epochs': 3}
  mesh = sharding.make_mesh()
  got = evaluators.from_config(config, predict_fn=lambda *a: None, frozen={}, mesh=mesh,
                               info=_info([40, 30, 20, 10, 5, 3]), steps_per_epoch=5,
                               workdir='/tmp/w')
  assert [(e.name, e.every_steps) for e in got] == [('eval', 10), ('val', 15)]
  assert all(isinstance(e.evaluator, longtail.Evaluator) for e in got)
  assert got[1].evaluator.record_path(15) == '/tmp/w/val_15.json'
  assert set(evaluators.REGISTRY) == {'longtail', 'attention'}


@pytest.mark.parametrize('step,every,total,last,want', [
    (10, 5, 100, True, True), (11, 5, 100, True, False), (100, 7, 100, True, True),
    (100, 7, 100, False, False), (5, 0, 100, True, False), (100, 0, 100, True, True)])
def test_itstime(step, every, total, last, want):
  assert train.itstime(step, every, total, last=last) is want
