"""Vision Transformer backbone (Flax linen): modules, presets and architecture facts.

Modules only, no file I/O (as vit_jax `models_vit.py` next to `checkpoint.py`): reading the
official `.npz` files, architecture inference and position-embedding resizing are in
`vit_checkpoint.py`. The module tree is named so that the '/'-joined parameter paths ARE the keys
of the original ImageNet-21k and AugReg checkpoints (`embedding/kernel`, `cls`,
`Transformer/posembed_input/pos_embedding`, `Transformer/encoderblock_{i}/LayerNorm_0/scale`,
`Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value,out}/{kernel,bias}`,
`Transformer/encoderblock_{i}/LayerNorm_2/...`,
`Transformer/encoderblock_{i}/MlpBlock_3/Dense_{0,1}/...`,
`Transformer/encoder_norm/...`, optional `pre_logits/...` and `head/...`).

Architecture facts: `ViTArch` (patch size, width, depth, heads, MLP width; `grid(image_size)`),
the presets `PRESETS` ('ti16', 's16', 'b16', 'l16'; `BACKBONES` adds 'custom'), and
`arch_from_config(config.model)`, the one decoder of `config.model.backbone` / `config.model.vit`.

Architecture (as vit_jax `models_vit.py`): patchify conv, CLS token, learned position embedding
(added to CLS and patches), pre-LN blocks (LayerNorm -> multi-head attention -> residual,
LayerNorm -> MLP with exact (erf) GELU -> residual), final LayerNorm; all LayerNorms eps 1e-6.
Inputs: NHWC float32 images normalised with mean = std = 0.5 (values in [-1, 1]).

Pieces the LT-DPT model uses (`VisionTransformer` methods, callable on a bound/child module):
  * `embed(images) -> (B, 1 + m, D)`: patch tokens with CLS prepended and position embedding added.
  * `block(i, x_q, x_kv=None, bias=None) -> (B, Nq, D)`: block i with queries from `x_q` and
    keys/values from `x_kv` (defaults to `x_q`); `bias` is an additive attention-logit bias
    broadcastable to (B, heads or 1, Nq, Nk), added after the 1/sqrt(head_dim) scaling, before the
    softmax. Only the `x_q` rows get the residual, attention output and MLP: this is how LT-DPT
    skips the query rows of prompts that serve only as keys/values.
  * `norm(x)`: the final `Transformer/encoder_norm` LayerNorm.

Mixed precision: `dtype` is the compute dtype of the convolution, the Dense layers, the attention
matmuls and the LayerNorm outputs; parameters stay float32, LayerNorm statistics are computed in
float32 (Flax's default) and the attention logits and softmax are float32. The residual stream
keeps the promoted dtype (float32 when the position embedding is float32).

Output of `VisionTransformer.__call__`: a dict with
  * `'pre_logits'` (B, D): the final-LayerNorm CLS token (also under `'cls'`), as the issue and
    timm's `forward_head(pre_logits=True)` define it;
  * `'representation'` (B, R): `tanh(Dense(cls))`, only when the checkpoint has a `pre_logits`
    representation layer (the original 2020 i21k files; AugReg files have none);
  * `'logits'` (B, classes) when there is a head: `head(representation)` when the representation
    layer exists (vit_jax `models_vit.py`, the model the weights were trained as; note that current
    timm drops that layer), else `head(pre_logits)`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


class MlpBlock(nn.Module):
  """Dense -> exact (erf) GELU -> Dense (`MlpBlock_3` in the checkpoints)."""
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_kernel_init, bias_init=_bias_init,
                 name='Dense_0')(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(d, dtype=self.dtype, kernel_init=_kernel_init, bias_init=_bias_init,
                    name='Dense_1')(x)


def attention_weights_logits(q: Array, k: Array, bias: Array | None) -> Array:
  """Scaled dot-product logits `q k^T / sqrt(head_dim) + bias` in float32, shape (B, h, Nq, Nk).

  q: (B, Nq, h, d), k: (B, Nk, h, d); bias broadcastable to (B, h or 1, Nq, Nk).
  """
  scale = 1.0 / np.sqrt(q.shape[-1])
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  return logits


class MultiHeadAttention(nn.Module):
  """Multi-head attention with an additive logit bias; sub-layers named query/key/value/out.

  The parameter layout equals Flax's `nn.MultiHeadDotProductAttention` (and so the checkpoints):
  query/key/value kernels (D, heads, head_dim), out kernel (heads, head_dim, D). The attention
  logits (after bias) are sown into the 'intermediates' collection as `attention_logits` (a no-op
  unless that collection is mutable), for tests and visualisation.
  """
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Array | None = None) -> Array:
    d = inputs_q.shape[-1]
    if d % self.num_heads:
      raise ValueError(f'width {d} is not divisible by num_heads={self.num_heads}.')
    head_dim = d // self.num_heads
    dense = lambda name: nn.DenseGeneral((self.num_heads, head_dim), axis=-1, dtype=self.dtype,
                                         kernel_init=_kernel_init, bias_init=nn.initializers.zeros,
                                         name=name)
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
    logits = attention_weights_logits(q, k, bias)
    self.sow('intermediates', 'attention_logits', logits)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', probs, v)
    return nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype, kernel_init=_kernel_init,
                           bias_init=nn.initializers.zeros, name='out')(out)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block whose queries may be a subset of its keys/values.

  `x_q` (B, Nq, D) are the tokens that get the attention output, residual and MLP; `x_kv`
  (B, Nk, D) (default `x_q`) the tokens attended to. Both go through the same `LayerNorm_0`.
  """
  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_q: Array, x_kv: Array | None = None, bias: Array | None = None) -> Array:
    ln0 = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name='LayerNorm_0')
    y_q = ln0(x_q)
    y_kv = y_q if x_kv is None else ln0(x_kv)
    y = MultiHeadAttention(self.num_heads, dtype=self.dtype,
                           name='MultiHeadDotProductAttention_1')(y_q, y_kv, bias)
    x = x_q + y
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name='LayerNorm_2')(x)
    y = MlpBlock(self.mlp_dim, dtype=self.dtype, name='MlpBlock_3')(y)
    return x + y


class Encoder(nn.Module):
  """`Transformer`: position embedding, `encoderblock_{i}` and `encoder_norm` (setup-defined so
  the parent can call the pieces one at a time)."""
  num_layers: int
  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32

  def setup(self):
    self.posembed_input = AddPositionEmbs()
    # A list attribute named `encoderblock` yields the module names encoderblock_0, _1, ...
    self.encoderblock = [Encoder1DBlock(self.mlp_dim, self.num_heads, dtype=self.dtype)
                         for _ in range(self.num_layers)]
    self.encoder_norm = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype)

  def __call__(self, x: Array) -> Array:
    x = self.posembed_input(x)
    for blk in self.encoderblock:
      x = blk(x)
    return self.encoder_norm(x)


class VisionTransformer(nn.Module):
  """ViT with a CLS token (classifier='token'), optional representation layer and head."""
  patch_size: tuple[int, int] | int = 16
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  num_classes: int | None = None
  representation_size: int | None = None
  dtype: Dtype = jnp.float32

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
    self.Transformer = Encoder(self.num_layers, self.mlp_dim, self.num_heads, dtype=self.dtype)
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
    return self.Transformer.posembed_input(x)

  def block(self, i: int, x_q: Array, x_kv: Array | None = None,
            bias: Array | None = None) -> Array:
    """Block i: queries `x_q`, keys/values `x_kv` (default `x_q`), additive logit `bias`."""
    return self.Transformer.encoderblock[i](x_q, x_kv, bias)

  def norm(self, x: Array) -> Array:
    """The final LayerNorm (`Transformer/encoder_norm`)."""
    return self.Transformer.encoder_norm(x)

  def __call__(self, images: Array) -> dict[str, Array]:
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


# The checkpoint I/O that lived here is in `vit_checkpoint.py` (and `fetch.py`); these names stay
# importable from this module (PEP 562), without this module importing the I/O code.
_MOVED = {name: 'ltdpt_jax.models.vit_checkpoint' for name in (
    'from_npz', 'load_npz', 'params_from_flat', 'infer_architecture', 'CheckpointInfo',
    'resize_posemb', 'expected_shapes', 'backbone_params', 'flatten', 'unflatten')}
_MOVED.update(fetch_checkpoint='ltdpt_jax.fetch', default_cache_dir='ltdpt_jax.fetch')
_RENAMED = {'default_cache_dir': 'cache_dir'}


def __getattr__(name: str):
  if name in _MOVED:
    return getattr(importlib.import_module(_MOVED[name]), _RENAMED.get(name, name))
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
