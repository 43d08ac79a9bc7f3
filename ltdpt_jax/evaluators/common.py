"""Evaluators chosen by name from the config, each with its own period (big_vision style).

`from_config` builds the `Scheduled` evaluators of `config.evals` (types in `REGISTRY`); every
evaluator has one method, `run(trainable, *, step, epoch) -> record` (a JSON-able dict;
`scalars(record)` is what goes to the metric writers).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ltdpt_jax.evaluators import attention
from ltdpt_jax.evaluators import longtail

# type name -> evaluator class (the values config.evals.<name>.type accepts): 'longtail'
# (top-1, head / medium / tail, per class) and 'attention' (foreground shares of Grad-CAM and
# prompt attention: where the prompts look during training).
REGISTRY: dict[str, type] = {'longtail': longtail.Evaluator, 'attention': attention.Evaluator}
_SCHEDULE_FIELDS = ('type', 'every_epochs')


class Scheduled(NamedTuple):
  """An evaluator and when the train loop runs it."""
  name: str
  every_steps: int
  evaluator: Any


def every_epochs(eval_config, train_config) -> int:
  """The evaluator's period in epochs (its `every_epochs`, 0 = train.eval_every_epochs)."""
  return int(eval_config.get('every_epochs', 0) or train_config.eval_every_epochs)


def from_config(config, *, predict_fn: Callable[..., Any], frozen: Any, mesh, info,
                steps_per_epoch: int, workdir: str | None, model=None) -> list[Scheduled]:
  """The evaluators of `config.evals`, in config order, with their periods in steps.

  A section's key is the evaluator's name (the prefix of its metrics in `metrics.jsonl` /
  TensorBoard and of the files it writes); its fields are `type` (a key of `REGISTRY`),
  `every_epochs` (0: `config.train.eval_every_epochs`) and whatever else that type takes. The
  base config has one, `eval` (type 'longtail'); `config.train.attention_stats=True` adds an
  'attention' one with its defaults, and `config.data.val_fraction` > 0 a 'val' one (type
  'longtail', split 'val': the held-out training images). Each is built as `Type(predict_fn, name=..., frozen=...,
  mesh=..., data=config.data, info=..., workdir=..., **its other fields)`; types that look inside
  the model (`needs_model`, e.g. 'attention') also get `model` and the loss scale s. The train
  loop runs every evaluator also after the last step, and `--mode=eval` runs them all on a
  checkpoint.
  """
  out = []
  sections = list(config.evals.items())
  if config.train.get('attention_stats', False) and not any(
      s.get('type') == 'attention' for _, s in sections):
    sections.append(('attention', {'type': 'attention', 'every_epochs': 0}))
  if float(config.data.get('val_fraction', 0.0) or 0.0) > 0 and not any(
      s.get('split') == 'val' for _, s in sections):
    sections.append(('val', {'type': 'longtail', 'every_epochs': 0, 'split': 'val'}))
  for name, section in sections:
    kwargs = {k: v for k, v in section.items() if k not in _SCHEDULE_FIELDS}
    cls = REGISTRY[section['type']]
    if getattr(cls, 'needs_model', False):
      kwargs.setdefault('model', model)
      kwargs.setdefault('scale', float(config.loss.s))
    evaluator = cls(predict_fn, name=name, frozen=frozen, mesh=mesh, data=config.data,
                    info=info, workdir=workdir, **kwargs)
    out.append(Scheduled(name, every_epochs(section, config.train) * steps_per_epoch, evaluator))
  return out


def scalars(record: dict[str, Any]) -> dict[str, Any]:
  """The scalar metrics of a record (numbers and None; not step/epoch, lists or dicts)."""
  return {k: v for k, v in record.items()
          if k not in ('step', 'epoch') and (v is None or isinstance(v, (int, float)))}
