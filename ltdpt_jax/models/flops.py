"""The analytic FLOP model of LT-DPT: `analytic_flops`, the matmul FLOPs per image of the forward
and the train step, read off the model's own token layout (`LTDPT.block_layout`). The benchmark
compares it with XLA's count and uses it for the model MFU."""

from __future__ import annotations

from typing import Any, Sequence

from ltdpt_jax.models import common
from ltdpt_jax.models import ltdpt as ltdpt_lib


def analytic_flops(model: ltdpt_lib.LTDPT, image_size: int | Sequence[int]) -> dict[str, Any]:
  """Matmul FLOPs per image of the LT-DPT forward and train step (1 MAC = 2 FLOPs).

  Counted: the patch embedding (m * p^2 * 3 * D MACs), and per block l with Nq query rows and
  Nk key/value rows (`model.block_layout(l)`): Q and out projections 2 * Nq * D^2, K and V
  projections 2 * Nk * D^2, Q K^T and P V 2 * Nq * Nk * D, MLP 2 * Nq * D * mlp; plus the cosine
  head (D * C) and the BR prompt construction (G * H * n_b * D). Nk = 1 + m + the prompts of
  block l; Nq = the rows the layout computes (all Nk rows without `skip_dead_prompt_work`).
  Not counted: LayerNorm, softmax, GELU, residual adds, biases, the saliency FFT, the loss.

  'train' = forward + activation-only backward (the backbone is frozen): each weight matmul
  once more (dX only), the attention matmuls twice (both operands), head and BR construction
  twice; the patch embedding has no backward (images get no gradient). These are the 'model
  FLOPs' of the MFU (about 2.04 x forward for ViT-B/16): recomputation does not count.

  'dense_forward' is the plain ViT formula, for comparison: every token (CLS, patches, all
  prompts of the block) through every block, per block (8 D^2 + 4 D mlp) N + 4 N^2 D FLOPs
  (= 24 N D^2 + 4 N^2 D for mlp = 4 D), plus the patch embedding.
  """
  arch = model.arch
  gh, gw = arch.grid(image_size)
  ph, pw = arch.patch_size
  m = gh * gw
  d, mlp = arch.hidden_size, arch.mlp_dim
  sizes = model.segment_sizes(m)
  embed = m * ph * pw * 3 * d
  weight_macs = attn_macs = dense = 0
  tokens = []
  for l in range(arch.num_layers):
    layout = model.block_layout(l)
    nq = common.BlockLayout.count(layout.queries, sizes)
    nk = common.BlockLayout.count(layout.keys, sizes)
    tokens.append((nq, nk))
    weight_macs += d * d * (2 * nq + 2 * nk) + 2 * nq * d * mlp
    attn_macs += 2 * nq * nk * d
    dense += 2 * ((4 * d * d + 2 * d * mlp) * nk + 2 * nk * nk * d)
  other = d * int(model.num_classes)
  if model.method == 'fr_br':
    other += model.num_groups * model.num_br_blocks * model.num_br_prompts * d
  forward = 2 * (embed + weight_macs + attn_macs + other)
  backward = 2 * (weight_macs + 2 * attn_macs + 2 * other)
  return {
      'forward': float(forward),
      'train': float(forward + backward),
      'dense_forward': float(2 * embed + dense),
      'attention_share_of_forward': float(2 * attn_macs / forward),
      'tokens_per_block_q_k': tokens,
      'counted': 'matmul FLOPs (2 per MAC) of patch embedding, QKV/out projections, QK^T, PV, '
                 'MLP, cosine head and BR prompt construction with the actual query/key rows '
                 'per block; train = forward + activation-only backward (no backbone weight '
                 'gradients, no patch-embedding backward); elementwise ops, saliency FFT and '
                 'loss not counted',
  }
