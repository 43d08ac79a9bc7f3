"""LT-DPT: decoupled foreground/background prompts on a frozen ViT (paper Section 4, SPEC.md).

Token sequence in block l (0-based, L blocks):
`[CLS | m patches | n_f FR prompts | n_b BR prompts]`, the BR prompts only in the last H blocks
(l >= L - H). Prompts carry no position embedding.

* FR prompts (Eq. 3): `fr_prompts` (L, n_f, D); in every block the attention logits of FR-prompt
  queries over patch keys get `+ alpha * S` (`foreground_bias`).
* BR prompts (Eq. 4, 5): `br_prompts` (G, H, n_b, D) and `br_keys` (G, D). At the first BR block,
  with Z its input patch tokens (the residual stream entering the block), s_g = mean_j cos(z_j, k_g)
  (`group_similarity`); the top-k groups are weighted by softmax of their s (`select_group_prompts`)
  and each BR block's prompts are the weighted sum of the selected groups' prompts for that block.
  BR-prompt queries over patch keys get `+ beta * (1 - S)` (`background_bias`). No other logit
  is biased (`attention_bias`). Gradients: the prompts get gradients through the weighted sum and
  the keys through the softmax weights (top-k *values* are differentiable; the index choice is
  not). Z is not stop-gradiented, so earlier FR prompts also get a (small) gradient through s.
* method: 'fr_br' (full LT-DPT), 'fr' (FR prompts only), 'vpt' (general prompts in every block,
  no bias: the GNM-PT baseline; its prompts are stored under the same name `fr_prompts`).
* prompt_mode 'replace' (VPT-Deep, the paper): each block gets fresh prompts, their outputs are
  dropped after the block; only the last block's prompt outputs are kept (for the feature).
  'carry' (beyond the paper): block l's prompt inputs are its parameters plus block l-1's outputs
  for the same slots (BR slots start from the constructed prompts at the first BR block).
* Classifier: cosine classifier (no bias, no scale; the scale s is applied in the loss) on the
  feature `(final-LN CLS + mean of the last block's prompt outputs (before the final LN)) / 2`
  ('cls_prompt_mean', GNM-PT `structure.py`) or the final-LN CLS token ('cls'); dropout
  `config.model.dropout` on the feature in training.
* Init: prompts, keys and the head kernel truncated normal std 0.02 (GNM-PT/LPT); alpha, beta
  constants `alpha_init`, `beta_init`, scalars or per block (`per_block_scales`: alpha (L,),
  beta (H,)).

Token layout (`LTDPT.block_layout(l)`, the one place that decides it; `__call__`,
`parameter_report` and `flops.analytic_flops` all read it): which segments of
[CLS | patches | FR | BR] are the keys of block l, which rows are computed (queries), whether the
block selects the BR prompts, and whether its prompt outputs (so its biases) reach the output.
With `skip_dead_prompt_work=True` (default), under 'replace' the blocks before the last use the
prompts only as keys/values (no query rows, attention output or MLP for them) and so need no
bias at all; in the last block only the rows the output needs are computed (CLS, plus the
prompts for 'cls_prompt_mean'); under 'carry' every prompt row is needed and only the last
block's patch rows are skipped. `skip_dead_prompt_work=False` runs the straightforward path
(all tokens through every block, biases on every block), which gives the same outputs (tested).

Where the biases act: under 'replace' only the last block's prompt outputs reach the output, so
alpha/beta act only in the last block; per-block scales of earlier blocks get zero gradient (and
with feature 'cls' none do). `parameter_report` counts them in `bias_scales_with_gradient`.

Parameter tree (other modules rely on it): 'backbone' is exactly the ViT tree
`vit_checkpoint.from_npz` returns without head/pre_logits (frozen: regex '^backbone/'); the
trainable top-level keys are 'fr_prompts', 'br_prompts', 'br_keys', 'alpha', 'beta' (by method)
and 'head' {'kernel': (D, C)}.

Building: `build_model(config.model, num_classes, image_size)`, `init_params(model, rng,
image_size, backbone=...)` (the backbone from `vit_checkpoint.load_backbone`, or random),
`abstract_params`, `parameter_report`, `cast_frozen` (the frozen partition in the compute
dtype, as `train.Setup` stores it); no file I/O here.

Performance knobs (config.model, SPEC "Performance knobs"), passed to the backbone's blocks
(`vit.attend`, `vit.Encoder`); none changes what is computed beyond float rounding:
  * `dtype` 'bfloat16': bf16 matmuls with the frozen backbone stored in bf16 once
    (`cast_frozen`, by `train.Setup`); prompts, keys, alpha/beta and head stay float32 master
    copies (cast to bf16 where they enter a matmul), the residual stream, LayerNorm statistics,
    attention logits/softmax, the cosine logits and the loss are float32.
  * `attention` 'auto' (default) | 'xla' | 'cudnn': cuDNN fused attention with the saliency bias
    where it runs ('auto': a GPU and bf16), the einsum/softmax path elsewhere. Only the XLA path
    sows the attention maps, so `ltdpt_jax.maps` runs its model with attention='xla'.
  * `pad_attention_to`: masked padding of queries and keys (0: cuDNN's 8 only).
  * `remat`, `remat_policy`: rematerialise each block in the backward pass.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Sequence

import flax.linen as nn
import flax.traverse_util
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
_prompt_init = nn.initializers.truncated_normal(stddev=0.02 / _TRUNC_STD_FACTOR)


# ---------------------------------------------------------------------------------------------
# The equations, one function each.
# ---------------------------------------------------------------------------------------------

def foreground_bias(saliency: Array, alpha: Array) -> Array:
  """Eq. 3: the bias `alpha * S` on FR-prompt-query x patch-key logits. (B, m) -> (B, m)."""
  return alpha * saliency


def background_bias(saliency: Array, beta: Array) -> Array:
  """Eq. 5: the bias `beta * (1 - S)` on BR-prompt-query x patch-key logits. (B, m) -> (B, m)."""
  return beta * (1.0 - saliency)


def attention_bias(saliency: Array, q_types: np.ndarray, k_types: np.ndarray,
                   alpha: Array | None, beta: Array | None) -> Array | None:
  """The additive logit bias (B, 1, Nq, Nk) of one block (Eq. 3 and 5), or None if it is zero.

  q_types, k_types: static token-type arrays (CLS, PATCH, FR, BR) of the queries and keys; the
  PATCH keys must be the m patches in order. Only (FR query, PATCH key) entries get
  `foreground_bias`, only (BR query, PATCH key) entries `background_bias`; all others are 0.
  """
  q_types, k_types = np.asarray(q_types), np.asarray(k_types)
  patch_cols = np.flatnonzero(k_types == PATCH)
  if len(patch_cols) != saliency.shape[1]:
    raise ValueError(f'{len(patch_cols)} patch keys but saliency has {saliency.shape[1]} scores.')
  lo, hi = patch_cols[0], patch_cols[-1] + 1
  if hi - lo != len(patch_cols):
    raise ValueError('attention_bias expects the patch keys to be contiguous.')
  nk = len(k_types)

  def keys_row(values: Array) -> Array:  # (B, m) -> (B, 1, Nk), zero off the patch columns.
    return jnp.pad(values, ((0, 0), (lo, nk - hi)))[:, None, :]

  bias = None
  fr_rows = (q_types == FR)
  if fr_rows.any() and alpha is not None:
    bias = jnp.asarray(fr_rows, jnp.float32)[None, :, None] * keys_row(
        foreground_bias(saliency, alpha))
  br_rows = (q_types == BR)
  if br_rows.any() and beta is not None:
    b = jnp.asarray(br_rows, jnp.float32)[None, :, None] * keys_row(background_bias(saliency, beta))
    bias = b if bias is None else bias + b
  return None if bias is None else bias[:, None]


def group_similarity(patch_tokens: Array, keys: Array, eps: float = 1e-12) -> Array:
  """Eq. 4: s_g = mean over patches j of cos(z_j, k_g).

  patch_tokens (B, m, D), keys (G, D) -> (B, G).
  """
  z = patch_tokens.astype(jnp.float32)
  k = keys.astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), eps)
  k = k / jnp.maximum(jnp.linalg.norm(k, axis=-1, keepdims=True), eps)
  return jnp.einsum('bd,gd->bg', z.mean(axis=1), k)  # mean_j <z_j, k> = <mean_j z_j, k>


def select_group_prompts(similarity: Array, group_prompts: Array, top_k: int
                         ) -> tuple[Array, Array, Array]:
  """Eq. 4 (second half): P_b = softmax(top-k s) weighted sum of the top-k groups' prompts.

  similarity (B, G), group_prompts (G, H, n_b, D) -> (prompts (B, H, n_b, D), weights (B, k),
  indices (B, k)). Written as a dense (B, G) weight matrix (zeros off the top-k) times the groups,
  so the prompts get gradients for the selected groups and the similarity (so the keys) through
  the softmax weights.
  """
  values, indices = jax.lax.top_k(similarity, top_k)
  weights = jax.nn.softmax(values, axis=-1)
  dense = jnp.einsum('bk,bkg->bg', weights,
                     jax.nn.one_hot(indices, similarity.shape[-1], dtype=weights.dtype))
  prompts = jnp.einsum('bg,ghnd->bhnd', dense, group_prompts.astype(jnp.float32))
  return prompts, weights, indices


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
    kernel = self.param('kernel', _prompt_init, (feature.shape[-1], self.num_classes))
    return cosine_logits(feature, kernel)


# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# The token layout of each block: decided here once, for the model, the report and the FLOPs.
# ---------------------------------------------------------------------------------------------

# What config.model.{method, feature, prompt_mode, dtype} accept (config_lib.validate checks
# these declarations too).
METHODS = ('vpt', 'fr', 'fr_br', 'linear')  # 'linear': models/linear_probe.py (no prompts)
FEATURES = ('cls_prompt_mean', 'cls')
PROMPT_MODES = ('replace', 'carry')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# Token segments of a block's sequence ('cls', 'patches', 'fr', 'br' in sequence order) and
# their token types.
_SEGMENT_TYPE = {'cls': CLS, 'patches': PATCH, 'fr': FR, 'br': BR}
_PROMPT_SEGMENTS = ('fr', 'br')


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
    return tuple(s for s in self.keys if s in _PROMPT_SEGMENTS)

  @property
  def biased(self) -> tuple[str, ...]:
    """The prompt segments whose query rows are computed, so get the saliency bias."""
    return tuple(s for s in self.queries if s in _PROMPT_SEGMENTS)

  @staticmethod
  def types(segments: Sequence[str], sizes: dict[str, int]) -> np.ndarray:
    """Token types (CLS, PATCH, FR, BR) of `segments` with `sizes` tokens each."""
    return np.concatenate([np.full(sizes[s], _SEGMENT_TYPE[s]) for s in segments])

  @staticmethod
  def count(segments: Sequence[str], sizes: dict[str, int]) -> int:
    return int(sum(sizes[s] for s in segments))


# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------

class LTDPT(nn.Module):
  """Frozen ViT + FR/BR prompts with saliency-biased attention + cosine classifier.

  `__call__(images, saliency, *, train=False)`: images (B, H, W, 3) float32 normalised with
  mean = std = 0.5; saliency (B, m) patch scores in [0, 1], row-major like the patch tokens
  (ignored, may be None, for method 'vpt'). Returns {'logits' (B, C) cosine similarities,
  'feature' (B, D)} plus, for 'fr_br', 'br_weights' (B, k), 'br_indices' (B, k) and
  'br_similarity' (B, G). Dropout on the feature needs rngs={'dropout': key} when train=True.

  For looking inside (`ltdpt_jax.maps`): with mutable 'intermediates', every block sows its
  attention logits and probabilities and the last block's input image tokens
  (`LAST_BLOCK_TOKENS`); with a 'perturbations' collection {LAST_BLOCK_TOKENS: zeros (B, 1 + m,
  D)}, the gradient with respect to it is the gradient with respect to those tokens.
  """
  num_classes: int
  patch_size: int | tuple[int, int] = 16
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  method: str = 'fr_br'
  num_fr_prompts: int = 10
  num_br_prompts: int = 10
  num_groups: int = 20
  top_k: int = 2
  num_br_blocks: int = 6
  alpha_init: float = 1.0
  beta_init: float = 1.0
  per_block_scales: bool = False
  feature: str = 'cls_prompt_mean'
  prompt_mode: str = 'replace'
  dropout: float = 0.1
  dtype: Any = jnp.float32
  skip_dead_prompt_work: bool = True
  # Performance knobs (SPEC "Performance knobs"; see `vit.attend` and `vit.Encoder`).
  attention: str = 'auto'
  pad_attention_to: int = 0
  remat: bool = False
  remat_policy: str = 'dots_with_no_batch_dims'

  def _validate(self):
    check_performance_fields(self)
    checks = [
        (self.method in METHODS, f'method={self.method!r}: use one of {METHODS}'),
        (self.feature in FEATURES, f'feature={self.feature!r}: use one of {FEATURES}'),
        (self.prompt_mode in PROMPT_MODES,
         f'prompt_mode={self.prompt_mode!r}: use one of {PROMPT_MODES}'),
        (self.num_fr_prompts > 0, f'num_fr_prompts={self.num_fr_prompts} must be > 0'),
        (0.0 <= self.dropout < 1.0, f'dropout={self.dropout} must be in [0, 1)'),
    ]
    if self.method == 'fr_br':
      checks += [
          (0 < self.num_br_blocks <= self.num_layers,
           f"method 'fr_br' needs num_br_blocks={self.num_br_blocks} in [1, num_layers="
           f"{self.num_layers}] (or use method 'fr')"),
          (self.num_br_prompts > 0, f"method 'fr_br' needs num_br_prompts="
                                    f"{self.num_br_prompts} > 0 (or use method 'fr')"),
          (0 < self.top_k <= self.num_groups,
           f'top_k={self.top_k} must be in [1, num_groups={self.num_groups}]'),
      ]
    for ok, msg in checks:
      if not ok:
        raise ValueError(f'LTDPT: {msg}.')

  @property
  def arch(self) -> vit_lib.ViTArch:
    return vit_lib.ViTArch(self.patch_size, self.hidden_size, self.num_layers, self.num_heads,
                           self.mlp_dim)

  @property
  def first_br_block(self) -> int:
    """Index of the first block with BR prompts (num_layers when there are none)."""
    return self.num_layers - self.num_br_blocks if self.method == 'fr_br' else self.num_layers

  def block_layout(self, l: int) -> BlockLayout:
    """The token layout of block l (0-based), from the fields alone (see `BlockLayout`).

    Keys: CLS, the patches, the FR prompts and, from `first_br_block` on, the BR prompts.
    Prompt outputs are used under 'carry' in every block but the last, and in the last block for
    the feature 'cls_prompt_mean'. Queries: with `skip_dead_prompt_work`, the prompt rows only
    where their outputs are used, and in the last block only CLS of the image rows (nothing
    reads the patch outputs there); without it, every token of every block.
    """
    if not 0 <= l < self.num_layers:
      raise ValueError(f'block {l} out of range for {self.num_layers} blocks.')
    last = l == self.num_layers - 1
    prompts = ('fr', 'br') if l >= self.first_br_block else ('fr',)
    keys = ('cls', 'patches') + prompts
    used = (self.prompt_mode == 'carry' and not last) or (
        last and self.feature == 'cls_prompt_mean')
    if not self.skip_dead_prompt_work:
      queries = keys
    else:
      queries = (('cls',) if last else ('cls', 'patches')) + (prompts if used else ())
    return BlockLayout(keys=keys, queries=queries, selects_br=l == self.first_br_block,
                       bias_matters=used)

  def segment_sizes(self, num_patches: int) -> dict[str, int]:
    """Tokens per segment for an image of `num_patches` patches."""
    return {'cls': 1, 'patches': int(num_patches), 'fr': self.num_fr_prompts,
            'br': self.num_br_prompts}

  @nn.compact
  def __call__(self, images: Array, saliency: Array | None = None, *,
               train: bool = False) -> dict[str, Array]:
    self._validate()
    backbone = self.make_backbone()
    params = self._prompt_params()
    x = backbone.embed(images)  # (B, 1 + m, D): CLS and patch tokens
    sizes = self.segment_sizes(x.shape[1] - 1)
    saliency = self._check_saliency(saliency, x.shape[0], sizes['patches'])
    out: dict[str, Array] = {}
    br_prompts = prompt_out = None
    for l in range(self.num_layers):
      layout = self.block_layout(l)
      if layout.selects_br:  # Eq. 4: the BR prompts of every BR block, from this block's input
        self.sow('intermediates', 'br_patch_tokens', x[:, 1:])
        sim = group_similarity(x[:, 1:], params['br_keys'])
        br_prompts, weights, indices = select_group_prompts(sim, params['br_prompts'],
                                                            self.top_k)
        out.update(br_weights=weights, br_indices=indices, br_similarity=sim)
      if l == self.num_layers - 1:  # Grad-CAM's activations: the tokens entering the last block
        x = self.perturb(LAST_BLOCK_TOKENS, x)  # + 0: its gradient is d output / d x (maps.py)
        self.sow('intermediates', LAST_BLOCK_TOKENS, x)
      p = self._block_prompts(l, x.shape[0], params, br_prompts, prompt_out).astype(x.dtype)
      bias = self._block_bias(l, layout, sizes, saliency, params)  # Eq. 3 and 5
      # Keys [x | p]; queries the layout's rows (the concatenations happen inside the block).
      image_rows, prompt_rows = _queries(x, p, layout)
      y = backbone.block(l, image_rows, x, bias, prompt_rows, p)
      n_img = BlockLayout.count([s for s in layout.queries if s not in _PROMPT_SEGMENTS], sizes)
      x, prompt_out = y[:, :n_img], y[:, n_img:]
    out['feature'] = self._feature(backbone.norm(x[:, 0]).astype(jnp.float32), prompt_out)
    feature = nn.Dropout(self.dropout)(out['feature'], deterministic=not train)
    out['logits'] = CosineClassifier(self.num_classes, name='head')(feature)
    return out

  def make_backbone(self) -> vit_lib.VisionTransformer:
    """The frozen ViT submodule 'backbone' with this model's dtype and performance knobs (call
    it from a compact `__call__`)."""
    return vit_lib.VisionTransformer(
        self.patch_size, self.hidden_size, self.num_layers, self.num_heads, self.mlp_dim,
        dtype=self.dtype, attention=self.attention, pad_attention_to=self.pad_attention_to,
        remat=self.remat, remat_policy=self.remat_policy, name='backbone')

  def _prompt_params(self) -> dict[str, Array]:
    """The trainable prompt parameters: fr_prompts (L, n_f, D); for 'fr_br' br_prompts
    (G, H, n_b, D), br_keys (G, D), beta; alpha except for 'vpt'."""
    n_layers, d = self.num_layers, self.hidden_size
    params = {'fr_prompts': self.param('fr_prompts', _prompt_init,
                                       (n_layers, self.num_fr_prompts, d))}
    if self.method == 'fr_br':
      n_br = n_layers - self.first_br_block
      params['br_prompts'] = self.param('br_prompts', _prompt_init,
                                        (self.num_groups, n_br, self.num_br_prompts, d))
      params['br_keys'] = self.param('br_keys', _prompt_init, (self.num_groups, d))
      params['beta'] = self.param('beta', nn.initializers.constant(self.beta_init),
                                  (n_br,) if self.per_block_scales else ())
    if self.method != 'vpt':
      params['alpha'] = self.param('alpha', nn.initializers.constant(self.alpha_init),
                                   (n_layers,) if self.per_block_scales else ())
    return params

  def _check_saliency(self, saliency: Array | None, batch: int, m: int) -> Array | None:
    if self.method == 'vpt':
      return None
    if saliency is None or saliency.shape != (batch, m):
      raise ValueError(f'saliency must have shape (batch, patches) = {(batch, m)}; got '
                       f'{None if saliency is None else saliency.shape}.')
    return saliency.astype(jnp.float32)

  def _block_prompts(self, l: int, batch: int, params: dict[str, Array],
                     br_prompts: Array | None, prev_out: Array | None) -> Array:
    """The prompts appended to block l: [FR | BR (BR blocks)] (B, n, D); under 'carry' plus the
    previous block's outputs of the same slots (its slots are a prefix of this block's)."""
    p = [jnp.broadcast_to(params['fr_prompts'][l], (batch, self.num_fr_prompts,
                                                    self.hidden_size))]
    if l >= self.first_br_block:
      p.append(br_prompts[:, l - self.first_br_block])
    p = jnp.concatenate(p, axis=1) if len(p) > 1 else p[0]
    if self.prompt_mode == 'carry' and l > 0:
      n_prev = prev_out.shape[1]
      p = jnp.concatenate([p[:, :n_prev] + prev_out, p[:, n_prev:]], axis=1)
    return p

  def _block_bias(self, l: int, layout: BlockLayout, sizes: dict[str, int],
                  saliency: Array | None, params: dict[str, Array]) -> Array | None:
    """The attention-logit bias of block l (Eq. 3 on FR rows, Eq. 5 on BR rows), or None."""
    if self.method == 'vpt' or not layout.biased:
      return None
    alpha = params['alpha'][l] if self.per_block_scales else params['alpha']
    beta = None
    if 'br' in layout.keys:
      beta = (params['beta'][l - self.first_br_block] if self.per_block_scales
              else params['beta'])
    return attention_bias(saliency, BlockLayout.types(layout.queries, sizes),
                          BlockLayout.types(layout.keys, sizes), alpha, beta)

  def _feature(self, cls: Array, prompt_out: Array) -> Array:
    """The classifier feature: final-LN CLS, or its mean with the mean last-block prompt output."""
    if self.feature == 'cls':
      return cls
    return (cls + prompt_out.astype(jnp.float32).mean(axis=1)) / 2


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


def cast_frozen(frozen: Any, model: LTDPT) -> Any:
  """The frozen partition as it is stored on the device: every floating array in the model's
  compute dtype (bf16 for config.model.dtype='bfloat16': cast once, at set-up, never in the
  step), others unchanged. Arrays or ShapeDtypeStructs; unchanged for float32."""
  dtype = jnp.dtype(model.dtype)

  def cast(x):
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == dtype:
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return x.astype(dtype)

  return jax.tree.map(cast, frozen)


def _queries(x: Array, p: Array, layout: BlockLayout) -> tuple[Array, Array | None]:
  """The query rows of `layout` as (image rows, prompt rows or None), from the image tokens
  x = [CLS | patches] and the prompts p (the keys are [x | p]): the queries are their
  concatenation, [x | p] itself when every row is a query."""
  image = x if 'patches' in layout.queries else x[:, :1]
  if not layout.biased:
    return image, None
  if layout.biased != layout.prompts:
    raise ValueError(f'A block computes all of its prompt rows or none; got {layout}.')
  return image, p


# ---------------------------------------------------------------------------------------------
# Building from a config's model section.
# ---------------------------------------------------------------------------------------------

def build_model(model_config, num_classes: int, image_size: int | Sequence[int] | None = None,
                **overrides) -> LTDPT:
  """The LTDPT module that `config.model` describes (architecture from `backbone`).

  `image_size` (optional) is checked to be a multiple of the patch size. `overrides` set LTDPT
  fields directly (e.g. skip_dead_prompt_work=False). Raises ValueError for invalid values.
  """
  mc = model_config
  arch = vit_lib.arch_from_config(mc)
  if image_size is not None:
    arch.grid(image_size)
  dtype = mc.get('dtype', 'float32')
  if dtype not in DTYPES:
    raise ValueError(f'config.model.dtype={dtype!r} is not valid; choose one of {tuple(DTYPES)}.')
  fields = dict(
      num_classes=int(num_classes), patch_size=arch.patch_size, hidden_size=arch.hidden_size,
      num_layers=arch.num_layers, num_heads=arch.num_heads, mlp_dim=arch.mlp_dim,
      method=mc.method, num_fr_prompts=mc.num_fr_prompts, num_br_prompts=mc.num_br_prompts,
      num_groups=mc.num_groups, top_k=mc.top_k, num_br_blocks=mc.num_br_blocks,
      alpha_init=float(mc.alpha_init), beta_init=float(mc.beta_init),
      per_block_scales=bool(mc.per_block_scales), feature=mc.feature,
      prompt_mode=mc.prompt_mode, dropout=float(mc.dropout), dtype=DTYPES[dtype],
      skip_dead_prompt_work=bool(mc.get('skip_dead_prompt_work', True)),
      attention=mc.get('attention', 'auto'), pad_attention_to=int(mc.get('pad_attention_to', 0)),
      remat=bool(mc.get('remat', False)),
      remat_policy=mc.get('remat_policy', 'dots_with_no_batch_dims'))
  fields.update(overrides)
  if fields['method'] == 'linear':  # the linear probe: frozen ViT + cosine head, no prompts
    from ltdpt_jax.models import linear_probe  # pylint: disable=g-import-not-at-top
    model = linear_probe.LinearProbe(**fields)
  else:
    model = LTDPT(**fields)
  model._validate()  # pylint: disable=protected-access
  check_performance_fields(model)  # also for subclasses with their own _validate
  return model


def _input_shapes(model: LTDPT, image_size: int | Sequence[int]):
  """ShapeDtypeStructs of one image and its saliency at `image_size`."""
  gh, gw = model.arch.grid(image_size)
  ph, pw = model.arch.patch_size
  return (jax.ShapeDtypeStruct((1, gh * ph, gw * pw, 3), jnp.float32),
          jax.ShapeDtypeStruct((1, gh * gw), jnp.float32))


@functools.lru_cache(maxsize=64)
def _abstract_params(model: LTDPT, images: jax.ShapeDtypeStruct,
                     saliency: jax.ShapeDtypeStruct) -> dict[str, Any]:
  return jax.eval_shape(lambda i, s: model.init(jax.random.key(0), i, s)['params'], images,
                        saliency)


def abstract_params(model: LTDPT, image_size: int | Sequence[int]) -> dict[str, Any]:
  """The parameter tree as ShapeDtypeStructs (jax.eval_shape, nothing allocated; cached)."""
  return jax.tree.map(lambda x: x, _abstract_params(model, *_input_shapes(model, image_size)))


def _init_all(model: LTDPT, rng, images, saliency):
  return model.init({'params': rng}, images, saliency)['params']


def _init_rest(model: LTDPT, rng, backbone, images, saliency):
  """Initialises every parameter but the given backbone. Flax creates the parameters missing from
  a mutable 'params' collection; the per-parameter RNG streams depend only on the module paths,
  so prompts/keys/head equal those of `_init_all` for the same rng."""
  _, variables = model.apply({'params': {'backbone': backbone}}, images, saliency,
                             rngs={'params': rng}, mutable=['params'])
  return {k: v for k, v in variables['params'].items() if k != 'backbone'}


# Init runs once: for small models on CPU, XLA's unoptimised backend compiles several times faster
# (the many threefry RNG fusions dominate) and runs fast enough. Larger models and accelerators
# use the default settings.
_QUICK_COMPILE = {'xla_backend_optimization_level': 0}
_QUICK_MAX_PARAMS = 5_000_000
_JITTED = {(fn.__name__, quick): jax.jit(fn, static_argnums=0,
                                         compiler_options=_QUICK_COMPILE if quick else None)
           for fn in (_init_all, _init_rest) for quick in (False, True)}


def _run_init(fn, model: LTDPT, num_params: int, *args):
  quick = jax.default_backend() == 'cpu' and num_params <= _QUICK_MAX_PARAMS
  if quick:
    try:
      return _JITTED[(fn.__name__, True)](model, *args)
    except Exception:  # pylint: disable=broad-except  # An XLA without that option: default.
      pass
  return _JITTED[(fn.__name__, False)](model, *args)


def init_params(model: LTDPT, rng: jax.Array, image_size: int | Sequence[int], *,
                backbone: dict[str, Any] | None = None) -> dict[str, Any]:
  """Initial parameters: prompts, keys, bias scales and head from `rng`; the backbone given
  (e.g. `vit_checkpoint.load_backbone(config.model, image_size)`), or from `rng` when None
  (vit_jax inits). The same rng gives the same trainable parameters either way. A backbone whose
  arrays differ from the model's raises ValueError naming them.
  """
  images, saliency = (jnp.zeros(s.shape, s.dtype) for s in _input_shapes(model, image_size))
  shapes = abstract_params(model, image_size)
  num_params = vit_lib.count_params(shapes)
  if backbone is None:
    return dict(_run_init(_init_all, model, num_params, rng, images, saliency))
  got = flax.traverse_util.flatten_dict(backbone, sep='/')
  want = flax.traverse_util.flatten_dict(shapes['backbone'], sep='/')
  if got.keys() != want.keys():
    raise ValueError(f'The backbone parameters differ from the model: missing '
                     f'{sorted(want.keys() - got.keys())[:5]}, extra '
                     f'{sorted(got.keys() - want.keys())[:5]}.')
  for k, v in want.items():
    if tuple(got[k].shape) != tuple(v.shape):
      raise ValueError(f'Backbone array {k!r} has shape {tuple(got[k].shape)}; the model expects '
                       f'{tuple(v.shape)}.')
  backbone = flax.traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in got.items()},
                                               sep='/')
  params = dict(_run_init(_init_rest, model, num_params, rng, backbone, images, saliency))
  params['backbone'] = backbone
  return params


def parameter_report(model: LTDPT, image_size: int | Sequence[int], *,
                     frozen_patterns: Sequence[str]) -> dict[str, int]:
  """Parameter counts of a model (jax.eval_shape; nothing allocated).

  Keys: fr_prompts, br_prompts, br_keys, bias_scales (alpha + beta), head, backbone, trainable
  and frozen (by `frozen_patterns`, regexes over '/'-joined paths, config.optim.frozen_patterns),
  and bias_scales_with_gradient: the scales that can get a non-zero gradient, those of the
  blocks whose `block_layout(l).bias_matters` (under 'replace' only the last block's, and none
  with feature 'cls').
  """
  shapes = abstract_params(model, image_size)
  count = vit_lib.count_params
  report = {k: count(shapes[k]) if k in shapes else 0
            for k in ('fr_prompts', 'br_prompts', 'br_keys')}
  report['bias_scales'] = count([shapes[k] for k in ('alpha', 'beta') if k in shapes])
  report['head'] = count(shapes['head'])
  report['backbone'] = count(shapes['backbone'])
  patterns = [re.compile(p) for p in frozen_patterns]
  flat = flax.traverse_util.flatten_dict(shapes, sep='/')
  frozen = count([v for k, v in flat.items() if any(p.search(k) for p in patterns)])
  report['trainable'] = count(shapes) - frozen
  report['frozen'] = frozen

  matters = [model.block_layout(l).bias_matters for l in range(model.num_layers)]
  with_grad = 0
  for name, blocks in (('alpha', matters), ('beta', matters[model.first_br_block:])):
    if name in shapes:
      with_grad += sum(blocks) if model.per_block_scales else int(any(blocks))
  report['bias_scales_with_gradient'] = with_grad
  return report
