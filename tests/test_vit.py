"""Tests of the ViT backbone and the official-checkpoint loader (ltdpt_jax/models/vit.py)."""

import functools
import hashlib
import http.server
import math
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import skimage.transform

import npz_utils
from ltdpt_jax import fetch
from ltdpt_jax.models import vit
from ltdpt_jax.models import vit_checkpoint

QUICK = {'xla_backend_optimization_level': 0}  # cheap CPU compiles for these tiny programs


@functools.lru_cache(maxsize=None)
def photos(size: int) -> np.ndarray:
  """Real photos (astronaut, chelsea, coffee) resized to size x size, normalised mean=std=0.5."""
  imgs = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
  out = [skimage.transform.resize(im, (size, size), anti_aliasing=True) for im in imgs]  # [0, 1]
  return ((np.stack(out) - 0.5) / 0.5).astype(np.float32)


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def test_b16_parameter_count():
  model = vit.VisionTransformer(**dict(zip(
      ('patch_size', 'hidden_size', 'num_layers', 'num_heads', 'mlp_dim'),
      dataclass_values(vit.PRESETS['b16']))), num_classes=1000)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 224, 224, 3),
                                                                              jnp.float32))
  assert vit.count_params(shapes['params']) == 86_567_656
  assert vit.count_params(vit_checkpoint.backbone_params(shapes['params'])) == 86_567_656 - 769_000


def dataclass_values(arch):
  return (arch.patch_size, arch.hidden_size, arch.num_layers, arch.num_heads, arch.mlp_dim)


@pytest.mark.parametrize('representation_size', [None, 24])
def test_from_npz_matches_numpy_reference_on_photos(tmp_path, representation_size):
  path = tmp_path / 'vit.npz'
  a = npz_utils.write_random_checkpoint(path, patch=8, width=48, depth=3, heads=3, mlp=96, grid=4,
                                        num_classes=7, representation_size=representation_size)
  model, params = vit_checkpoint.from_npz(str(path))
  images = photos(32)
  out = jax.jit(model.apply, compiler_options=QUICK)({'params': params}, images)
  ref = npz_utils.np_vit_forward(a, images)
  assert out['pre_logits'].shape == ref['pre_logits'].shape
  assert out['logits'].shape == (3, 7)
  assert out.keys() == ref.keys()
  assert out['pre_logits'].shape == (3, 48)  # the final-LN CLS token, also with a pre_logits layer
  for k in ref:
    assert rel_err(out[k], ref[k]) < 1e-4, k
  if representation_size:
    assert out['representation'].shape == (3, representation_size)
  # The three photos give different features (the comparison is not of a degenerate output).
  assert np.abs(ref['logits'][0] - ref['logits'][1]).max() > 0.1


def test_linen_named_checkpoint_loads_identically(tmp_path):
  kw = dict(patch=8, width=32, depth=2, heads=2, mlp=64, grid=4, num_classes=5, seed=3)
  npz_utils.write_random_checkpoint(tmp_path / 'a.npz', **kw)
  npz_utils.write_random_checkpoint(tmp_path / 'b.npz', linen_names=True, **kw)
  _, pa = vit_checkpoint.from_npz(str(tmp_path / 'a.npz'))
  _, pb = vit_checkpoint.from_npz(str(tmp_path / 'b.npz'))
  jax.tree.map(np.testing.assert_array_equal, pa, pb)


@pytest.mark.parametrize('kw', [
    dict(patch=4, width=32, depth=1, heads=1, mlp=40, grid=3, num_classes=None),
    dict(patch=8, width=48, depth=3, heads=4, mlp=64, grid=2, num_classes=11,
         representation_size=16),
    dict(patch=16, width=24, depth=5, heads=6, mlp=24, grid=5, num_classes=3),
])
def test_infer_architecture(kw):
  a = npz_utils.random_vit_arrays(**kw)
  info = vit_checkpoint.infer_architecture(a)
  assert info.arch == vit.ViTArch(kw['patch'], kw['width'], kw['depth'], kw['heads'], kw['mlp'])
  assert info.posemb_grid == (kw['grid'], kw['grid'])
  assert info.num_classes == kw['num_classes']
  assert info.representation_size == kw.get('representation_size')
  model, params = vit_checkpoint.params_from_flat(a)
  assert vit_checkpoint.flatten(params).keys() == a.keys()
  assert model.num_classes == kw['num_classes']


def test_preset_names_and_architecture_check():
  assert vit.preset_name(vit.ViTArch(16, 384, 12, 6, 1536)) == 's16'
  with pytest.raises(ValueError) as e:
    vit.check_architecture(vit.PRESETS['s16'], vit.PRESETS['b16'])
  msg = str(e.value)
  assert 'width 768' in msg and 'width 384' in msg and '[b16]' in msg and '[s16]' in msg


def np_bilinear_align_corners(grid: np.ndarray, nh: int, nw: int) -> np.ndarray:
  """Direct per-pixel reference: output (i, j) samples input (i*(g-1)/(nh-1), j*(g-1)/(nw-1))."""
  g = grid.shape[0]
  out = np.zeros((nh, nw, grid.shape[-1]))
  for i in range(nh):
    for j in range(nw):
      y, x = i * (g - 1) / (nh - 1), j * (g - 1) / (nw - 1)
      y0, x0 = min(int(np.floor(y)), g - 1), min(int(np.floor(x)), g - 1)
      y1, x1 = min(y0 + 1, g - 1), min(x0 + 1, g - 1)
      wy, wx = y - y0, x - x0
      out[i, j] = ((1 - wy) * (1 - wx) * grid[y0, x0] + (1 - wy) * wx * grid[y0, x1]
                   + wy * (1 - wx) * grid[y1, x0] + wy * wx * grid[y1, x1])
  return out


def test_posemb_resize_keeps_cls_and_matches_bilinear_reference(tmp_path):
  path = tmp_path / 'vit.npz'
  a = npz_utils.write_random_checkpoint(path, patch=8, width=16, depth=1, heads=2, mlp=32, grid=4,
                                        num_classes=None)
  model, params = vit_checkpoint.from_npz(str(path), image_size=56)  # grid 4 -> 7
  pe = params['Transformer']['posembed_input']['pos_embedding']
  old = a['Transformer/posembed_input/pos_embedding']
  assert pe.shape == (1, 1 + 49, 16)
  np.testing.assert_array_equal(pe[:, 0], old[:, 0])
  ref = np_bilinear_align_corners(old[0, 1:].reshape(4, 4, 16).astype(np.float64), 7, 7)
  np.testing.assert_allclose(pe[0, 1:].reshape(7, 7, 16), ref, rtol=1e-6, atol=1e-6)
  # Corners are kept (aligned corners) and grid 4 -> 7 hits every old point at even indices.
  np.testing.assert_allclose(pe[0, 1:].reshape(7, 7, 16)[::2, ::2], old[0, 1:].reshape(4, 4, 16),
                             rtol=1e-6, atol=1e-6)
  # Downsampling and a non-square grid.
  down = vit_checkpoint.resize_posemb(old, (3, 2))
  ref = np_bilinear_align_corners(old[0, 1:].reshape(4, 4, 16).astype(np.float64), 3, 2)
  np.testing.assert_allclose(down[0, 1:].reshape(3, 2, 16), ref, rtol=1e-6, atol=1e-6)
  # The resized model runs at the new size and equals the numpy forward with the resized posemb.
  images = photos(56)
  out = jax.jit(model.apply, compiler_options=QUICK)({'params': params}, images)
  a2 = dict(a, **{'Transformer/posembed_input/pos_embedding': np.asarray(pe)})
  assert rel_err(out['pre_logits'], npz_utils.np_vit_forward(a2, images)['pre_logits']) < 1e-4


def test_missing_and_wrong_shape_errors(tmp_path):
  a = npz_utils.random_vit_arrays(patch=8, width=32, depth=2, heads=2, mlp=64, grid=4)
  key = 'Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias'
  b = dict(a)
  del b[key]
  np.savez(tmp_path / 'missing.npz', **b)
  with pytest.raises(KeyError, match=key.replace('/', '.') + r".*\(32,\)"):
    vit_checkpoint.from_npz(str(tmp_path / 'missing.npz'))
  b = dict(a)
  b['Transformer/encoderblock_0/LayerNorm_2/scale'] = np.zeros(31, np.float32)
  np.savez(tmp_path / 'wrong.npz', **b)
  with pytest.raises(ValueError) as e:
    vit_checkpoint.from_npz(str(tmp_path / 'wrong.npz'))
  msg = str(e.value)
  assert 'encoderblock_0/LayerNorm_2/scale' in msg and '(31,)' in msg and '(32,)' in msg
  b = dict(a, extra=np.zeros(3, np.float32))
  np.savez(tmp_path / 'extra.npz', **b)
  with pytest.raises(ValueError, match='extra'):
    vit_checkpoint.from_npz(str(tmp_path / 'extra.npz'))
  vit_checkpoint.from_npz(str(tmp_path / 'extra.npz'), strict=False)
  with pytest.raises(FileNotFoundError):
    vit_checkpoint.from_npz(str(tmp_path / 'nope.npz'))


def _tiny_vit(seed=0):
  """(embed, block) jitted functions of a random tiny ViT, and its arrays."""
  a = npz_utils.random_vit_arrays(patch=4, width=32, depth=2, heads=4, mlp=48, grid=4, seed=seed,
                                  num_classes=None)
  model, params = vit_checkpoint.params_from_flat(a)
  variables = {'params': params}
  embed = jax.jit(lambda x: model.apply(variables, x, method='embed'), compiler_options=QUICK)
  block = jax.jit(lambda i, q, kv, bias: model.apply(
      variables, i, q, kv, bias, method=lambda m, *args: m.block(*args)),
                  static_argnums=0, compiler_options=QUICK)
  return embed, block, a


def test_large_negative_bias_equals_removing_keys():
  embed, block, _ = _tiny_vit()
  x = embed(jnp.asarray(photos(16)))                               # (3, 17, 32)
  extra = jax.random.normal(jax.random.key(1), (3, 5, 32)) * 2.0   # tokens to be masked out
  kv = jnp.concatenate([x[:, :9], extra, x[:, 9:]], axis=1)         # keys in a mixed order
  drop = np.zeros(kv.shape[1], bool)
  drop[9:14] = True
  bias = jnp.where(drop, -1e9, 0.0)[None, None, None, :]            # (1, 1, 1, Nk)
  y_bias = block(0, x, kv, bias)
  y_ref = block(0, x, None, None)                                   # self-attention on x only
  np.testing.assert_allclose(y_bias, y_ref, rtol=1e-5, atol=1e-5)
  # Without the bias the extra keys do change the output (the test is not vacuous).
  assert not np.allclose(block(0, x, kv, None), y_ref, atol=1e-3)


def test_bias_matches_numpy_attention_with_subset_queries():
  embed, block, a = _tiny_vit(seed=2)
  x = embed(jnp.asarray(photos(16)))  # (3, 17, 32)
  bias = jax.random.normal(jax.random.key(0), (3, 4, 17, 17))  # per head
  full = block(1, x, x, bias)
  ref = npz_utils.np_block(a, 1, np.asarray(x, np.float64), np.asarray(bias, np.float64))
  assert rel_err(full, ref) < 1e-5
  # Queries a subset (first 5 tokens) of the keys: same rows as the full computation.
  sub = block(1, x[:, :5], x, bias[:, :, :5])
  np.testing.assert_allclose(sub, full[:, :5], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='does not broadcast'):
    block(1, x, x, bias[:, :3])


def test_bfloat16_compute_close_to_float32(tmp_path):
  npz_utils.write_random_checkpoint(tmp_path / 'v.npz', patch=8, width=32, depth=2, heads=2,
                                    mlp=64, grid=4, num_classes=4)
  m32, p = vit_checkpoint.from_npz(str(tmp_path / 'v.npz'))
  m16, _ = vit_checkpoint.from_npz(str(tmp_path / 'v.npz'), dtype=jnp.bfloat16)
  o32 = jax.jit(m32.apply, compiler_options=QUICK)({'params': p}, photos(32))
  o16 = jax.jit(m16.apply, compiler_options=QUICK)({'params': p}, photos(32))
  assert jax.tree.leaves(p)[0].dtype == np.float32
  assert o16['cls'].dtype == jnp.bfloat16
  assert rel_err(o16['logits'], o32['logits']) < 5e-2


def test_fetch_checkpoint_file_url_and_local_http(tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  npz_utils.write_random_checkpoint(src / 'vit.npz', patch=8, width=16, depth=1, heads=2,
                                    mlp=16, grid=2, num_classes=None)
  digest = hashlib.sha256((src / 'vit.npz').read_bytes()).hexdigest()
  cache = tmp_path / 'cache'
  # file:// URL, checked and cached.
  p1 = fetch.fetch_checkpoint((src / 'vit.npz').as_uri(), sha256=digest, cache=str(cache))
  assert os.path.dirname(p1) == str(cache)
  assert open(p1, 'rb').read() == (src / 'vit.npz').read_bytes()
  with pytest.raises(fetch.FetchError, match='sha256'):
    fetch.fetch_checkpoint((src / 'vit.npz').as_uri(), sha256='0' * 64,
                         cache=str(tmp_path / 'c2'))
  assert not list((tmp_path / 'c2').iterdir())  # no partial or bad file left behind
  # Local http server on 127.0.0.1.
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src))
  handler.log_message = lambda *args, **kw: None
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    url = f'http://127.0.0.1:{server.server_address[1]}/vit.npz'
    p2 = fetch.fetch_checkpoint(url, sha256=digest, cache=str(cache))
    model, params = vit_checkpoint.from_npz(p2)
    assert model.hidden_size == 16
    assert fetch.fetch_checkpoint(url, cache=str(cache)) == p2  # served from the cache
  finally:
    server.shutdown()
    server.server_close()
  # Local path with a digest.
  assert fetch.fetch_checkpoint(str(src / 'vit.npz'), sha256=digest) == str(src / 'vit.npz')
  with pytest.raises(ValueError, match='SHA-256'):
    fetch.fetch_checkpoint(str(src / 'vit.npz'), sha256='1' * 64)


def test_gelu_is_the_exact_gelu_with_its_derivative():
  """vit.gelu (the erf form) against math.erf in float64 and against jax.nn.gelu's erfc form,
  values and derivatives, over the range block activations take (and far tails)."""
  x = np.concatenate([np.linspace(-12, 12, 4001), [-30.0, -6.5, 0.0, 6.5, 30.0]]).astype(np.float32)
  x64 = x.astype(np.float64)
  erf64 = np.vectorize(math.erf)(x64 / math.sqrt(2.0))
  want = npz_utils.np_gelu(x64)  # the numpy reference block's GELU
  want_grad = 0.5 * (1.0 + erf64) + x64 * np.exp(-0.5 * x64 ** 2) / math.sqrt(2.0 * math.pi)
  got = np.asarray(jax.jit(vit.gelu)(x), np.float64)
  got_grad = np.asarray(jax.jit(jax.vmap(jax.grad(vit.gelu)))(x), np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-6, atol=1e-6)
  ref = jax.nn.gelu(x, approximate=False)
  np.testing.assert_allclose(got, np.asarray(ref), rtol=1e-6, atol=1e-6)
  assert jax.eval_shape(vit.gelu, x).dtype == jnp.float32
  # bf16 in, bf16 out (the compute dtype of the MLP under config.model.dtype='bfloat16').
  assert vit.gelu(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16


def _fusion_roots(hlo_text: str) -> list[str]:
  """The opcode of each fused computation's ROOT instruction in a compiled HLO text."""
  return [line.split('=', 1)[1].split('(')[0].split()[-1]
          for line in hlo_text.splitlines() if line.strip().startswith('ROOT ')]


def test_gelu_backward_recomputes_its_erf_instead_of_storing_it():
  """The backward's Phi(x) = 0.5 (1 - erf(-x/sqrt2)) is the forward's 0.5 (1 + erf(x/sqrt2))
  to the bit (erf is odd in XLA's float32 implementation), and because it is written apart
  from the forward's, XLA does not store erf(x/sqrt2) as an extra activation: in the compiled
  MLP (forward and backward) no fusion's result is the erf itself."""
  y = np.concatenate([np.linspace(-6, 6, 20001), [-30.0, -1e-30, 0.0, 1e-30, 30.0]])
  y = jnp.asarray(y, jnp.float32)
  erf = jax.jit(jax.lax.erf)
  np.testing.assert_array_equal(np.asarray(erf(-y)), -np.asarray(erf(y)))
  ks = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(ks[0], (4, 9, 16))
  w1, w2 = jax.random.normal(ks[1], (16, 64)), jax.random.normal(ks[2], (64, 16))
  loss = lambda x: ((vit.gelu(x @ w1) @ w2) ** 2).sum()
  hlo = jax.jit(jax.grad(loss)).lower(x).compile().as_text()
  roots = _fusion_roots(hlo)
  assert 'erf' not in roots, roots
  assert hlo.count(' erf(') == 2, 'expected one erf in the forward and one in the backward'


def _kernel_copies(hlo_text: str, shapes: tuple[str, ...]) -> list[str]:
  """The instructions of a compiled HLO text that copy or transpose one of its entry
  parameters of the given shapes (e.g. 'f32[12,3,4]')."""
  lines = hlo_text.splitlines()
  params = {line.split('=')[0].strip().lstrip('%') for line in lines
            if ' parameter(' in line and any(f'= {s}' in line for s in shapes)}
  out = []
  for line in lines:
    name = line.split('=')[0].strip().lstrip('%').removeprefix('ROOT ').strip()
    if ('copy' in name or 'transpose' in name) and '(' in line:
      operands = line.split('(', 1)[1].split(')')[0]
      if any(f'%{p}' == o.strip() for o in operands.split(',') for p in params):
        out.append(line.strip())
  return out


def test_matrix_dot_general_equals_dot_general_without_kernel_copies(monkeypatch):
  """The attention projections' dot_general (one matrix product with the kernels viewed as 2-D)
  gives lax.dot_general's result for the query/key/value and out kernels and falls back to it
  for other dimension numbers; and the backward pass of an attention layer compiles with no
  copy or transpose of its kernels, where the stock 3-D dot_general has some (the reason for
  it, see its docstring)."""
  ks = jax.random.split(jax.random.key(1), 4)
  x, h = jax.random.normal(ks[0], (2, 5, 12)), jax.random.normal(ks[1], (2, 5, 3, 4))
  w_in, w_out = jax.random.normal(ks[2], (12, 3, 4)), jax.random.normal(ks[3], (3, 4, 12))
  for lhs, rhs, dims in [(x, w_in, (((2,), (0,)), ((), ()))),
                         (h, w_out, (((2, 3), (0, 1)), ((), ()))),
                         (h, w_out.transpose(1, 0, 2), (((3, 2), (0, 1)), ((), ())))]:
    want = jax.lax.dot_general(lhs, rhs, dims, precision='highest')
    got = vit.matrix_dot_general(lhs, rhs, dims, precision='highest')
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  def kernel_copies():
    mha = vit.MultiHeadAttention(num_heads=3)
    xq = jax.random.normal(ks[0], (2, 7, 12))
    variables = mha.init(jax.random.key(2), xq, xq)
    loss = lambda v, x: (mha.apply(v, x, x) ** 2).sum()
    hlo = jax.jit(jax.grad(loss, argnums=1)).lower(variables, xq).compile().as_text()
    return _kernel_copies(hlo, ('f32[12,3,4]', 'f32[3,4,12]'))

  assert not kernel_copies()
  monkeypatch.setattr(vit, 'matrix_dot_general', jax.lax.dot_general)
  assert kernel_copies()  # the stock dot_general copies kernels: the check above can fail


def test_block_normalises_shared_rows_once_with_the_same_values():
  """Encoder1DBlock with the keys given as the query array itself (x_kv is x_q) and the prompt
  rows as both q_extra and kv_extra (LT-DPT's layouts): LayerNorm_0 runs once per distinct row
  set (no LayerNorm over the concatenated (B, N + n_p, D) rows, no second one over x), and the
  output equals the block over the concatenation as one sequence, and over copies of the same
  rows (which are normalised separately)."""
  blk = vit.Encoder1DBlock(mlp_dim=48, num_heads=2)
  ks = jax.random.split(jax.random.key(3), 3)
  x, p = jax.random.normal(ks[0], (2, 9, 16)), jax.random.normal(ks[1], (2, 3, 16))
  v = blk.init(ks[2], x, x, None, p, p)
  shared = blk.apply(v, x, x, None, p, p)
  whole = blk.apply(v, jnp.concatenate([x, p], axis=1))  # self-attention over [x | p]
  copies = blk.apply(v, x, x + 0.0, None, p, p + 0.0)
  np.testing.assert_allclose(shared, whole, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(shared, copies, rtol=1e-5, atol=1e-5)

  def ln_rows(f):  # the row counts of the (B, rows, 16) arrays f reduces over the features
    jaxpr = jax.make_jaxpr(f)(x, p)
    return sorted(e.invars[0].aval.shape[1] for e in jaxpr.eqns
                  if e.primitive.name == 'reduce_sum' and e.params['axes'] == (2,)
                  and e.invars[0].aval.ndim == 3 and e.invars[0].aval.shape[2] == 16)
  # Each LayerNorm reduces twice over the features (mean, mean of squares): LayerNorm_0 over x
  # (9 rows) and p (3 rows) once each, LayerNorm_2 over the 12 query rows.
  assert ln_rows(lambda x, p: blk.apply(v, x, x, None, p, p)) == [3, 3, 9, 9, 12, 12]
  assert ln_rows(lambda x, p: blk.apply(v, x, x + 0.0, None, p, p + 0.0)) == [
      3, 3, 3, 3, 9, 9, 9, 9, 12, 12]


def test_keys_given_as_the_query_array_exclude_the_query_extra_rows():
  """x_kv given as x_q itself, with q_extra rows and no kv_extra: the keys are x_q's rows only
  (as for a copy of x_q), not the queries with their extra rows (x_kv=None); with and without
  remat (Encoder.run_block passes x_kv=None through the custom_vjp only where that is the same
  keys)."""
  ks = jax.random.split(jax.random.key(4), 3)
  x, e = jax.random.normal(ks[0], (2, 9, 16)), jax.random.normal(ks[1], (2, 3, 16))
  for remat in (False, True):
    enc = vit.Encoder(num_layers=1, mlp_dim=48, num_heads=2, remat=remat)
    v = enc.init(ks[2], x)
    run = lambda *a: enc.apply(v, 0, *a, method=vit.Encoder.run_block)
    loss = lambda f: jax.grad(lambda x, e: (f(x, e) ** 2).sum(), argnums=(0, 1))(x, e)
    same = lambda x, e: run(x, x, None, e, None)
    copy = lambda x, e: run(x, x + 0.0, None, e, None)
    default = lambda x, e: run(x, None, None, e, None)
    np.testing.assert_allclose(same(x, e), copy(x, e), rtol=1e-5, atol=1e-5)
    assert rel_err(same(x, e), default(x, e)) > 1e-3
    for a, b in zip(loss(same), loss(copy)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
