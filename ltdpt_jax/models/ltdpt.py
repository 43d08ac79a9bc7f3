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

Dead work (`skip_dead_prompt_work=True`, default): under 'replace', blocks before the last use the
prompts only as keys/values (no query rows, attention output or MLP for them) and so need no bias
at all; in the last block only the rows the output needs are computed (CLS, plus the prompts for
'cls_prompt_mean'); under 'carry' every prompt row is needed and only the last block's patch rows
are skipped. `skip_dead_prompt_work=False` runs the straightforward path (all tokens through every
block, biases on every block), which gives the same outputs (tested).

Where the biases act: under 'replace' only the last block's prompt outputs reach the output, so
alpha/beta act only in the last block; per-block scales of earlier blocks get zero gradient (and
with feature 'cls' none do). `parameter_report` counts them in `bias_scales_with_gradient`.

Parameter tree (other modules rely on it): 'backbone' is exactly the ViT tree `vit.from_npz`
returns without head/pre_logits (frozen: regex '^backbone/'); the trainable top-level keys are
'fr_prompts', 'br_prompts', 'br_keys', 'alpha', 'beta' (by method) and 'head' {'kernel': (D, C)}.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ltdpt_jax.models import vit as vit_lib

Array = jax.Array

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

class LTDPT(nn.Module):
  """Frozen ViT + FR/BR prompts with saliency-biased attention + cosine classifier.

  `__call__(images, saliency, *, train=False)`: images (B, H, W, 3) float32 normalised with
  mean = std = 0.5; saliency (B, m) patch scores in [0, 1], row-major like the patch tokens
  (ignored, may be None, for method 'vpt'). Returns {'logits' (B, C) cosine similarities,
  'feature' (B, D)} plus, for 'fr_br', 'br_weights' (B, k), 'br_indices' (B, k) and
  'br_similarity' (B, G). Dropout on the feature needs rngs={'dropout': key} when train=True.
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

  def _validate(self):
    checks = [
        (self.method in ('vpt', 'fr', 'fr_br'),
         f"method={self.method!r}: use 'vpt', 'fr' or 'fr_br'"),
        (self.feature in ('cls_prompt_mean', 'cls'),
         f"feature={self.feature!r}: use 'cls_prompt_mean' or 'cls'"),
        (self.prompt_mode in ('replace', 'carry'),
         f"prompt_mode={self.prompt_mode!r}: use 'replace' or 'carry'"),
        (self.num_fr_prompts > 0, f'num_fr_prompts={self.num_fr_prompts} must be > 0'),
    ]
    if self.method == 'fr_br':
      checks += [
          (0 < self.num_br_blocks <= self.num_layers,
           f'num_br_blocks={self.num_br_blocks} must be in [1, num_layers={self.num_layers}]'),
          (self.num_br_prompts > 0, f'num_br_prompts={self.num_br_prompts} must be > 0'),
          (0 < self.top_k <= self.num_groups,
           f'top_k={self.top_k} must be in [1, num_groups={self.num_groups}]'),
      ]
    for ok, msg in checks:
      if not ok:
        raise ValueError(f'LTDPT: {msg}.')

  @property
  def first_br_block(self) -> int:
    """Index of the first block with BR prompts (num_layers when there are none)."""
    return self.num_layers - self.num_br_blocks if self.method == 'fr_br' else self.num_layers

  @nn.compact
  def __call__(self, images: Array, saliency: Array | None = None, *,
               train: bool = False) -> dict[str, Array]:
    self._validate()
    n_layers, d = self.num_layers, self.hidden_size
    b0 = self.first_br_block
    backbone = vit_lib.VisionTransformer(self.patch_size, d, n_layers, self.num_heads,
                                         self.mlp_dim, dtype=self.dtype, name='backbone')
    fr_prompts = self.param('fr_prompts', _prompt_init, (n_layers, self.num_fr_prompts, d))
    alpha = beta = None
    if self.method == 'fr_br':
      n_br = n_layers - b0
      br_prompts = self.param('br_prompts', _prompt_init,
                              (self.num_groups, n_br, self.num_br_prompts, d))
      br_keys = self.param('br_keys', _prompt_init, (self.num_groups, d))
      beta = self.param('beta', nn.initializers.constant(self.beta_init),
                        (n_br,) if self.per_block_scales else ())
    if self.method != 'vpt':
      alpha = self.param('alpha', nn.initializers.constant(self.alpha_init),
                         (n_layers,) if self.per_block_scales else ())

    x = backbone.embed(images)  # (B, 1 + m, D)
    batch, n_img = x.shape[0], x.shape[1]
    m = n_img - 1
    if self.method != 'vpt':
      if saliency is None or saliency.shape != (batch, m):
        raise ValueError(f'saliency must have shape (batch, patches) = {(batch, m)}; got '
                         f'{None if saliency is None else saliency.shape}.')
      saliency = saliency.astype(jnp.float32)

    carry = self.prompt_mode == 'carry'
    skip = self.skip_dead_prompt_work
    need_prompt_out = self.feature == 'cls_prompt_mean'
    out: dict[str, Array] = {}
    prev_prompt_out = None
    prompt_out = None
    for l in range(n_layers):
      last = l == n_layers - 1
      # This block's prompts and their token types.
      prompts = [jnp.broadcast_to(fr_prompts[l], (batch, self.num_fr_prompts, d))]
      types = [FR] * self.num_fr_prompts
      if l >= b0:
        if l == b0:
          patch_tokens = x[:, 1:]
          self.sow('intermediates', 'br_patch_tokens', patch_tokens)
          sim = group_similarity(patch_tokens, br_keys)
          br_all, weights, indices = select_group_prompts(sim, br_prompts, self.top_k)
          out.update(br_weights=weights, br_indices=indices, br_similarity=sim)
        prompts.append(br_all[:, l - b0])
        types += [BR] * self.num_br_prompts
      p = jnp.concatenate(prompts, axis=1) if len(prompts) > 1 else prompts[0]
      if carry and prev_prompt_out is not None:
        # Slots of the previous block are a prefix of this block's slots ([FR] or [FR | BR]).
        n_prev = prev_prompt_out.shape[1]
        p = jnp.concatenate([p[:, :n_prev] + prev_prompt_out, p[:, n_prev:]], axis=1)
      p = p.astype(x.dtype)
      kv = jnp.concatenate([x, p], axis=1)
      k_types = np.array([CLS] + [PATCH] * m + types)
      n_tok = kv.shape[1]

      # Which rows are queries: 'all', 'image' (CLS + patches) or 'cls+prompts' / 'cls'.
      if not skip:
        rows = 'all'
      elif last:
        rows = 'cls+prompts' if need_prompt_out else 'cls'
      else:
        rows = 'all' if carry else 'image'
      if rows == 'all':
        q, q_sel = kv, np.arange(n_tok)
      elif rows == 'image':
        q, q_sel = x, np.arange(n_img)
      elif rows == 'cls+prompts':
        q, q_sel = jnp.concatenate([x[:, :1], p], axis=1), np.r_[0, n_img:n_tok]
      else:
        q, q_sel = x[:, :1], np.array([0])
      bias = None
      if self.method != 'vpt':
        a_l = alpha[l] if self.per_block_scales else alpha
        b_l = None
        if l >= b0:
          b_l = beta[l - b0] if self.per_block_scales else beta
        bias = attention_bias(saliency, k_types[q_sel], k_types, a_l, b_l)
      y = backbone.block(l, q, kv, bias)

      # Split the rows back into image tokens and prompt outputs.
      n_img_rows = int((q_sel < n_img).sum())
      x = y[:, :n_img_rows]
      prompt_rows = y[:, n_img_rows:]
      if carry:
        prev_prompt_out = prompt_rows
      if last:
        prompt_out = prompt_rows

    cls = backbone.norm(x[:, 0]).astype(jnp.float32)
    if self.feature == 'cls':
      feature = cls
    else:
      feature = (cls + prompt_out.astype(jnp.float32).mean(axis=1)) / 2
    out['feature'] = feature
    feature = nn.Dropout(self.dropout)(feature, deterministic=not train)
    out['logits'] = CosineClassifier(self.num_classes, name='head')(feature)
    return out


# ---------------------------------------------------------------------------------------------
# Building from a config.
# ---------------------------------------------------------------------------------------------

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def build_model(config, num_classes: int, **overrides) -> LTDPT:
  """The LTDPT module a config describes (`config.model.*`; architecture from `backbone`).

  `overrides` set LTDPT fields directly (e.g. skip_dead_prompt_work=False).
  """
  mc = config.model
  arch = vit_lib.arch_from_config(config)
  dtype = mc.get('dtype', 'float32')
  if dtype not in _DTYPES:
    raise ValueError(f'config.model.dtype={dtype!r} is not valid; choose one of {sorted(_DTYPES)}.')
  fields = dict(
      num_classes=int(num_classes), patch_size=arch.patch_size, hidden_size=arch.hidden_size,
      num_layers=arch.num_layers, num_heads=arch.num_heads, mlp_dim=arch.mlp_dim,
      method=mc.method, num_fr_prompts=mc.num_fr_prompts, num_br_prompts=mc.num_br_prompts,
      num_groups=mc.num_groups, top_k=mc.top_k, num_br_blocks=mc.num_br_blocks,
      alpha_init=float(mc.alpha_init), beta_init=float(mc.beta_init),
      per_block_scales=bool(mc.per_block_scales), feature=mc.feature,
      prompt_mode=mc.prompt_mode, dropout=float(mc.dropout), dtype=_DTYPES[dtype],
      skip_dead_prompt_work=bool(mc.get('skip_dead_prompt_work', True)))
  fields.update(overrides)
  model = LTDPT(**fields)
  model._validate()  # pylint: disable=protected-access
  return model


def _dummy_inputs(config, image_size: int | Sequence[int] | None):
  arch = vit_lib.arch_from_config(config)
  size = config.data.image_size if image_size is None else image_size
  h, w = (size, size) if isinstance(size, int) else tuple(size)
  ph, pw = arch.patch_size
  if h % ph or w % pw:
    raise ValueError(f'image size {(h, w)} is not a multiple of the patch size {(ph, pw)}.')
  images = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
  saliency = jax.ShapeDtypeStruct((1, (h // ph) * (w // pw)), jnp.float32)
  return images, saliency, (h, w)


@functools.lru_cache(maxsize=64)
def _abstract_params(model: LTDPT, images: jax.ShapeDtypeStruct,
                     saliency: jax.ShapeDtypeStruct) -> dict[str, Any]:
  return jax.eval_shape(lambda i, s: model.init(jax.random.key(0), i, s)['params'], images,
                        saliency)


def abstract_params(config, num_classes: int, image_size=None) -> dict[str, Any]:
  """The parameter tree as ShapeDtypeStructs (jax.eval_shape, nothing allocated; cached)."""
  model = build_model(config, num_classes)
  images, saliency, _ = _dummy_inputs(config, image_size)
  return jax.tree.map(lambda x: x, _abstract_params(model, images, saliency))  # a fresh tree


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


def init_params(config, num_classes: int, rng: jax.Array, image_size=None) -> dict[str, Any]:
  """Initial parameters: prompts/keys/scales/head from `rng`; backbone from config.model.checkpoint.

  The checkpoint (local path, gs:// path or URL; URLs are downloaded and cached by
  `vit.fetch_checkpoint`, checked against config.model.checkpoint_sha256 when set) must hold the
  architecture `config.model.backbone` names (ValueError naming both otherwise); its position
  embedding is resized to `image_size` (default config.data.image_size) and its head/pre_logits
  are dropped. With checkpoint '' the backbone is randomly initialised from `rng` (vit_jax inits).
  """
  model = build_model(config, num_classes)
  images, saliency, size = _dummy_inputs(config, image_size)
  images, saliency = jnp.zeros(images.shape), jnp.zeros(saliency.shape)
  ckpt = config.model.checkpoint
  num_params = _count(abstract_params(config, num_classes, size))
  if not ckpt:
    return dict(_run_init(_init_all, model, num_params, rng, images, saliency))

  # Load and check the backbone first (fail fast), then initialise only the other parameters.
  path = vit_lib.fetch_checkpoint(ckpt, sha256=config.model.get('checkpoint_sha256') or None)
  flat = vit_lib.load_npz(path)
  info = vit_lib.infer_architecture(flat)
  vit_lib.check_architecture(
      info.arch, vit_lib.arch_from_config(config), found_what=f'checkpoint {ckpt!r}',
      expected_what=f'config.model.backbone={config.model.backbone!r}')
  _, loaded = vit_lib.params_from_flat(flat, image_size=size)
  loaded = vit_lib.flatten(vit_lib.backbone_params(loaded))
  want = vit_lib.flatten(abstract_params(config, num_classes, size)['backbone'])
  if loaded.keys() != want.keys():
    raise ValueError(f'checkpoint {ckpt!r} backbone keys differ from the model: missing '
                     f'{sorted(want.keys() - loaded.keys())[:5]}, extra '
                     f'{sorted(loaded.keys() - want.keys())[:5]}.')
  for k, v in want.items():
    if loaded[k].shape != v.shape:
      raise ValueError(f'checkpoint {ckpt!r} array {k!r} has shape {loaded[k].shape}; the model '
                       f'expects {v.shape}.')
  backbone = vit_lib.unflatten({k: jnp.asarray(v) for k, v in loaded.items()})

  params = dict(_run_init(_init_rest, model, num_params, rng, backbone, images, saliency))
  params['backbone'] = backbone
  return params


def _count(tree) -> int:
  return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)))


def parameter_report(config, num_classes: int) -> dict[str, int]:
  """Parameter counts of an experiment config (jax.eval_shape; nothing allocated).

  Keys: fr_prompts, br_prompts, br_keys, bias_scales (alpha + beta), head, backbone, trainable
  and frozen (by config.optim.frozen_patterns over '/'-joined paths), and
  bias_scales_with_gradient: the scales that can get a non-zero gradient (under 'replace' only the
  last block's prompt outputs reach the output, so per-block scales of earlier blocks never do;
  with feature 'cls' no scale does).
  """
  shapes = abstract_params(config, num_classes)
  report = {k: _count(shapes[k]) if k in shapes else 0
            for k in ('fr_prompts', 'br_prompts', 'br_keys')}
  report['bias_scales'] = _count([shapes[k] for k in ('alpha', 'beta') if k in shapes])
  report['head'] = _count(shapes['head'])
  report['backbone'] = _count(shapes['backbone'])
  patterns = [re.compile(p) for p in config.optim.get('frozen_patterns', ('^backbone/',))]
  flat = vit_lib.flatten(shapes)
  frozen = sum(int(np.prod(v.shape)) for k, v in flat.items()
               if any(p.search(k) for p in patterns))
  total = _count(shapes)
  report['trainable'] = total - frozen
  report['frozen'] = frozen

  mc = config.model
  n_layers = vit_lib.arch_from_config(config).num_layers
  carry = mc.prompt_mode == 'carry'
  matters = [(carry and l < n_layers - 1) or (l == n_layers - 1 and mc.feature == 'cls_prompt_mean')
             for l in range(n_layers)]
  with_grad = 0
  if 'alpha' in shapes:
    with_grad += sum(matters) if mc.per_block_scales else int(any(matters))
  if 'beta' in shapes:
    br = matters[n_layers - mc.num_br_blocks:]
    with_grad += sum(br) if mc.per_block_scales else int(any(br))
  report['bias_scales_with_gradient'] = with_grad
  return report
