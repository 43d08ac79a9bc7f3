"""Losses of LT-DPT: GCL with DRW weights (L_lt), the group-prompt orthogonality loss (Eq. 6)
and their sum (Eq. 7).

`gcl_loss` (with `gcl_logits`, `drw_weights`) follows the authors' PyTorch GCLLoss, as GNM-PT
uses it; `orthogonality_loss` is Eq. 6 and `total_loss` Eq. 7.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

ArrayLike = jax.typing.ArrayLike


def _safe_counts(class_counts) -> jax.Array:
  # A class with n_j = 0 is treated as n_j = 1 (the rarest possible class), where the PyTorch
  # code would produce inf / NaN.
  counts = jnp.asarray(class_counts, jnp.float32)
  if counts.ndim != 1:
    raise ValueError('class_counts must be a 1-D per-class count vector; '
                     f'got shape {counts.shape}.')
  return jnp.maximum(counts, 1.0)


def gcl_margins(class_counts: ArrayLike) -> jax.Array:
  """m_j = log n_max - log n_j (float32): 0 for the largest class, largest for the rarest."""
  log_n = jnp.log(_safe_counts(class_counts))
  return jnp.max(log_n) - log_n


def gcl_logits(cosine: jax.Array, labels: jax.Array, class_counts: ArrayLike, *,
               noise: jax.Array | None, s: float = 25.0, m: float = 0.1,
               noise_mul: float = 1.0) -> jax.Array:
  """The scaled GCL logits s * c~ (B, C) that `gcl_loss` feeds to the cross-entropy.

  As the PyTorch GCLLoss, line for line::

    m_j   = log n_max - log n_j                              (`gcl_margins`, float32 like torch)
    xi_ij = clip(N(0,1) / 3, -1, 1)                          (torch: Normal(0, 1/3).clamp(-1, 1))
    c~_ij = c_ij - noise_mul * |xi_ij| / max_k m_k * m_j     (every logit, one-sided)
    c~_iy -= m                                               (margin on the target only)

  When all classes have the same count (max m = 0) the Gaussian-cloud term is 0 (no NaN).
  """
  cosine = jnp.asarray(cosine)
  if cosine.ndim != 2:
    raise ValueError(f'cosine must be (batch, classes); got shape {cosine.shape}.')
  b, c = cosine.shape
  if labels.shape != (b,):
    raise ValueError(f'labels must have shape ({b},) to match cosine {cosine.shape}; '
                     f'got {labels.shape}.')
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'labels must be integer class indices; got dtype {labels.dtype}.')
  m_list = gcl_margins(class_counts)
  if m_list.shape != (c,):
    raise ValueError(f'class_counts has {m_list.shape[0]} entries but cosine has {c} classes.')
  try:
    lab = np.asarray(labels)  # Concrete labels are range-checked; traced ones cannot be.
  except (jax.errors.TracerArrayConversionError, RuntimeError):  # traced / not addressable
    lab = None
  if lab is not None and lab.size and (lab.min() < 0 or lab.max() >= c):
    raise ValueError(f'labels must lie in [0, {c}); got range [{lab.min()}, {lab.max()}].')
  x = cosine.astype(jnp.float32)
  if noise is not None:
    if noise.shape != cosine.shape:
      raise ValueError(f'noise must be a standard-normal array shaped like cosine {cosine.shape}; '
                       f'got {noise.shape}.')
    xi = jnp.clip(noise.astype(jnp.float32) / 3.0, -1.0, 1.0)
    m_max = jnp.max(m_list)
    # Same operation order as torch: c - noise_mul * |xi| / max(m) * m (0 when max(m) == 0).
    x = x - noise_mul * jnp.abs(xi) / jnp.where(m_max > 0, m_max, 1.0) * m_list
  target = jax.nn.one_hot(labels, c, dtype=jnp.bool_)
  x = jnp.where(target, x - m, x)
  return s * x


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array,
                           class_weights: ArrayLike | None = None) -> jax.Array:
  """PyTorch `F.cross_entropy(logits, labels, weight=class_weights)` with mean reduction."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  if class_weights is None:
    return jnp.mean(nll)
  w = jnp.asarray(class_weights, jnp.float32)
  if w.shape != logits.shape[-1:]:
    raise ValueError(f'class_weights must have shape ({logits.shape[-1]},); got {w.shape}.')
  wy = w[labels]
  return jnp.sum(wy * nll) / jnp.sum(wy)


def gcl_loss(cosine: jax.Array, labels: jax.Array, class_counts: ArrayLike, *,
             noise: jax.Array | None, s: float = 25.0, m: float = 0.1,
             noise_mul: float = 1.0, class_weights: ArrayLike | None = None) -> jax.Array:
  """Gaussian clouded logit adjustment loss (Li et al. 2022), the paper's L_lt (Section 5.3).

  L = CE(s * c~, y, weight=w) with c~ from `gcl_logits` (torch's F.cross_entropy, mean).

  Args:
    cosine: (B, C) cosine logits of the cosine classifier (no scale applied).
    labels: (B,) integer targets.
    class_counts: (C,) training images per class (n_j).
    noise: (B, C) standard-normal draws (e.g. `jax.random.normal(key, cosine.shape)`); the loss
      scales them by 1/3 and clips to [-1, 1]. None means no Gaussian cloud (deterministic).
    s: logit scale; m: additive cosine margin on the target; noise_mul: cloud amplitude.
    class_weights: optional (C,) per-class weights (DRW, `drw_weights`); the mean then divides by
      the sum of the targets' weights. All-ones weights give exactly the unweighted loss, so a
      jitted step can switch DRW on with a traced flag: `jnp.where(drw_on, w_drw, 1.0)`.
  Returns:
    The scalar float32 loss.
  """
  labels = jnp.asarray(labels)
  logits = gcl_logits(cosine, labels, class_counts, noise=noise, s=s, m=m, noise_mul=noise_mul)
  return weighted_cross_entropy(logits, labels, class_weights)


def drw_weights(class_counts: ArrayLike, beta: float = 0.9998) -> np.ndarray:
  """Deferred re-weighting class weights (Cui et al. 2019 effective number), as GNM-PT's GCL.

  w_j = (1 - beta) / (1 - beta^{n_j}), normalised so that sum_j w_j = C; computed on the host in
  float64 like the PyTorch code and returned as float32 (C,). n_j = 0 is treated as 1.
  """
  if not 0.0 <= beta < 1.0:
    raise ValueError(f'beta must be in [0, 1); got {beta}.')
  counts = np.asarray(class_counts, np.float64)
  if counts.ndim != 1 or counts.size == 0:
    raise ValueError(f'class_counts must be a non-empty 1-D vector; got shape {counts.shape}.')
  counts = np.maximum(counts, 1.0)
  effective_num = 1.0 - np.power(beta, counts)
  w = (1.0 - beta) / effective_num
  w = w / np.sum(w) * len(counts)
  return w.astype(np.float32)


def orthogonality_loss(group_prompts: jax.Array) -> jax.Array:
  """Eq. 6: L_b = sum over ordered pairs i != j of cos(P_i, P_j) for G group prompts.

  group_prompts: (G, ...) with each group's prompts (e.g. G x H x n_b x D) flattened to a
  vector. Every unordered pair counts twice, as in the sum over i != j. A zero vector has
  cosine 0 with all others (norms are clamped at 1e-8, like torch's cosine_similarity).
  """
  g = group_prompts.shape[0]
  p = group_prompts.reshape(g, -1).astype(jnp.float32)
  norm = jnp.sqrt(jnp.maximum(jnp.sum(p * p, axis=-1, keepdims=True), 1e-16))
  u = p / norm
  gram = jnp.matmul(u, u.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.sum(jnp.where(jnp.eye(g, dtype=jnp.bool_), 0.0, gram))


def total_loss(lt_loss: jax.Array, orth_loss: jax.Array, *, orth_lambda: float) -> jax.Array:
  """Eq. 7: L = L_lt + lambda * L_b (lambda = config.loss.orth_lambda, 0.5 by default)."""
  return lt_loss + orth_lambda * orth_loss
