"""The linear probe (`config.model.method = 'linear'`): the frozen ViT and a trainable head only.

The "Linear" baseline of prompt-tuning papers (VPT, Jia et al. 2022, Table 1), with LT-DPT's
cosine head, loss, optimiser and schedule, so an ablation differs in the prompts alone.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ltdpt_jax.models import common
from ltdpt_jax.models import ltdpt
from ltdpt_jax.models import vit as vit_lib

Array = jax.Array

METHOD = 'linear'


class LinearProbe(ltdpt.LTDPT):
  """Frozen ViT -> final-LN CLS -> dropout -> cosine head (`head/kernel` (D, C)).

  `__call__(images, saliency=None, *, train=False)` -> {'logits' (B, C), 'feature' (B, D)}. No
  prompts: the backbone runs exactly as pretrained, `saliency` is ignored (and not computed by
  `train_step.forward`), and so are `feature` and the prompt fields of `config.model`. It is an
  `LTDPT` for its fields and its `block_layout`, which `parameter_report` and the FLOP model
  read: every block attends over [CLS | patches]; with `skip_dead_prompt_work` the last block
  computes the CLS row alone (nothing reads its patch outputs).
  """

  def _validate(self):
    common.check_performance_fields(self)
    if self.method != METHOD:
      raise ValueError(f'LinearProbe: method={self.method!r}; it is the {METHOD!r} method.')
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'LinearProbe: dropout={self.dropout} must be in [0, 1).')

  @property
  def first_br_block(self) -> int:
    return self.num_layers  # no BR prompts

  def block_layout(self, l: int) -> common.BlockLayout:
    if not 0 <= l < self.num_layers:
      raise ValueError(f'block {l} out of range for {self.num_layers} blocks.')
    keys = ('cls', 'patches')
    last = l == self.num_layers - 1
    queries = ('cls',) if last and self.skip_dead_prompt_work else keys
    return common.BlockLayout(keys=keys, queries=queries, selects_br=False, bias_matters=False)

  @nn.compact
  def __call__(self, images: Array, saliency: Array | None = None, *,
               train: bool = False) -> dict[str, Array]:
    del saliency
    self._validate()
    backbone = vit_lib.VisionTransformer(self.patch_size, self.hidden_size, self.num_layers,
                                         self.num_heads, self.mlp_dim, dtype=self.dtype,
                                         name='backbone')
    x = backbone.embed(images)
    for l in range(self.num_layers):
      if l == self.num_layers - 1:  # as LTDPT: Grad-CAM's tokens (ltdpt_jax.maps); no-ops here
        x = self.perturb(common.LAST_BLOCK_TOKENS, x)
        self.sow('intermediates', common.LAST_BLOCK_TOKENS, x)
      rows = x if 'patches' in self.block_layout(l).queries else x[:, :1]
      x = backbone.block(l, rows, x)
    feature = backbone.norm(x[:, 0]).astype(jnp.float32)
    out = {'feature': feature}
    feature = nn.Dropout(self.dropout)(feature, deterministic=not train)
    out['logits'] = common.CosineClassifier(self.num_classes, name='head')(feature)
    return out
