"""Test helpers: random ViT checkpoints in the official google-research `.npz` naming, and an
independent float64 numpy ViT forward that reads those flat arrays directly.

Both are written from the published layout (vit_jax `models_vit.py` / the released files), not from
`ltdpt_jax.models.vit`, so tests comparing the two are meaningful.
"""

from __future__ import annotations

import math
import os

import numpy as np

LN_EPS = 1e-6


def random_vit_arrays(*, patch: int = 8, width: int = 32, depth: int = 2, heads: int = 2,
                      mlp: int = 64, grid: int = 4, num_classes: int | None = 10,
                      representation_size: int | None = None, seed: int = 0,
                      linen_names: bool = False) -> dict[str, np.ndarray]:
  """Flat {key: float32 array} of a random ViT with the official key names and shapes.

  Weights are scaled ~1/sqrt(fan_in) and biases/LayerNorm params are non-trivial, so every array
  matters for the output. `linen_names=True` uses the Linen per-class counters
  (MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0) some re-saved files carry.
  """
  rng = np.random.default_rng(seed)
  hd = width // heads
  n = lambda *s, scale=1.0: (rng.standard_normal(s) * scale).astype(np.float32)
  a = {
      'embedding/kernel': n(patch, patch, 3, width, scale=1 / math.sqrt(3 * patch * patch)),
      'embedding/bias': n(width, scale=0.1),
      'cls': n(1, 1, width, scale=0.5),
      'Transformer/posembed_input/pos_embedding': n(1, 1 + grid * grid, width, scale=0.5),
      'Transformer/encoder_norm/scale': 1 + n(width, scale=0.1),
      'Transformer/encoder_norm/bias': n(width, scale=0.1),
  }
  att, ln1, ln2, mlpb = ('MultiHeadDotProductAttention_1', 'LayerNorm_0', 'LayerNorm_2',
                         'MlpBlock_3')
  if linen_names:
    att, ln2, mlpb = 'MultiHeadDotProductAttention_0', 'LayerNorm_1', 'MlpBlock_0'
  for i in range(depth):
    p = f'Transformer/encoderblock_{i}/'
    for ln in (ln1, ln2):
      a[p + ln + '/scale'] = 1 + n(width, scale=0.1)
      a[p + ln + '/bias'] = n(width, scale=0.1)
    for name in ('query', 'key', 'value'):
      a[p + f'{att}/{name}/kernel'] = n(width, heads, hd, scale=1 / math.sqrt(width))
      a[p + f'{att}/{name}/bias'] = n(heads, hd, scale=0.1)
    a[p + f'{att}/out/kernel'] = n(heads, hd, width, scale=1 / math.sqrt(width))
    a[p + f'{att}/out/bias'] = n(width, scale=0.1)
    a[p + f'{mlpb}/Dense_0/kernel'] = n(width, mlp, scale=1 / math.sqrt(width))
    a[p + f'{mlpb}/Dense_0/bias'] = n(mlp, scale=0.1)
    a[p + f'{mlpb}/Dense_1/kernel'] = n(mlp, width, scale=1 / math.sqrt(mlp))
    a[p + f'{mlpb}/Dense_1/bias'] = n(width, scale=0.1)
  head_in = width
  if representation_size:
    a['pre_logits/kernel'] = n(width, representation_size, scale=1 / math.sqrt(width))
    a['pre_logits/bias'] = n(representation_size, scale=0.1)
    head_in = representation_size
  if num_classes:
    a['head/kernel'] = n(head_in, num_classes, scale=1 / math.sqrt(head_in))
    a['head/bias'] = n(num_classes, scale=0.1)
  return a


def write_random_checkpoint(path: str | os.PathLike, **kwargs) -> dict[str, np.ndarray]:
  """Writes `random_vit_arrays(**kwargs)` to `path` with np.savez; returns the arrays."""
  arrays = random_vit_arrays(**kwargs)
  np.savez(path, **arrays)
  return arrays


# ---------------------------------------------------------------------------------------------
# Independent float64 numpy reference.
# ---------------------------------------------------------------------------------------------

_erf = np.vectorize(math.erf)


def np_layernorm(x, scale, bias):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + LN_EPS) * scale + bias


def np_gelu(x):
  return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def np_embed(a, images):
  """(B, H, W, 3) -> (B, 1 + m, D): non-overlapping patches times the kernel, CLS, posemb."""
  k = a['embedding/kernel'].astype(np.float64)
  p = k.shape[0]
  b, h, w, _ = images.shape
  x = images.astype(np.float64).reshape(b, h // p, p, w // p, p, 3).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(b, (h // p) * (w // p), p * p * 3) @ k.reshape(p * p * 3, -1)
  x = x + a['embedding/bias']
  cls = np.broadcast_to(a['cls'].astype(np.float64), (b, 1, x.shape[-1]))
  x = np.concatenate([cls, x], axis=1)
  return x + a['Transformer/posembed_input/pos_embedding']


def np_block(a, i, x, bias=None, return_logits=False):
  """Block i on all tokens x (B, N, D); optional additive logit bias (B, 1|h, N, N)."""
  p = f'Transformer/encoderblock_{i}/'
  f = lambda k: a[p + k].astype(np.float64)
  y = np_layernorm(x, f('LayerNorm_0/scale'), f('LayerNorm_0/bias'))
  att = 'MultiHeadDotProductAttention_1/'
  q = np.einsum('bnd,dhk->bnhk', y, f(att + 'query/kernel')) + f(att + 'query/bias')
  k = np.einsum('bnd,dhk->bnhk', y, f(att + 'key/kernel')) + f(att + 'key/bias')
  v = np.einsum('bnd,dhk->bnhk', y, f(att + 'value/kernel')) + f(att + 'value/bias')
  logits = np.einsum('bqhk,bshk->bhqs', q, k) / math.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + bias
  o = np.einsum('bhqs,bshk->bqhk', np_softmax(logits), v)
  o = np.einsum('bqhk,hkd->bqd', o, f(att + 'out/kernel')) + f(att + 'out/bias')
  x = x + o
  y = np_layernorm(x, f('LayerNorm_2/scale'), f('LayerNorm_2/bias'))
  y = np_gelu(y @ f('MlpBlock_3/Dense_0/kernel') + f('MlpBlock_3/Dense_0/bias'))
  y = y @ f('MlpBlock_3/Dense_1/kernel') + f('MlpBlock_3/Dense_1/bias')
  x = x + y
  return (x, logits) if return_logits else x


def np_depth(a) -> int:
  return len({k.split('/')[1] for k in a if k.startswith('Transformer/encoderblock_')})


def np_final_norm(a, x):
  return np_layernorm(x, a['Transformer/encoder_norm/scale'], a['Transformer/encoder_norm/bias'])


def np_vit_forward(a, images):
  """Reference ViT (vit_jax semantics).

  Returns {'cls' = 'pre_logits' (final-LN CLS), 'representation' (tanh(Dense(cls)), if a
  pre_logits layer), 'logits' (head on the representation, else on cls; if a head)}.
  """
  x = np_embed(a, images)
  for i in range(np_depth(a)):
    x = np_block(a, i, x)
  cls = np_final_norm(a, x[:, 0])
  out = {'cls': cls, 'pre_logits': cls}
  head_in = cls
  if 'pre_logits/kernel' in a:
    head_in = out['representation'] = np.tanh(cls @ a['pre_logits/kernel'] + a['pre_logits/bias'])
  if 'head/kernel' in a:
    out['logits'] = head_in @ a['head/kernel'] + a['head/bias']
  return out
