"""The Vision Transformer backbone (Flax linen), as google-research/vision_transformer builds it.

`VisionTransformer` and its pieces (`Encoder`, `Encoder1DBlock`, `MultiHeadAttention` with
`attend`, `MlpBlock` with the exact `gelu`), the presets `PRESETS` and `arch_from_config`, the
one reader of `config.model.backbone`. No file I/O: the `.npz` files are `vit_checkpoint.py`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

Array = jax.Array
Dtype = Any

LN_EPS = 1e-6

# ---------------------------------------------------------------------------------------------
# Architectures.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ViTArch:
  """The shape-defining hyper-parameters of a ViT backbone (no head)."""
  patch_size: tuple[int, int]
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int

  def __post_init__(self):
    patch = self.patch_size
    if isinstance(patch, int):
      patch = (patch, patch)
    object.__setattr__(self, 'patch_size', tuple(int(p) for p in patch))
    if self.hidden_size % self.num_heads:
      raise ValueError(f'ViT hidden_size={self.hidden_size} is not divisible by '
                       f'num_heads={self.num_heads}.')

  def grid(self, image_size: int | Sequence[int]) -> tuple[int, int]:
    """The patch grid (rows, columns) of an image size (int or (H, W)); ValueError unless the
    size is a multiple of the patch size."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    ph, pw = self.patch_size
    if h % ph or w % pw:
      raise ValueError(f'image size {(h, w)} is not a multiple of the patch size {(ph, pw)}.')
    return h // ph, w // pw

  def describe(self) -> str:
    ph, pw = self.patch_size
    patch = f'{ph}' if ph == pw else f'{ph}x{pw}'
    name = preset_name(self)
    return (f'ViT(patch {patch}, width {self.hidden_size}, depth {self.num_layers}, heads '
            f'{self.num_heads}, mlp {self.mlp_dim})' + (f' [{name}]' if name else ''))


PRESETS: dict[str, ViTArch] = {
    'ti16': ViTArch(16, 192, 12, 3, 768),
    's16': ViTArch(16, 384, 12, 6, 1536),
    'b16': ViTArch(16, 768, 12, 12, 3072),
    'l16': ViTArch(16, 1024, 24, 16, 4096),
}


def preset_name(arch: ViTArch) -> str | None:
  """The preset name ('ti16', ...) of `arch`, or None for a custom size."""
  for name, preset in PRESETS.items():
    if preset == arch:
      return name
  return None


CUSTOM = 'custom'
BACKBONES = (*PRESETS, CUSTOM)  # the values config.model.backbone accepts


def arch_from_config(model_config) -> ViTArch:
  """The backbone architecture of a config's model section: the `backbone` preset, or 'custom'
  with the sizes in `vit.{patch_size, hidden_size, num_layers, num_heads, mlp_dim}`."""
  name = model_config.backbone
  if name == CUSTOM:
    v = model_config.vit
    return ViTArch(v.patch_size, v.hidden_size, v.num_layers, v.num_heads, v.mlp_dim)
  if name not in PRESETS:
    raise ValueError(f'config.model.backbone={name!r} is not valid; choose one of {BACKBONES}.')
  return PRESETS[name]


def check_architecture(found: ViTArch, expected: ViTArch, *, found_what: str = 'the checkpoint',
                       expected_what: str = 'the config') -> None:
  """Raises ValueError naming both architectures when `found` differs from `expected`."""
  if found != expected:
    raise ValueError(
        f'Backbone architecture mismatch: {expected_what} asks for {expected.describe()} but '
        f'{found_what} holds {found.describe()}. Use a checkpoint of the requested architecture or '
        f'set config.model.backbone to match the checkpoint (custom sizes: '
        f"config.model.backbone='custom' and config.model.vit.*).")


# ---------------------------------------------------------------------------------------------
# Modules.
# ---------------------------------------------------------------------------------------------

_kernel_init = nn.initializers.xavier_uniform()
_bias_init = nn.initializers.normal(stddev=1e-6)


class AddPositionEmbs(nn.Module):
  """Adds a learned position embedding `pos_embedding` (1, N, D), N = 1 + patches (CLS slot 0)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    shape = (1, x.shape[1], x.shape[2])
    pe = self.param('pos_embedding', nn.initializers.normal(stddev=0.02), shape)
    if pe.shape != shape:  # Only reachable with externally supplied params.
      raise ValueError(f'pos_embedding has shape {pe.shape} but the input gives {shape}; resize it '
                       'with vit_checkpoint.from_npz(..., image_size=...) / resize_posemb.')
    return x + pe


_SQRT_HALF = float(np.sqrt(0.5))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))


def _normal_cdf(x: Array) -> Array:
  """Phi(x) = 0.5 * (1 + erf(x / sqrt(2))), in x's dtype."""
  return 0.5 * (1.0 + jax.lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype)))


@jax.custom_vjp
def gelu(x: Array) -> Array:
  """The exact GELU x * Phi(x) as `0.5 * x * (1 + erf(x / sqrt(2)))`: the formula of the paper
  that defines it (Hendrycks & Gimpel), of PyTorch's `F.gelu` and of earlier `jax.nn.gelu`
  releases, in x's dtype. Two things make it cheaper than `jax.nn.gelu(approximate=False)`
  (the same function, within 1e-6) on XLA:CPU, where the MLP's elementwise work is a large
  part of the train step:

  * the erf form: current `jax.nn.gelu` computes `0.5 * x * erfc(-x / sqrt(2))`, more accurate
    far in the negative tail (where GELU is below 1e-6 in magnitude) but about twice the cost:
    erfc is two polynomial branches, one with an exp, selected elementwise;
  * its own gradient (`jax.custom_vjp`): the backward pass keeps only x (the output of the
    MLP's first Dense layer) and computes `g * (Phi(x) + x * phi(x))` in one elementwise pass;
    autodiff instead computes the derivative's factors in the forward pass and keeps them as
    extra activations (more memory traffic, more memory). The derivative is computed in
    float32.

  The values and derivatives are tested against math.erf in float64 (tests/test_vit.py)."""
  return x * _normal_cdf(x)


def _gelu_fwd(x: Array) -> tuple[Array, Array]:
  return gelu(x), x


def _gelu_bwd(x: Array, g: Array) -> tuple[Array]:
  x32 = x.astype(jnp.float32)
  # Phi(x) as 0.5 * (1 - erf(-x / sqrt2)): the same float32 value as _normal_cdf(x) (erf is odd,
  # XLA's to the bit: tested), written so that XLA does not share the forward's erf(x / sqrt2)
  # with this pass. Shared, that erf is stored as an extra (B, N, mlp_dim) activation by a
  # second forward fusion instead of the GELU being computed in one pass.
  cdf = 0.5 * (1.0 - jax.lax.erf(-x32 * _SQRT_HALF))
  d = cdf + x32 * jnp.exp(-0.5 * x32 * x32) * _INV_SQRT_2PI  # Phi + x phi
  return ((g.astype(jnp.float32) * d).astype(g.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


class MlpBlock(nn.Module):
  """Dense -> exact (erf) GELU (`gelu`) -> Dense (`MlpBlock_3` in the checkpoints)."""
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_kernel_init, bias_init=_bias_init,
                 name='Dense_0')(x)
    x = gelu(x)
    return nn.Dense(d, dtype=self.dtype, kernel_init=_kernel_init, bias_init=_bias_init,
                    name='Dense_1')(x)


# What `attention` accepts, and the remat policies (`remat_policy`, jax.checkpoint_policies):
# 'dots_with_no_batch_dims' saves the outputs of the weight matmuls (Q/K/V/out projections, MLP)
# and recomputes the attention matmuls, LayerNorms, softmax and GELU; 'dots' also saves the
# batched attention matmuls (QK^T logits, PV); 'nothing' saves only each block's input and
# recomputes the whole block (about one more forward in FLOPs).
ATTENTIONS = ('auto', 'xla', 'cudnn')
REMAT_POLICIES = {
    'dots_with_no_batch_dims': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'dots': jax.checkpoint_policies.dots_saveable,
    'nothing': jax.checkpoint_policies.nothing_saveable,
}
# The logit added on padded keys: exp(MASK_VALUE - max) is exactly 0 in float32 and bf16, and it
# is finite, so no row becomes -inf - (-inf) (every row keeps its real keys).
MASK_VALUE = -1e9
CUDNN_PAD_MULTIPLE = 8
_HALF_DTYPES = (jnp.bfloat16, jnp.float16)
_LOGGED: set[str] = set()


def _log_once(message: str) -> None:
  if message not in _LOGGED:
    _LOGGED.add(message)
    logging.info('%s', message)


def padded_length(n: int, multiple: int) -> int:
  """n rounded up to a multiple of `multiple` (n itself for multiple <= 1)."""
  return n if multiple <= 1 else -(-n // multiple) * multiple


def pad_attention(q: Array, k: Array, v: Array, bias: Array | None, multiple: int
                  ) -> tuple[Array, Array, Array, Array | None]:
  """Queries and keys/values padded with zero rows to a multiple of `multiple`, and the bias
  (B or 1, heads or 1, Tq, Tk) that masks the padded keys (`MASK_VALUE`) and is 0 on every
  other padded entry. q (B, Nq, h, d), k and v (B, Nk, h, d); bias broadcastable to
  (B, h, Nq, Nk) or None. Unchanged when nothing needs padding. The padded query rows attend to
  the real keys like any row (finite, never read) and are dropped by the caller.
  """
  nq, nk = q.shape[1], k.shape[1]
  tq, tk = padded_length(nq, multiple), padded_length(nk, multiple)
  if (tq, tk) == (nq, nk):
    return q, k, v, bias
  rows = lambda x, t: jnp.pad(x, ((0, 0), (0, t - x.shape[1]), (0, 0), (0, 0)))
  q, k, v = rows(q, tq), rows(k, tk), rows(v, tk)
  key_mask = None
  if tk > nk:
    key_mask = jnp.where(jnp.arange(tk) < nk, 0.0, MASK_VALUE).astype(jnp.float32)
    key_mask = key_mask[None, None, None, :]
  if bias is None:
    if key_mask is not None:
      bias = jnp.broadcast_to(key_mask, (1, 1, tq, tk))
    return q, k, v, bias
  bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
  bias = jnp.broadcast_to(bias, bias.shape[:2] + (nq, nk)).astype(jnp.float32)
  bias = jnp.pad(bias, ((0, 0), (0, 0), (0, tq - nq), (0, tk - nk)))
  return q, k, v, bias if key_mask is None else bias + key_mask


_TARGET_PLATFORMS: list[str] = []  # the stack of `compiling_for`


@contextlib.contextmanager
def compiling_for(platform: str):
  """Within: the model is traced for `platform` ('cpu' | 'gpu' | 'tpu') instead of the
  default backend. For ahead-of-time compiles for devices this process does not run on (the
  benchmark's TPU memory report compiles for a TPU topology on a CPU host): the choices that
  depend on the platform (`attend`'s 'auto', how `rematerialised` orders the recomputation)
  then match what a run on that platform traces. When the platform changes, JAX's trace
  caches are cleared on entry and exit: a trace cached for the other platform would otherwise
  be reused."""
  changes = platform != target_platform()
  _TARGET_PLATFORMS.append(platform)
  if changes:
    jax.clear_caches()
  try:
    yield
  finally:
    _TARGET_PLATFORMS.pop()
    if changes:
      jax.clear_caches()


def target_platform() -> str:
  """The platform the model is traced for: the innermost `compiling_for`, else
  `jax.default_backend()`."""
  return _TARGET_PLATFORMS[-1] if _TARGET_PLATFORMS else jax.default_backend()


def _cudnn_unavailable(dtype) -> str | None:
  """Why cuDNN fused attention cannot run here (None when it may: the shape is checked by
  jax when the call is traced)."""
  if target_platform() != 'gpu':
    return f'the backend is {target_platform()!r}, not an NVIDIA GPU'
  if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _HALF_DTYPES]:
    return f'the compute dtype is {jnp.dtype(dtype).name} (cuDNN needs bfloat16 or float16)'
  return None


def attend(q: Array, k: Array, v: Array, bias: Array | None, *, implementation: str = 'xla',
           pad_to: int = 0, sow=None) -> Array:
  """softmax(q k^T / sqrt(d) + bias) v per head: q (B, Nq, h, d), k and v (B, Nk, h, d), bias
  broadcastable to (B, h or 1, Nq, Nk) -> (B, Nq, h, d) in v's dtype.

  implementation 'xla': float32 logits and softmax (`attention_weights_logits`); `sow(name,
  value)` (optional) receives the unpadded 'attention_logits' and 'attention_probs'
  (B, h, Nq, Nk). 'cudnn': `jax.nn.dot_product_attention(..., implementation='cudnn')` with
  the bias cast to q's dtype (cuDNN computes the softmax in float32); nothing is sown. 'auto':
  cuDNN where it runs (see `_cudnn_unavailable`, plus the shape checks jax makes while tracing
  the call), else 'xla', said once in the log. (A refusal later, when XLA builds the cuDNN
  graph, is an error in either mode: use 'xla' there.)

  Padding (`pad_attention`): to a multiple of `pad_to` (> 1) on either path; the cuDNN path pads
  to a multiple of `CUDNN_PAD_MULTIPLE` when `pad_to` is 0 or 1.
  """
  if implementation not in ATTENTIONS:
    raise ValueError(f'attention={implementation!r} is not valid; choose one of {ATTENTIONS}.')
  if implementation != 'xla':
    reason = _cudnn_unavailable(q.dtype)
    if reason is None:
      try:
        return _attend_cudnn(q, k, v, bias, pad_to)
      except (NotImplementedError, ValueError, RuntimeError) as e:
        if implementation == 'cudnn':
          raise ValueError(f"attention='cudnn' cannot run this attention (q {q.shape} "
                           f'{q.dtype}, k {k.shape}): {e}') from e
        reason = f'cuDNN refused the shapes (q {q.shape}, k {k.shape}): {e}'
    elif implementation == 'cudnn':
      raise ValueError(f"attention='cudnn' cannot run: {reason}. Use attention='auto' or 'xla'.")
    _log_once(f"attention='auto': the XLA attention path is used because {reason}.")
  nq, nk = q.shape[1], k.shape[1]
  q, k, v, bias = pad_attention(q, k, v, bias, pad_to)
  logits = attention_weights_logits(q, k, bias)
  # softmax(logits) v as (e v) / sum(e) with e = exp(logits - max): the normalisation divides the
  # (B, h, Nq, d) output instead of the (B, h, Nq, Nk) probabilities (the max is a constant of
  # the softmax, hence stop_gradient). Equal to softmax-then-matmul up to float32 rounding.
  e = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  total = e.sum(axis=-1, keepdims=True)
  if sow is not None:  # unused (and so not computed) unless the collection is mutable
    probs = e / total
    padded = logits.shape[2:] != (nq, nk)
    sow('attention_logits', logits[:, :, :nq, :nk] if padded else logits)
    sow('attention_probs', probs[:, :, :nq, :nk] if padded else probs)
  b, h, tq, tk = e.shape
  # One batch dimension (B * heads) with the heads leading: XLA:CPU runs these batched matmuls
  # faster than with the two batch dimensions (b, h) of 'bhqk,bkhd->bqhd'; the result is the same.
  out = jnp.einsum('nqk,nkd->nqd', e.astype(v.dtype).reshape(b * h, tq, tk), _heads_major(v),
                   preferred_element_type=jnp.float32)
  out = (out.reshape(b, h, tq, -1) / total).astype(v.dtype).transpose(0, 2, 1, 3)
  return out[:, :nq] if out.shape[1] != nq else out


def _heads_major(x: Array) -> Array:
  """(B, N, h, d) -> (B * h, N, d)."""
  b, n, h, d = x.shape
  return x.transpose(0, 2, 1, 3).reshape(b * h, n, d)


def _attend_cudnn(q: Array, k: Array, v: Array, bias: Array | None, pad_to: int) -> Array:
  nq = q.shape[1]
  multiple = pad_to if pad_to > 1 else CUDNN_PAD_MULTIPLE
  q, k, v, bias = pad_attention(q, k, v, bias, multiple)
  if bias is not None:
    # cuDNN wants the full (T, S); the heads are broadcast too: (1 | B, heads, T, S) are the
    # bias shapes jax's own cuDNN tests differentiate. Small here: the mask alone is
    # (1, heads, T, S), and the saliency bias covers only the rows that have it (in the default
    # layout the last block's 24 padded query rows).
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    bias = jnp.broadcast_to(bias, (bias.shape[0], q.shape[2], q.shape[1], k.shape[1]))
    bias = bias.astype(q.dtype)
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, implementation='cudnn')
  return out[:, :nq] if out.shape[1] != nq else out


def matrix_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None,
                       preferred_element_type=None) -> Array:
  """`jax.lax.dot_general` for a DenseGeneral without batch dimensions, computed as one matrix
  product: lhs (..., c1, .., cn) and rhs (c1, .., cn, f1, .., fm), contracting lhs's trailing
  dims with rhs's leading dims, are reshaped (free: row-major bitcasts) to (N, C) and (C, F),
  and the product back to (..., f1, .., fm). The same result as `lax.dot_general`.

  Why: the attention's query/key/value kernels are (D, heads, head_dim) and the out kernel
  (heads, head_dim, D). Given those 3-D kernels, XLA:CPU's dot canonicalisation copies them
  transposed before the backward pass's matrix products, in every train step (four copies per
  block); a 2-D kernel goes to the matmul as it is (Eigen takes either orientation). Any other
  dimension numbers go to `lax.dot_general` unchanged."""
  (lc, rc), (lb, rb) = dimension_numbers
  lc, rc = tuple(lc), tuple(rc)
  n_c = len(lc)
  if (lb or rb or lc != tuple(range(lhs.ndim - n_c, lhs.ndim)) or rc != tuple(range(n_c))):
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  free, features = lhs.shape[:lhs.ndim - n_c], rhs.shape[n_c:]
  c = int(np.prod(rhs.shape[:n_c]))
  out = jax.lax.dot(lhs.reshape(-1, c), rhs.reshape(c, -1), precision=precision,
                    preferred_element_type=preferred_element_type)
  return out.reshape(free + features)


def attention_weights_logits(q: Array, k: Array, bias: Array | None) -> Array:
  """Scaled dot-product logits `q k^T / sqrt(head_dim) + bias` in float32, shape (B, h, Nq, Nk).

  q: (B, Nq, h, d), k: (B, Nk, h, d); bias broadcastable to (B, h or 1, Nq, Nk).
  """
  # The scale multiplies q (Nq x d numbers) rather than the logits (Nq x Nk); exact where it is
  # a power of two (head_dim 16, 64: ViT-Ti/S/B/L).
  scale = 1.0 / np.sqrt(q.shape[-1])
  b, nq, h, _ = q.shape
  logits = jnp.einsum('nqd,nkd->nqk', _heads_major(q * jnp.asarray(scale, q.dtype)),
                      _heads_major(k), preferred_element_type=jnp.float32)
  logits = logits.reshape(b, h, nq, k.shape[1])
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  return logits


class MultiHeadAttention(nn.Module):
  """Multi-head attention with an additive logit bias; sub-layers named query/key/value/out.

  The parameter layout equals Flax's `nn.MultiHeadDotProductAttention` (and so the checkpoints):
  query/key/value kernels (D, heads, head_dim), out kernel (heads, head_dim, D). The attention
  logits (after bias) and their softmax are sown into the 'intermediates' collection as
  `attention_logits` and `attention_probs` (no-ops unless that collection is mutable, as in the
  train step: training pays nothing), for tests and the maps of `ltdpt_jax.maps`: on the XLA
  path only (`attention` 'xla', or 'auto' where it falls back), unpadded, (B, h, Nq, Nk).
  `attention`, `pad_attention_to`: see `attend`.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  attention: str = 'xla'
  pad_attention_to: int = 0

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Array | None = None) -> Array:
    d = inputs_q.shape[-1]
    if d % self.num_heads:
      raise ValueError(f'width {d} is not divisible by num_heads={self.num_heads}.')
    head_dim = d // self.num_heads
    dense = lambda name: nn.DenseGeneral((self.num_heads, head_dim), axis=-1, dtype=self.dtype,
                                         kernel_init=_kernel_init, bias_init=nn.initializers.zeros,
                                         dot_general=matrix_dot_general, name=name)
    q = dense('query')(inputs_q)
    k = dense('key')(inputs_kv)
    v = dense('value')(inputs_kv)
    if bias is not None:
      expect = (q.shape[0], self.num_heads, q.shape[1], k.shape[1])
      try:
        jnp.broadcast_shapes(bias.shape, expect)
      except ValueError:
        raise ValueError(f'attention bias of shape {bias.shape} does not broadcast to '
                         f'(B, heads, Nq, Nk) = {expect}.') from None
    out = attend(q, k, v, bias, implementation=self.attention, pad_to=self.pad_attention_to,
                 sow=lambda name, value: self.sow('intermediates', name, value))
    return nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype, kernel_init=_kernel_init,
                           bias_init=nn.initializers.zeros, dot_general=matrix_dot_general,
                           name='out')(out)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block whose queries may be a subset of its keys/values.

  `x_q` (B, Nq, D) are the tokens that get the attention output, residual and MLP; `x_kv`
  (B, Nk, D) (default `x_q`) the tokens attended to. `q_extra` / `kv_extra` (optional) are rows
  appended to the queries / keys inside the block. Both go through the same `LayerNorm_0`, once
  per distinct array (`x_kv` given as `x_q` itself, or `kv_extra` as `q_extra` itself, is
  normalised once).
  """
  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  attention: str = 'xla'
  pad_attention_to: int = 0

  @nn.compact
  def __call__(self, x_q: Array, x_kv: Array | None = None, bias: Array | None = None,
               q_extra: Array | None = None, kv_extra: Array | None = None) -> Array:
    ln0 = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name='LayerNorm_0')
    # LayerNorm is row-wise, so each distinct set of rows is normalised once and the normalised
    # parts are concatenated: x_kv given as the very array x_q (LT-DPT's image rows are both its
    # queries and its keys) and kv_extra as the very array q_extra (its prompt rows) are not
    # normalised twice. The same values as normalising the concatenations.
    y_q = ln0(x_q)
    y_kv = y_q if x_kv is None or x_kv is x_q else ln0(x_kv)
    y_kv_extra = None if kv_extra is None else ln0(kv_extra)
    if kv_extra is not None:
      y_kv = jnp.concatenate([y_kv, y_kv_extra], axis=1)
    if q_extra is not None:
      x_q = jnp.concatenate([x_q, q_extra], axis=1)
      y_q = jnp.concatenate([y_q, y_kv_extra if q_extra is kv_extra else ln0(q_extra)], axis=1)
      if x_kv is None and kv_extra is None:  # keys default to the queries, their extra rows too
        y_kv = y_q
    y = MultiHeadAttention(self.num_heads, dtype=self.dtype, attention=self.attention,
                           pad_attention_to=self.pad_attention_to,
                           name='MultiHeadDotProductAttention_1')(y_q, y_kv, bias)
    x = x_q + y
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name='LayerNorm_2')(x)
    y = MlpBlock(self.mlp_dim, dtype=self.dtype, name='MlpBlock_3')(y)
    return x + y


def _call_block(block: nn.Module, *args):
  return block(*args)


def _after(tree, cotangent):
  """`tree` with a data dependence on `cotangent` that changes no value: each floating leaf
  plus 0 * (one element of the cotangent). XLA keeps float `0 * x` (it is NaN for x = inf), so
  no compiler can compute what depends on these leaves before the cotangent exists (an
  `optimization_barrier` does not survive XLA:CPU's passes)."""
  leaf = next((x for x in jax.tree.leaves(cotangent) if x is not None and x.size), None)
  if leaf is None:
    return tree
  zero = 0.0 * leaf.reshape(-1)[0].astype(jnp.float32)
  return jax.tree.map(
      lambda x: x + zero.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


@functools.lru_cache(maxsize=None)
def rematerialised(policy_name: str):
  """f(block, *args) = block(*args), rematerialised in the backward pass: the forward keeps only
  what `REMAT_POLICIES[policy_name]` saves (`jax.checkpoint`), and the backward pass recomputes
  the rest only once the cotangent of the block's output exists.

  That last part is what plain `jax.checkpoint` leaves to the compiler: the recomputation
  depends only on saved values, so a scheduler may run every block's recomputation right after
  the forward pass and keep them all live (XLA:CPU does: remat then costs FLOPs and saves no
  memory). Here the saved values are made to depend on the incoming cotangent, so block l is
  recomputed after block l + 1's backward: on a CPU by a data dependence (`_after`: XLA:CPU
  drops optimization barriers before it schedules), elsewhere by an `optimization_barrier` over
  the saved values and the cotangent (free; a data dependence would cost a pass over every
  saved value on an accelerator). A `nn.custom_vjp` whose forward is `jax.vjp` of the
  checkpointed pure block (its vjp function is a pytree of exactly the saved values) and whose
  backward applies that vjp after the tie; the same values and gradients as without remat
  (tested).
  """
  policy = REMAT_POLICIES[policy_name]

  def forward(block, *args):
    module, variables = block.unbind()
    pure = jax.checkpoint(lambda v, *a: module.apply(v, *a), policy=policy)
    return jax.vjp(pure, variables, *args)

  def backward(vjp_fn, cotangent):
    if target_platform() == 'cpu':
      vjp_fn = _after(vjp_fn, cotangent)
    else:  # GPU/TPU schedulers keep the barrier; it costs nothing, unlike a pass over the values
      vjp_fn, cotangent = jax.lax.optimization_barrier((vjp_fn, cotangent))
    return vjp_fn(cotangent)  # (variables' cotangents, *the arguments' cotangents)

  return nn.custom_vjp(_call_block, forward_fn=forward, backward_fn=backward)


class Encoder(nn.Module):
  """`Transformer`: position embedding, `encoderblock_{i}` and `encoder_norm` (setup-defined so
  the parent can call the pieces one at a time: `run_block`). With `remat`, each block is
  rematerialised in the backward pass under `REMAT_POLICIES[remat_policy]` (`rematerialised`;
  the parameter names do not change)."""
  num_layers: int
  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  attention: str = 'xla'
  pad_attention_to: int = 0
  remat: bool = False
  remat_policy: str = 'dots_with_no_batch_dims'

  def setup(self):
    if self.remat and self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'remat_policy={self.remat_policy!r} is not valid; choose one of '
                       f'{tuple(REMAT_POLICIES)}.')
    self.posembed_input = AddPositionEmbs()
    # A list attribute named `encoderblock` yields the module names encoderblock_0, _1, ...
    self.encoderblock = [Encoder1DBlock(self.mlp_dim, self.num_heads, dtype=self.dtype,
                                        attention=self.attention,
                                        pad_attention_to=self.pad_attention_to)
                         for _ in range(self.num_layers)]
    self.encoder_norm = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype)

  def run_block(self, i: int, *args) -> Array:
    """Block i on (x_q, x_kv, bias, q_extra, kv_extra) (see `Encoder1DBlock`), rematerialised
    in the backward pass when `remat` -- except when 'intermediates' is mutable (looking inside
    the model, `ltdpt_jax.maps`: what a block sows cannot leave a custom_vjp), where it runs
    as is, with the same values."""
    block = self.encoderblock[i]
    if not self.remat or self.is_mutable_collection('intermediates'):
      return block(*args)
    # Keys given as the query array itself: say so with x_kv=None, which survives the custom_vjp
    # (the block then normalises those rows once) -- the same keys unless q_extra rows come
    # without kv_extra rows (x_kv=None would add q_extra to the keys).
    q_extra, kv_extra = (*args[3:5], None, None)[:2]
    if len(args) > 1 and args[1] is args[0] and (q_extra is None or kv_extra is not None):
      args = (args[0], None, *args[2:])
    return rematerialised(self.remat_policy)(block, *args)

  def __call__(self, x: Array) -> Array:
    x = self.posembed_input(x)
    for i in range(self.num_layers):
      x = self.run_block(i, x, None, None, None, None)
    return self.encoder_norm(x)


class VisionTransformer(nn.Module):
  """ViT with a CLS token (classifier='token'), optional representation layer and head.

  As vit_jax's `models_vit.py`: patchify convolution, CLS token, learned position embedding (on
  CLS and patches), pre-LN blocks (LayerNorm -> attention -> residual, LayerNorm -> MLP with the
  exact GELU -> residual), final LayerNorm, all LayerNorms eps 1e-6; inputs NHWC normalised with
  mean = std = 0.5. The modules are named so that the '/'-joined parameter paths are the keys of
  the official `.npz` files (`embedding/kernel`, `cls`, `Transformer/posembed_input/...`,
  `Transformer/encoderblock_{i}/...`, `Transformer/encoder_norm/...`, `pre_logits/...`,
  `head/...`).

  `dtype` is the compute dtype of the convolution, the Dense layers, the attention matmuls and
  the LayerNorm outputs; LayerNorm statistics, attention logits and softmax are float32, and so
  is the residual stream whatever the parameters' dtype (as PyTorch autocast keeps it).
  `attention`, `pad_attention_to`: see `attend`; `remat`, `remat_policy`: see `Encoder`.

  LT-DPT calls the pieces one at a time: `embed`, `block` (queries may be a subset of the keys)
  and `norm`.
  """
  patch_size: tuple[int, int] | int = 16
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  num_classes: int | None = None
  representation_size: int | None = None
  dtype: Dtype = jnp.float32
  attention: str = 'xla'
  pad_attention_to: int = 0
  remat: bool = False
  remat_policy: str = 'dots_with_no_batch_dims'

  @property
  def arch(self) -> ViTArch:
    return ViTArch(self.patch_size, self.hidden_size, self.num_layers, self.num_heads,
                   self.mlp_dim)

  def setup(self):
    patch = self.arch.patch_size
    self.embedding = nn.Conv(self.hidden_size, patch, strides=patch, padding='VALID',
                             dtype=self.dtype, name='embedding')
    self.cls = self.param('cls', nn.initializers.zeros, (1, 1, self.hidden_size))
    # pylint: disable-next=invalid-name
    self.Transformer = Encoder(self.num_layers, self.mlp_dim, self.num_heads, dtype=self.dtype,
                               attention=self.attention, pad_attention_to=self.pad_attention_to,
                               remat=self.remat, remat_policy=self.remat_policy)
    if self.representation_size:
      self.pre_logits = nn.Dense(self.representation_size, dtype=self.dtype,
                                 kernel_init=_kernel_init, name='pre_logits')
    if self.num_classes:
      self.head = nn.Dense(self.num_classes, dtype=self.dtype,
                           kernel_init=nn.initializers.zeros, name='head')

  def embed(self, images: Array) -> Array:
    """NHWC images (normalised, mean = std = 0.5) -> (B, 1 + m, D): CLS first, posemb added."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'images must be (B, H, W, 3) NHWC; got shape {images.shape}.')
    ph, pw = self.arch.patch_size
    if images.shape[1] % ph or images.shape[2] % pw:
      raise ValueError(f'image size {images.shape[1:3]} is not a multiple of the patch size '
                       f'{(ph, pw)}.')
    x = self.embedding(images)
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    cls = jnp.broadcast_to(self.cls.astype(x.dtype), (b, 1, d))
    x = jnp.concatenate([cls, x], axis=1)
    # The residual stream is float32 whatever the compute dtype and the parameters' dtype.
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return self.Transformer.posembed_input(x)

  def block(self, i: int, x_q: Array, x_kv: Array | None = None, bias: Array | None = None,
            q_extra: Array | None = None, kv_extra: Array | None = None) -> Array:
    """Block i -> (B, Nq, D): queries `x_q` (+ `q_extra` rows), keys/values `x_kv` (default
    `x_q`; + `kv_extra` rows), `bias` added to the logits after the 1/sqrt(head_dim) scaling.
    Only the query rows get the residual, attention output and MLP: this is how LT-DPT skips
    the rows of prompts that serve only as keys. The extra rows are concatenated inside the
    block, so under remat only the parts are kept for the backward pass."""
    return self.Transformer.run_block(i, x_q, x_kv, bias, q_extra, kv_extra)

  def norm(self, x: Array) -> Array:
    """The final LayerNorm (`Transformer/encoder_norm`)."""
    return self.Transformer.encoder_norm(x)

  def __call__(self, images: Array) -> dict[str, Array]:
    """{'pre_logits' (B, D): the final-LN CLS token (also 'cls'); 'representation' (B, R):
    tanh(Dense(cls)), only with a representation layer (the original 2020 i21k files have one);
    'logits' (B, classes) with a head: head(representation) where that layer exists (the model
    the weights were trained as), else head(pre_logits)}."""
    x = self.embed(images)
    for i in range(self.num_layers):
      x = self.block(i, x)
    cls = self.norm(x[:, 0])
    out = {'cls': cls, 'pre_logits': cls}
    head_in = cls
    if self.representation_size:
      head_in = out['representation'] = jnp.tanh(self.pre_logits(cls))
    if self.num_classes:
      out['logits'] = self.head(head_in)
    return out


def count_params(tree: Any) -> int:
  """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)))
