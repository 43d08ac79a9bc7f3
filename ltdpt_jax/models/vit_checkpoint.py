"""Reading the official google-research/vision_transformer `.npz` checkpoints into `vit.py` models.

`load_npz` (the flat {key: array} dict), `infer_architecture` (read off the shapes),
`resize_posemb` (to another image size), `params_from_flat` / `from_npz` (model and params,
every array checked) and `load_backbone` (what an LT-DPT run loads from `config.model`).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import zipfile
from typing import Any, Mapping, NamedTuple, Sequence

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ltdpt_jax import fetch
from ltdpt_jax.models import vit as vit_lib

POSEMB_KEY = 'Transformer/posembed_input/pos_embedding'
_LINEN_RENAMES = {  # Linen per-class counters -> the pre-Linen names of the released files.
    'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
    'LayerNorm_1': 'LayerNorm_2',
    'MlpBlock_0': 'MlpBlock_3',
}
_BLOCK_RE = re.compile(r'^Transformer/encoderblock_(\d+)/')
_NOT_BACKBONE = ('head', 'pre_logits')


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x} (the npz naming)."""
  return flax.traverse_util.flatten_dict(dict(tree), sep='/')


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b': x} -> {'a': {'b': x}}."""
  return flax.traverse_util.unflatten_dict(dict(flat), sep='/')


class NotAnNpz(ValueError):
  """The file is not an `.npz` archive of arrays (a pickle, a text file, another zip, ...)."""


def _kind_of(head: bytes) -> str:
  if head.startswith(b'\x93NUMPY'):
    return 'a single .npy array, not an .npz archive'
  if head.startswith(b'PK'):
    return 'a zip archive whose members are not .npy arrays'
  if head[:1] == b'\x80' or head.startswith((b'(dp', b'(lp', b'ccopy_reg')):
    return 'a Python pickle'
  return 'not an .npz (zip) archive'


def _read_arrays(f, path: str) -> dict[str, np.ndarray]:
  """Every array of an open `.npz` file; NotAnNpz when the file is something else. Pickles are
  never loaded (they can run code)."""
  head = f.read(8)
  f.seek(0)
  try:
    data = np.load(f, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
      raise ValueError('not an .npz')
    with data:
      arrays = {k: data[k] for k in data.files}
    if not arrays or not all(isinstance(v, np.ndarray) and v.dtype.kind in 'biuf'
                             for v in arrays.values()):
      raise ValueError('its members are not numeric .npy arrays')
    return arrays
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise NotAnNpz(
        f'{path} is {_kind_of(head)}: an official google-research/vision_transformer .npz '
        'checkpoint (a zip of .npy arrays such as embedding/kernel) was expected. Point '
        'config.model.checkpoint at one (the paper\'s: config_lib.CHECKPOINTS), or set it to \'\' '
        'for a random backbone.') from e


def load_npz(path: str) -> dict[str, np.ndarray]:
  """Reads a ViT `.npz` into a flat {'a/b/c': float32 array} dict (Linen names renamed).

  `path`: local path, http(s)/file URL (`fetch.fetch_checkpoint`) or anything `etils.epath`
  opens (gs://...). Raises FileNotFoundError for a missing file and NotAnNpz for a file that is
  not an `.npz` archive of arrays.
  """
  path = fetch.fetch_checkpoint(path) if fetch.is_url(path) else str(path)
  if fetch.is_remote(path):
    from etils import epath  # pylint: disable=g-import-not-at-top
    with epath.Path(path).open('rb') as f:
      flat = _read_arrays(io.BytesIO(f.read()), path)
  else:
    if not os.path.isfile(path):
      raise FileNotFoundError(f'ViT checkpoint {path!r} does not exist (config.model.checkpoint).')
    with open(path, 'rb') as f:
      flat = _read_arrays(f, path)
  out = {}
  for key, value in flat.items():
    parts = key.split('/')
    parts = [_LINEN_RENAMES.get(p, p) if _BLOCK_RE.match(key) else p for p in parts]
    out['/'.join(parts)] = value.astype(np.float32) if value.dtype != np.float32 else value
  return out


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
  """What `infer_architecture` reads off a checkpoint's array shapes."""
  arch: vit_lib.ViTArch
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
  pe = _shape_of(flat, POSEMB_KEY, 3)
  n = pe[1] - 1
  g = int(round(np.sqrt(n)))
  if g * g != n:
    raise ValueError(f"'{POSEMB_KEY}' has shape {pe}: {n} patch slots is not a square grid "
                     '(plus one CLS slot).')
  rep = flat['pre_logits/kernel'].shape[-1] if 'pre_logits/kernel' in flat else None
  num_classes = flat['head/kernel'].shape[-1] if 'head/kernel' in flat else None
  arch = vit_lib.ViTArch((ph, pw), width, len(blocks), heads, mlp)
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


def expected_shapes(model: vit_lib.VisionTransformer,
                    grid: tuple[int, int]) -> dict[str, tuple[int, ...]]:
  """Flat {key: shape} of `model`'s parameters for a patch `grid` (jax.eval_shape, no alloc)."""
  ph, pw = model.arch.patch_size
  images = jax.ShapeDtypeStruct((1, grid[0] * ph, grid[1] * pw, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x)['params'], images)
  return {k: tuple(v.shape) for k, v in flatten(shapes).items()}


def params_from_flat(flat: Mapping[str, np.ndarray], *,
                     image_size: int | Sequence[int] | None = None,
                     dtype: Any = jnp.float32, strict: bool = True
                     ) -> tuple[vit_lib.VisionTransformer, dict[str, Any]]:
  """(model, nested float32 numpy params) from a flat checkpoint dict; see `from_npz`.

  The '/'-joined parameter paths of `vit.VisionTransformer` are the keys of the released files,
  so this is a reshape-free mapping from the flat dict to the nested one (as vit_jax's
  `inspect_params`)."""
  info = infer_architecture(flat)
  a = info.arch
  model = vit_lib.VisionTransformer(a.patch_size, a.hidden_size, a.num_layers, a.num_heads,
                                    a.mlp_dim, num_classes=info.num_classes,
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
    params[POSEMB_KEY] = resize_posemb(params[POSEMB_KEY], a.grid(image_size))
  return model, unflatten(params)


def from_npz(path: str, *, image_size: int | Sequence[int] | None = None,
             dtype: Any = jnp.float32, strict: bool = True
             ) -> tuple[vit_lib.VisionTransformer, dict[str, Any]]:
  """Loads an official vision_transformer `.npz` (original i21k or AugReg naming).

  The architecture (patch size, width, depth, heads, MLP width, representation size, classes) is
  read off the array shapes; `image_size` (int or (H, W)) resizes the position embedding to its
  patch grid (`resize_posemb`). Returns (model, params) with params a nested dict of float32
  numpy arrays whose '/'-joined paths are the npz keys, ready for
  `model.apply({'params': params}, images)`. Missing arrays raise KeyError naming the key and its
  expected shape, wrong shapes ValueError naming key, expected and found shapes; unexpected
  arrays raise unless `strict=False`. `path` may be a local path, gs:// path or URL
  (downloaded and cached by `fetch.fetch_checkpoint`).
  """
  return params_from_flat(load_npz(path), image_size=image_size, dtype=dtype, strict=strict)


def backbone_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """The backbone part of a ViT param tree: everything but `head` and `pre_logits`."""
  return {k: v for k, v in params.items() if k not in _NOT_BACKBONE}


class Backbone(NamedTuple):
  """A loaded backbone: its parameters (None: random init), the SHA-256 and path of its file."""
  params: dict[str, Any] | None
  sha256: str | None
  path: str


def load_backbone(model_config, image_size: int | Sequence[int]) -> Backbone:
  """The frozen backbone of `config.model` (params None when `checkpoint` is '': random init).

  Reads `model_config.checkpoint` (local path, gs:// path or URL), requires the architecture
  that `model_config.backbone` names (ValueError naming both otherwise), checks the file against
  `model_config.checkpoint_sha256` when set (a download as it arrives), resizes the position
  embedding to `image_size` and drops head and representation layer. The params are float32
  numpy arrays, nested like `LTDPT`'s 'backbone' parameters; the SHA-256 of the file is what a
  run records, so that a resume can tell another file with the same shapes.
  """
  ckpt = model_config.checkpoint
  if not ckpt:
    return Backbone(None, None, '')
  want = (model_config.get('checkpoint_sha256') or '').lower() or None
  # A download is verified as it arrives; a local file after its architecture check, which
  # says more about a wrong file than a digest does.
  path = fetch.fetch_checkpoint(ckpt, sha256=want if fetch.is_url(ckpt) else None)
  flat = load_npz(path)
  info = infer_architecture(flat)  # fail fast, before the shape checks of every array
  vit_lib.check_architecture(
      info.arch, vit_lib.arch_from_config(model_config), found_what=f'checkpoint {ckpt!r}',
      expected_what=f'config.model.backbone={model_config.backbone!r}')
  sha = fetch.sha256_of(path)
  if want and sha != want:
    raise ValueError(f'Checkpoint {ckpt!r} has SHA-256 {sha}, but config.model.checkpoint_sha256 '
                     f'is {want}: point config.model.checkpoint at the file with that digest, or '
                     "set config.model.checkpoint_sha256 to '' (or to this file's digest) to use "
                     'this one.')
  _, params = params_from_flat(flat, image_size=image_size)
  return Backbone(backbone_params(params), sha, path)
