"""LT-DPT (paper Section 4): decoupled foreground (FR) and background (BR) prompts on a frozen ViT.

The equations, one function each: `foreground_bias` (Eq. 3), `group_similarity` and
`select_group_prompts` (Eq. 4), `background_bias` (Eq. 5), `attention_bias` (both on one
block's logits). `LTDPT` is the model (its token layout: `LTDPT.block_layout`);
`init_params`, `abstract_params`, `parameter_report` and `cast_frozen` serve the train loop.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ltdpt_jax.models import common
from ltdpt_jax.models import vit as vit_lib

Array = jax.Array

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
  patch_cols = np.flatnonzero(k_types == common.PATCH)
  if len(patch_cols) != saliency.shape[1]:
    raise ValueError(f'{len(patch_cols)} patch keys but saliency has {saliency.shape[1]} scores.')
  lo, hi = patch_cols[0], patch_cols[-1] + 1
  if hi - lo != len(patch_cols):
    raise ValueError('attention_bias expects the patch keys to be contiguous.')
  nk = len(k_types)

  def keys_row(values: Array) -> Array:  # (B, m) -> (B, 1, Nk), zero off the patch columns.
    return jnp.pad(values, ((0, 0), (lo, nk - hi)))[:, None, :]

  bias = None
  fr_rows = (q_types == common.FR)
  if fr_rows.any() and alpha is not None:
    bias = jnp.asarray(fr_rows, jnp.float32)[None, :, None] * keys_row(
        foreground_bias(saliency, alpha))
  br_rows = (q_types == common.BR)
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


# ---------------------------------------------------------------------------------------------
# The token layout of each block: decided here once, for the model, the report and the FLOPs.
# ---------------------------------------------------------------------------------------------

# What config.model.{method, feature, prompt_mode, dtype} accept (config_lib.validate checks
# these declarations too).
METHODS = ('vpt', 'fr', 'fr_br', 'linear')  # 'linear': models/linear_probe.py (no prompts)
FEATURES = ('cls_prompt_mean', 'cls')
PROMPT_MODES = ('replace', 'carry')

# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------

class LTDPT(nn.Module):
  """Frozen ViT + FR/BR prompts with saliency-biased attention + cosine classifier.

  Block l (0-based, L blocks) attends over [CLS | m patches | n_f FR prompts | n_b BR prompts];
  the BR prompts exist only in the last H = `num_br_blocks` blocks, and no prompt has a position
  embedding. `method`: 'fr_br' (LT-DPT), 'fr' (FR prompts only), 'vpt' (general prompts in every
  block and no bias: the GNM-PT baseline; stored under the same name `fr_prompts`). Under
  `prompt_mode` 'replace' (VPT-Deep, the paper) each block gets fresh prompts and drops their
  outputs; 'carry' (beyond the paper) adds block l-1's prompt outputs to block l's prompts.
  `dtype` is the compute dtype of the backbone's matmuls; `attention`, `pad_attention_to`,
  `remat` and `remat_policy` are passed to its blocks (`vit.attend`, `vit.Encoder`) and change
  nothing beyond float rounding.

  Parameters: 'backbone' is exactly the ViT tree of `vit_checkpoint.from_npz` without its head
  (frozen by the regex '^backbone/'); trainable are 'fr_prompts' (L, n_f, D), for 'fr_br'
  'br_prompts' (G, H, n_b, D), 'br_keys' (G, D) and 'beta', 'alpha' (not for 'vpt'), and 'head'
  {'kernel': (D, C)}.

  `__call__(images, saliency, *, train=False)`: images (B, H, W, 3) float32 normalised with
  mean = std = 0.5; saliency (B, m) patch scores in [0, 1], row-major like the patch tokens
  (ignored, may be None, for method 'vpt'). Returns {'logits' (B, C) cosine similarities,
  'feature' (B, D)} plus, for 'fr_br', 'br_weights' (B, k), 'br_indices' (B, k) and
  'br_similarity' (B, G). Dropout on the feature needs rngs={'dropout': key} when train=True.

  For looking inside (`ltdpt_jax.maps`): with mutable 'intermediates', every block sows its
  attention logits and probabilities and the last block's input image tokens
  (`common.LAST_BLOCK_TOKENS`); with a 'perturbations' collection {LAST_BLOCK_TOKENS: zeros
  (B, 1 + m, D)}, the gradient with respect to it is the gradient with respect to those tokens.
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
  # Performance knobs, passed to the backbone's blocks.
  attention: str = 'auto'
  pad_attention_to: int = 0
  remat: bool = False
  remat_policy: str = 'dots_with_no_batch_dims'

  def _validate(self):
    common.check_performance_fields(self)
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

  def block_layout(self, l: int) -> common.BlockLayout:
    """The token layout of block l (0-based), from the fields alone (see `common.BlockLayout`).

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
    return common.BlockLayout(keys=keys, queries=queries, selects_br=l == self.first_br_block,
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
        # Z (this block's input patch tokens) is not stop-gradiented: earlier FR prompts get a
        # (small) gradient through the similarities too.
        self.sow('intermediates', 'br_patch_tokens', x[:, 1:])
        sim = group_similarity(x[:, 1:], params['br_keys'])
        br_prompts, weights, indices = select_group_prompts(sim, params['br_prompts'],
                                                            self.top_k)
        out.update(br_weights=weights, br_indices=indices, br_similarity=sim)
      if l == self.num_layers - 1:  # Grad-CAM's activations: the tokens entering the last block
        x = self.perturb(common.LAST_BLOCK_TOKENS, x)  # + 0: its gradient is d output / d x
        self.sow('intermediates', common.LAST_BLOCK_TOKENS, x)
      p = self._block_prompts(l, x.shape[0], params, br_prompts, prompt_out).astype(x.dtype)
      bias = self._block_bias(l, layout, sizes, saliency, params)  # Eq. 3 and 5
      # Keys [x | p]; queries the layout's rows (the concatenations happen inside the block).
      image_rows, prompt_rows = _queries(x, p, layout)
      y = backbone.block(l, image_rows, x, bias, prompt_rows, p)
      image_segments = [s for s in layout.queries if s not in common.PROMPT_SEGMENTS]
      n_img = common.BlockLayout.count(image_segments, sizes)
      x, prompt_out = y[:, :n_img], y[:, n_img:]
    out['feature'] = self._feature(backbone.norm(x[:, 0]).astype(jnp.float32), prompt_out)
    feature = nn.Dropout(self.dropout)(out['feature'], deterministic=not train)
    out['logits'] = common.CosineClassifier(self.num_classes, name='head')(feature)
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
    (G, H, n_b, D), br_keys (G, D), beta; alpha except for 'vpt'. Prompts and keys start from a
    truncated normal of std 0.02 (as GNM-PT and LPT), alpha and beta from `alpha_init`,
    `beta_init`: scalars, or one per block with `per_block_scales` (alpha (L,), beta (H,))."""
    n_layers, d = self.num_layers, self.hidden_size
    params = {'fr_prompts': self.param('fr_prompts', common.trunc_normal_init,
                                       (n_layers, self.num_fr_prompts, d))}
    if self.method == 'fr_br':
      n_br = n_layers - self.first_br_block
      params['br_prompts'] = self.param('br_prompts', common.trunc_normal_init,
                                        (self.num_groups, n_br, self.num_br_prompts, d))
      params['br_keys'] = self.param('br_keys', common.trunc_normal_init, (self.num_groups, d))
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

  def _block_bias(self, l: int, layout: common.BlockLayout, sizes: dict[str, int],
                  saliency: Array | None, params: dict[str, Array]) -> Array | None:
    """The attention-logit bias of block l (Eq. 3 on FR rows, Eq. 5 on BR rows), or None."""
    if self.method == 'vpt' or not layout.biased:
      return None
    alpha = params['alpha'][l] if self.per_block_scales else params['alpha']
    beta = None
    if 'br' in layout.keys:
      beta = (params['beta'][l - self.first_br_block] if self.per_block_scales
              else params['beta'])
    return attention_bias(saliency, common.BlockLayout.types(layout.queries, sizes),
                          common.BlockLayout.types(layout.keys, sizes), alpha, beta)

  def _feature(self, cls: Array, prompt_out: Array) -> Array:
    """The classifier feature. 'cls_prompt_mean' (as the GNM-PT code): (final-LN CLS + the mean
    of the last block's prompt outputs, taken before the final LN) / 2; 'cls': the final-LN CLS."""
    if self.feature == 'cls':
      return cls
    return (cls + prompt_out.astype(jnp.float32).mean(axis=1)) / 2


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


def _queries(x: Array, p: Array, layout: common.BlockLayout) -> tuple[Array, Array | None]:
  """The query rows of `layout` as (image rows, prompt rows or None), from the image tokens
  x = [CLS | patches] and the prompts p (the keys are [x | p]): the queries are their
  concatenation, [x | p] itself when every row is a query."""
  image = x if 'patches' in layout.queries else x[:, :1]
  if not layout.biased:
    return image, None
  if layout.biased != layout.prompts:
    raise ValueError(f'A block computes all of its prompt rows or none; got {layout}.')
  return image, p


def _input_shapes(model: LTDPT, image_size: int | Sequence[int]):
  """ShapeDtypeStructs of one image and its saliency at `image_size`."""
  gh, gw = model.arch.grid(image_size)
  ph, pw = model.arch.patch_size
  return (jax.ShapeDtypeStruct((1, gh * ph, gw * pw, 3), jnp.float32),
          jax.ShapeDtypeStruct((1, gh * gw), jnp.float32))


# (model, image size) -> the parameter tree's ShapeDtypeStructs: from jax.eval_shape, or from
# the trace of `init_params`, which has them anyway (tracing the model is most of either's cost).
_ABSTRACT_PARAMS: dict[tuple[LTDPT, tuple[int, ...]], dict[str, Any]] = {}
_ABSTRACT_PARAMS_MAX = 64


def _remember(key, shapes):
  if len(_ABSTRACT_PARAMS) >= _ABSTRACT_PARAMS_MAX:
    del _ABSTRACT_PARAMS[next(iter(_ABSTRACT_PARAMS))]  # the oldest
  _ABSTRACT_PARAMS[key] = shapes


def abstract_params(model: LTDPT, image_size: int | Sequence[int]) -> dict[str, Any]:
  """The parameter tree as ShapeDtypeStructs (jax.eval_shape, nothing allocated; cached)."""
  images, saliency = _input_shapes(model, image_size)
  key = (model, images.shape)
  if key not in _ABSTRACT_PARAMS:
    _remember(key, jax.eval_shape(
        lambda i, s: model.init(jax.random.key(0), i, s)['params'], images, saliency))
  return jax.tree.map(lambda x: x, _ABSTRACT_PARAMS[key])


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


def _init_all_traced_once(model: LTDPT, rng, images, saliency):
  """`_run_init(_init_all, ...)` tracing the model once: the jitted function's trace gives the
  parameter shapes (kept for `abstract_params`), and its call reuses that trace (jax.jit caches
  traces by function and argument types)."""
  guess = jax.default_backend() == 'cpu'  # `_run_init`'s choice, unless the model is large
  shapes = _JITTED[('_init_all', guess)].trace(model, rng, images, saliency).out_info
  _remember((model, tuple(images.shape)), shapes)
  return _run_init(_init_all, model, vit_lib.count_params(shapes), rng, images, saliency)


def init_params(model: LTDPT, rng: jax.Array, image_size: int | Sequence[int], *,
                backbone: dict[str, Any] | None = None) -> dict[str, Any]:
  """Initial parameters: prompts, keys, bias scales and head from `rng`; the backbone given
  (e.g. `vit_checkpoint.load_backbone(config.model, image_size)`), or from `rng` when None
  (vit_jax inits). The same rng gives the same trainable parameters either way. A backbone whose
  arrays differ from the model's raises ValueError naming them.
  """
  images, saliency = (jnp.zeros(s.shape, s.dtype) for s in _input_shapes(model, image_size))
  if backbone is None:
    return dict(_init_all_traced_once(model, rng, images, saliency))
  shapes = abstract_params(model, image_size)
  num_params = vit_lib.count_params(shapes)
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
