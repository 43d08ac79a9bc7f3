"""Evaluators: small objects the train loop and `--mode=eval` run on the trainable parameters.

  evaluators.from_config(config, ...) -> [Scheduled(name, every_steps, evaluator), ...]
  evaluator.run(trainable, step=..., epoch=...) -> record (JSON-able dict)

`longtail` is the long-tailed classification evaluator (top-1, head / medium / tail, per-class
accuracy); `common` chooses evaluators by name from `config.evals`.
"""

from ltdpt_jax.evaluators.common import every_epochs
from ltdpt_jax.evaluators.common import from_config
from ltdpt_jax.evaluators.common import REGISTRY
from ltdpt_jax.evaluators.common import Scheduled
from ltdpt_jax.evaluators.common import scalars
from ltdpt_jax.evaluators.longtail import shot_groups
from ltdpt_jax.evaluators.longtail import summarize_eval
