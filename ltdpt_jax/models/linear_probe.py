"""The linear probe (`config.model.method = 'linear'`): the frozen ViT and a trainable head only.

The baseline every prompt-tuning paper reports as "Linear" (VPT, Jia et al. 2022, Table 1): no
prompts at all, the backbone runs exactly as pretrained, and only a classifier on its frozen
feature is trained. Here that classifier is the same cosine head as LT-DPT's (`ltdpt.
CosineClassifier`, param `head/kernel` (D, C)) on the final-LayerNorm CLS token (the feature
option 'cls'; `config.model.feature` is ignored, there being no prompt outputs to average), with
the same dropout, loss (GCL + DRW), optimiser (SGD + GNM) and schedule as the other methods, so
the ablation (`ltdpt_jax.tools.ablate`) differs in the prompts alone. No saliency is computed
(`train_step.forward`), and the prompt fields of `config.model` (num_fr_prompts, ...) are
ignored.

`LinearProbe` is an `ltdpt.LTDPT` (same fields, parameter tree {'backbone', 'head'}, same
`block_layout` interface read by `parameter_report` and the FLOP model): block l attends over
[CLS | patches] only; with `skip_dead_prompt_work` the last block computes the CLS row alone
(nothing reads the patch outputs there), without it every row. `ltdpt.build_model` returns one
for method 'linear'.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ltdpt_jax.models import ltdpt
from ltdpt_jax.models import vit as vit_lib

Array = jax.Array

METHOD = 'linear'


class LinearProbe(ltdpt.LTDPT):
  """Frozen ViT -> final-LN CLS -> dropout -> cosine head (see the module docstring).

  `__call__(images, saliency=None, *, train=False)` -> {'logits' (B, C), 'feature' (B, D)};
  `saliency` is ignored.
  """

  def _validate(self):
    if self.method != METHOD:
      raise ValueError(f'LinearProbe: method={self.method!r}; it is the {METHOD!r} method.')
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'LinearProbe: dropout={self.dropout} must be in [0, 1).')

  @property
  def first_br_block(self) -> int:
    return self.num_layers  # no BR prompts

  def block_layout(self, l: int) -> ltdpt.BlockLayout:
    if not 0 <= l < self.num_layers:
      raise ValueError(f'block {l} out of range for {self.num_layers} blocks.')
    keys = ('cls', 'patches')
    last = l == self.num_layers - 1
    queries = ('cls',) if last and self.skip_dead_prompt_work else keys
    return ltdpt.BlockLayout(keys=keys, queries=queries, selects_br=False, bias_matters=False)

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
        x = self.perturb(ltdpt.LAST_BLOCK_TOKENS, x)
        self.sow('intermediates', ltdpt.LAST_BLOCK_TOKENS, x)
      rows = x if 'patches' in self.block_layout(l).queries else x[:, :1]
      x = backbone.block(l, rows, x)
    feature = backbone.norm(x[:, 0]).astype(jnp.float32)
    out = {'feature': feature}
    feature = nn.Dropout(self.dropout)(feature, deterministic=not train)
    out['logits'] = ltdpt.CosineClassifier(self.num_classes, name='head')(feature)
    return out
