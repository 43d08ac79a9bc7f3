"""What the models share: the cosine head, the token layout of a block, the names of its segments.

`CosineClassifier` (`cosine_logits`), `BlockLayout` (which tokens a block attends over and
computes), `LAST_BLOCK_TOKENS`, the token types `CLS`, `PATCH`, `FR`, `BR`, the compute `DTYPES`
and `check_performance_fields`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ltdpt_jax.models import vit as vit_lib

Array = jax.Array

# The image tokens [CLS | patches] entering the last block: sown into 'intermediates' and, when a
# 'perturbations' collection is passed, perturbed by it (Flax `perturb`) so their gradient can be
# taken (Grad-CAM, `ltdpt_jax.maps`). Both are no-ops in the train step.
LAST_BLOCK_TOKENS = 'last_block_tokens'

# Token types, for building the attention bias of a block's (query, key) layout.
CLS, PATCH, FR, BR = 0, 1, 2, 3

# Truncated normal (cut at +-2 sigma of the base normal) whose standard deviation IS 0.02: jax's
# truncated_normal(stddev) gives the base normal that stddev, so correct by the 2-sigma factor.
# (timm's trunc_normal_(std=.02) cuts at +-2 absolute, i.e. is in effect N(0, 0.02^2).)
_TRUNC_STD_FACTOR = 0.87962566103423978
trunc_normal_init = nn.initializers.truncated_normal(stddev=0.02 / _TRUNC_STD_FACTOR)

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# Token segments of a block's sequence ('cls', 'patches', 'fr', 'br' in sequence order) and
# their token types.
SEGMENT_TYPE = {'cls': CLS, 'patches': PATCH, 'fr': FR, 'br': BR}
PROMPT_SEGMENTS = ('fr', 'br')


@dataclasses.dataclass(frozen=True)
class BlockLayout:
  """Which tokens block l attends over and computes (`LTDPT.block_layout`).

  Attributes:
    keys: the segments of the key/value sequence, in order: 'cls', 'patches', 'fr', plus 'br' in
      the last H blocks of 'fr_br' (the 'fr' segment holds the general prompts for 'vpt').
    queries: the segments whose rows the block computes (queries, residual, MLP), in the same
      order; the others serve only as keys/values.
    selects_br: the first BR block: its input patch tokens choose the BR prompts (Eq. 4).
    bias_matters: this block's prompt outputs reach the model's output (the next block's prompts
      under 'carry', the feature in the last block under 'cls_prompt_mean'), so its FR/BR logit
      biases (Eq. 3, 5) can change the output and its bias scales get gradients.
  """
  keys: tuple[str, ...]
  queries: tuple[str, ...]
  selects_br: bool
  bias_matters: bool

  @property
  def prompts(self) -> tuple[str, ...]:
    """The prompt segments of the block ('fr', and 'br' in BR blocks)."""
    return tuple(s for s in self.keys if s in PROMPT_SEGMENTS)

  @property
  def biased(self) -> tuple[str, ...]:
    """The prompt segments whose query rows are computed, so get the saliency bias."""
    return tuple(s for s in self.queries if s in PROMPT_SEGMENTS)

  @staticmethod
  def types(segments: Sequence[str], sizes: dict[str, int]) -> np.ndarray:
    """Token types (CLS, PATCH, FR, BR) of `segments` with `sizes` tokens each."""
    return np.concatenate([np.full(sizes[s], SEGMENT_TYPE[s]) for s in segments])

  @staticmethod
  def count(segments: Sequence[str], sizes: dict[str, int]) -> int:
    return int(sum(sizes[s] for s in segments))


def cosine_logits(feature: Array, kernel: Array, eps: float = 1e-12) -> Array:
  """Cosine classifier: cos(feature, w_c) for each class column of kernel (D, C); no bias/scale."""
  f = feature.astype(jnp.float32)
  w = kernel.astype(jnp.float32)
  f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), eps)
  w = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), eps)
  return f @ w


class CosineClassifier(nn.Module):
  """`head`: kernel (D, C), truncated normal std 0.02 (GNM-PT), cosine logits."""
  num_classes: int

  @nn.compact
  def __call__(self, feature: Array) -> Array:
    kernel = self.param('kernel', trunc_normal_init, (feature.shape[-1], self.num_classes))
    return cosine_logits(feature, kernel)


def check_performance_fields(model) -> None:
  """ValueError for invalid `attention`, `pad_attention_to`, `remat_policy` (or a combination
  that cannot run: cuDNN attention needs a bf16 compute dtype and even padded lengths)."""
  if model.attention not in vit_lib.ATTENTIONS:
    raise ValueError(f'LTDPT: attention={model.attention!r}: use one of {vit_lib.ATTENTIONS}.')
  if model.remat_policy not in vit_lib.REMAT_POLICIES:
    raise ValueError(f'LTDPT: remat_policy={model.remat_policy!r}: use one of '
                     f'{tuple(vit_lib.REMAT_POLICIES)}.')
  pad = model.pad_attention_to
  if not (isinstance(pad, (int, np.integer)) and pad >= 0):
    raise ValueError(f'LTDPT: pad_attention_to={pad!r} must be an integer >= 0 (0: none on the '
                     f'XLA path, {vit_lib.CUDNN_PAD_MULTIPLE} on the cuDNN path).')
  if model.attention != 'xla' and pad > 1 and pad % 2:
    raise ValueError(f"LTDPT: pad_attention_to={pad} is odd; attention={model.attention!r} may "
                     'use cuDNN, which needs even query and key lengths (use 8).')
  if model.attention == 'cudnn' and jnp.dtype(model.dtype) != jnp.dtype(jnp.bfloat16):
    raise ValueError(f"LTDPT: attention='cudnn' needs dtype='bfloat16' (got "
                     f"{jnp.dtype(model.dtype).name}); use attention='auto' or 'xla'.")
