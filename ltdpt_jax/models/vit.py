"""Vision Transformer backbone (Flax linen) loading the official google-research ViT `.npz` files.

The module tree is named so that the '/'-joined parameter paths ARE the keys of the original
ImageNet-21k and AugReg checkpoints (`embedding/kernel`, `cls`,
`Transformer/posembed_input/pos_embedding`, `Transformer/encoderblock_{i}/LayerNorm_0/scale`,
`Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value,out}/{kernel,bias}`,
`Transformer/encoderblock_{i}/LayerNorm_2/...`,
`Transformer/encoderblock_{i}/MlpBlock_3/Dense_{0,1}/...`,
`Transformer/encoder_norm/...`, optional `pre_logits/...` and `head/...`). Loading is therefore a
reshape-free mapping from the flat npz dict to the nested parameter dict (files saved with the
Linen per-class counters, `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`, are renamed
to the pre-Linen names on load).

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

Posemb resizing (`resize_posemb`): the CLS slot is split off, the grid is resized with bilinear
interpolation with aligned corners, exactly what vit_jax's `interpolate_posembed`
(`scipy.ndimage.zoom(order=1)`) computes, implemented in numpy (scipy is not a dependency).

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
import hashlib
import io
import logging
import os
import re
import tempfile
import urllib.parse
import urllib.request
from typing import Any, Mapping, Sequence

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


def arch_from_config(config) -> ViTArch:
  """The backbone architecture a config asks for: `config.model.backbone` preset, or 'custom'
  with the sizes in `config.model.vit.{patch_size, hidden_size, num_layers, num_heads, mlp_dim}`."""
  name = config.model.backbone
  if name == 'custom':
    v = config.model.vit
    return ViTArch(v.patch_size, v.hidden_size, v.num_layers, v.num_heads, v.mlp_dim)
  if name not in PRESETS:
    raise ValueError(f'config.model.backbone={name!r} is not valid; choose one of '
                     f"{sorted(PRESETS) + ['custom']}.")
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
                       'with from_npz(..., image_size=...) / resize_posemb.')
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


# ---------------------------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------------------------

_LINEN_RENAMES = {  # Linen per-class counters -> the pre-Linen names of the released files.
    'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
    'LayerNorm_1': 'LayerNorm_2',
    'MlpBlock_0': 'MlpBlock_3',
}
_BLOCK_RE = re.compile(r'^Transformer/encoderblock_(\d+)/')


def _is_url(path: str) -> bool:
  return urllib.parse.urlparse(str(path)).scheme in ('http', 'https', 'file')


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      h.update(chunk)
  return h.hexdigest()


def default_cache_dir() -> str:
  """$LTDPT_CACHE_DIR, else $XDG_CACHE_HOME/ltdpt_jax, else ~/.cache/ltdpt_jax."""
  if os.environ.get('LTDPT_CACHE_DIR'):
    return os.environ['LTDPT_CACHE_DIR']
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'ltdpt_jax')


def fetch_checkpoint(url_or_path: str, sha256: str | None = None,
                     cache_dir: str | None = None) -> str:
  """Returns a readable path for a checkpoint given as a local path, gs:// path or URL.

  * http(s):// and file:// URLs are downloaded once into `cache_dir` (default
    `default_cache_dir()`) under `<sha1(url)[:12]>_<basename>`, written to a temporary file and
    renamed, so concurrent processes never read a partial file. A cached file is reused.
  * Local paths and other schemes (gs://, opened by `etils.epath` in `load_npz`) are returned as
    they are.
  * When `sha256` is given, the (downloaded or local) file's SHA-256 must match, else ValueError
    naming both digests (a mismatching download is deleted).
  """
  url_or_path = str(url_or_path)
  sha256 = (sha256 or '').lower() or None
  if not _is_url(url_or_path):
    if sha256 and '://' not in url_or_path:
      if not os.path.exists(url_or_path):
        raise FileNotFoundError(f'Checkpoint {url_or_path!r} does not exist.')
      got = _sha256(url_or_path)
      if got != sha256:
        raise ValueError(f'Checkpoint {url_or_path!r} has SHA-256 {got}, expected {sha256}.')
    return url_or_path
  cache_dir = cache_dir or default_cache_dir()
  os.makedirs(cache_dir, exist_ok=True)
  name = os.path.basename(urllib.parse.urlparse(url_or_path).path) or 'checkpoint.npz'
  tag = hashlib.sha1(url_or_path.encode()).hexdigest()[:12]
  dest = os.path.join(cache_dir, f'{tag}_{name}')
  if os.path.exists(dest):
    if sha256:
      got = _sha256(dest)
      if got != sha256:
        raise ValueError(f'Cached checkpoint {dest} (from {url_or_path}) has SHA-256 {got}, '
                         f'expected {sha256}; delete it to download again.')
    return dest
  fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f'.{name}.', suffix='.part')
  h = hashlib.sha256()
  try:
    with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(url_or_path) as resp:  # noqa: S310
      for chunk in iter(lambda: resp.read(1 << 22), b''):
        h.update(chunk)
        out.write(chunk)
    got = h.hexdigest()
    if sha256 and got != sha256:
      raise ValueError(f'Downloaded checkpoint {url_or_path} has SHA-256 {got}, expected {sha256}.')
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  logging.info('Downloaded %s to %s (sha256 %s).', url_or_path, dest, h.hexdigest())
  return dest


def load_npz(path: str) -> dict[str, np.ndarray]:
  """Reads a ViT `.npz` into a flat {'a/b/c': float32 array} dict (Linen names renamed).

  `path`: local path, or anything `etils.epath` opens (gs://...). URLs: use `fetch_checkpoint`.
  """
  path = str(path)
  if _is_url(path):
    path = fetch_checkpoint(path)
  if '://' in path:
    from etils import epath  # pylint: disable=g-import-not-at-top
    with epath.Path(path).open('rb') as f:
      data = np.load(io.BytesIO(f.read()), allow_pickle=False)
  else:
    if not os.path.exists(path):
      raise FileNotFoundError(f'ViT checkpoint {path!r} does not exist.')
    data = np.load(path, allow_pickle=False)
  with data:
    flat = {k: np.asarray(data[k]) for k in data.files}
  out = {}
  for key, value in flat.items():
    parts = key.split('/')
    parts = [_LINEN_RENAMES.get(p, p) if _BLOCK_RE.match(key) else p for p in parts]
    out['/'.join(parts)] = value.astype(np.float32) if value.dtype != np.float32 else value
  return out


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
  """What `infer_architecture` reads off a checkpoint's array shapes."""
  arch: ViTArch
  posemb_grid: tuple[int, int]
  representation_size: int | None
  num_classes: int | None


def _shape_of(flat: Mapping[str, np.ndarray], key: str, ndim: int) -> tuple[int, ...]:
  if key not in flat:
    raise KeyError(f'ViT checkpoint is missing array {key!r} (found keys such as '
                   f'{sorted(flat)[:6]}); is this an official vision_transformer .npz?')
  shape = tuple(flat[key].shape)
  if len(shape) != ndim:
    raise ValueError(f'ViT checkpoint array {key!r} has shape {shape}; expected {ndim} '
                     'dimensions.')
  return shape


def infer_architecture(flat: Mapping[str, np.ndarray]) -> CheckpointInfo:
  """Infers the architecture from the array shapes of a flat checkpoint dict."""
  ph, pw, cin, width = _shape_of(flat, 'embedding/kernel', 4)
  if cin != 3:
    raise ValueError(f"'embedding/kernel' has shape {(ph, pw, cin, width)}; expected 3 input "
                     'channels (RGB).')
  blocks = sorted({int(m.group(1)) for k in flat if (m := _BLOCK_RE.match(k))})
  if not blocks:
    raise KeyError("ViT checkpoint has no 'Transformer/encoderblock_{i}/...' arrays.")
  if blocks != list(range(len(blocks))):
    missing = sorted(set(range(max(blocks) + 1)) - set(blocks))
    raise KeyError(f'ViT checkpoint is missing Transformer/encoderblock_{missing[0]}/... '
                   f'(blocks found: {blocks}).')
  qshape = _shape_of(flat, 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel',
                     3)
  heads = qshape[1]
  mlp = _shape_of(flat, 'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel', 2)[1]
  pe = _shape_of(flat, 'Transformer/posembed_input/pos_embedding', 3)
  n = pe[1] - 1
  g = int(round(np.sqrt(n)))
  if g * g != n:
    raise ValueError(f"'Transformer/posembed_input/pos_embedding' has shape {pe}: {n} patch slots "
                     'is not a square grid (plus one CLS slot).')
  rep = flat['pre_logits/kernel'].shape[-1] if 'pre_logits/kernel' in flat else None
  num_classes = flat['head/kernel'].shape[-1] if 'head/kernel' in flat else None
  arch = ViTArch((ph, pw), width, len(blocks), heads, mlp)
  return CheckpointInfo(arch, (g, g), rep, num_classes)


def resize_posemb(posemb: np.ndarray, new_grid: tuple[int, int] | int) -> np.ndarray:
  """Resizes a (1, 1 + g*g, D) position embedding to (1, 1 + nh*nw, D).

  The CLS slot is kept as is; the grid is resized by separable linear interpolation with aligned
  corners (output i samples input i * (g - 1) / (n - 1)), i.e. vit_jax `interpolate_posembed`
  (`scipy.ndimage.zoom(order=1)`), computed in float64 numpy.
  """
  if isinstance(new_grid, int):
    new_grid = (new_grid, new_grid)
  posemb = np.asarray(posemb)
  n = posemb.shape[1] - 1
  g = int(round(np.sqrt(n)))
  if g * g != n:
    raise ValueError(f'posemb of shape {posemb.shape} has no square grid.')
  if (g, g) == tuple(new_grid):
    return posemb
  cls, grid = posemb[:, :1], posemb[0, 1:].reshape(g, g, -1).astype(np.float64)

  def interp(a: np.ndarray, n_new: int, axis: int) -> np.ndarray:
    n_old = a.shape[axis]
    c = np.arange(n_new) * ((n_old - 1) / (n_new - 1)) if n_new > 1 else np.zeros(1)
    i0 = np.clip(np.floor(c).astype(int), 0, n_old - 1)
    i1 = np.minimum(i0 + 1, n_old - 1)
    w = (c - i0).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
    return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i1, axis=axis) * w

  grid = interp(interp(grid, new_grid[0], 0), new_grid[1], 1)
  grid = grid.reshape(1, new_grid[0] * new_grid[1], -1).astype(posemb.dtype)
  return np.concatenate([cls, grid], axis=1)


def _grid_for(image_size: int | Sequence[int], patch: tuple[int, int]) -> tuple[int, int]:
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  h, w = image_size
  if h % patch[0] or w % patch[1]:
    raise ValueError(f'image_size {tuple(image_size)} is not a multiple of the patch size {patch}.')
  return h // patch[0], w // patch[1]


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b': x} -> {'a': {'b': x}}."""
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    node = tree
    parts = key.split('/')
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = value
  return tree


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}."""
  out = {}
  for k, v in tree.items():
    key = f'{prefix}{k}'
    if isinstance(v, Mapping):
      out.update(flatten(v, key + '/'))
    else:
      out[key] = v
  return out


def expected_shapes(model: VisionTransformer, grid: tuple[int, int]) -> dict[str, tuple[int, ...]]:
  """Flat {key: shape} of `model`'s parameters for a patch `grid` (jax.eval_shape, no alloc)."""
  ph, pw = model.arch.patch_size
  images = jax.ShapeDtypeStruct((1, grid[0] * ph, grid[1] * pw, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x)['params'], images)
  return {k: tuple(v.shape) for k, v in flatten(shapes).items()}


def params_from_flat(flat: Mapping[str, np.ndarray], *,
                     image_size: int | Sequence[int] | None = None,
                     dtype: Dtype = jnp.float32, strict: bool = True
                     ) -> tuple[VisionTransformer, dict[str, Any]]:
  """(model, nested float32 numpy params) from a flat checkpoint dict; see `from_npz`."""
  info = infer_architecture(flat)
  a = info.arch
  model = VisionTransformer(a.patch_size, a.hidden_size, a.num_layers, a.num_heads, a.mlp_dim,
                            num_classes=info.num_classes,
                            representation_size=info.representation_size, dtype=dtype)
  expect = expected_shapes(model, info.posemb_grid)
  missing = [k for k in expect if k not in flat]
  if missing:
    raise KeyError(f'ViT checkpoint is missing {len(missing)} array(s) for {a.describe()}: '
                   + ', '.join(f'{k!r} (expected shape {expect[k]})' for k in missing[:5])
                   + (' ...' if len(missing) > 5 else ''))
  for k, shape in expect.items():
    if tuple(flat[k].shape) != shape:
      raise ValueError(f'ViT checkpoint array {k!r} has shape {tuple(flat[k].shape)}; expected '
                       f'{shape} for {a.describe()}.')
  extra = sorted(set(flat) - set(expect))
  if extra:
    msg = f'ViT checkpoint has {len(extra)} unexpected array(s): {extra[:5]}'
    if strict:
      raise ValueError(msg + ' (pass strict=False to ignore them).')
    logging.warning('%s; ignored.', msg)
  params = {k: np.asarray(flat[k], np.float32) for k in expect}
  if image_size is not None:
    grid = _grid_for(image_size, a.patch_size)
    key = 'Transformer/posembed_input/pos_embedding'
    params[key] = resize_posemb(params[key], grid)
  return model, unflatten(params)


def from_npz(path: str, *, image_size: int | Sequence[int] | None = None,
             dtype: Dtype = jnp.float32, strict: bool = True
             ) -> tuple[VisionTransformer, dict[str, Any]]:
  """Loads an official vision_transformer `.npz` (original i21k or AugReg naming).

  The architecture (patch size, width, depth, heads, MLP width, representation size, classes) is
  read off the array shapes; `image_size` (int or (H, W)) resizes the position embedding to its
  patch grid (`resize_posemb`). Returns (model, params) with params a nested dict of float32
  numpy arrays whose '/'-joined paths are the npz keys, ready for
  `model.apply({'params': params}, images)`. Missing arrays raise KeyError naming the key and its
  expected shape, wrong shapes ValueError naming key, expected and found shapes; unexpected
  arrays raise unless `strict=False`. `path` may be a local path, gs:// path or URL
  (downloaded and cached by `fetch_checkpoint`).
  """
  return params_from_flat(load_npz(path), image_size=image_size, dtype=dtype, strict=strict)


def backbone_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """The backbone part of a ViT param tree: everything but `head` and `pre_logits`."""
  return {k: v for k, v in params.items() if k not in ('head', 'pre_logits')}


def count_params(tree: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
