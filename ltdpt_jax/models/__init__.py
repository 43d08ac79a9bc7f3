"""The models, and `build_model`, which picks one by `config.model.method`.

'fr_br', 'fr', 'vpt': `ltdpt.LTDPT`; 'linear': `linear_probe.LinearProbe`; 'pretrain':
`vit.VisionTransformer` with a linear head, every weight trained (`python -m
ltdpt_jax.tools.pretrain`). What they share is in `common.py`, the checkpoint files in
`vit_checkpoint.py`, the FLOP model in `flops.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ltdpt_jax.models import common
from ltdpt_jax.models import linear_probe
from ltdpt_jax.models import ltdpt
from ltdpt_jax.models import vit

PRETRAIN = 'pretrain'


def build_model(model_config, num_classes: int, image_size: int | Sequence[int] | None = None,
                **overrides):
  """The module `config.model` describes (architecture from `backbone`, see `vit.arch_from_config`).

  `image_size` (optional) is checked to be a multiple of the patch size. `overrides` set LTDPT
  fields directly (e.g. skip_dead_prompt_work=False). Raises ValueError for invalid values.
  """
  mc = model_config
  arch = vit.arch_from_config(mc)
  if image_size is not None:
    arch.grid(image_size)
  dtype = mc.get('dtype', 'float32')
  if dtype not in common.DTYPES:
    raise ValueError(f'config.model.dtype={dtype!r} is not valid; choose one of '
                     f'{tuple(common.DTYPES)}.')
  if mc.method == PRETRAIN:
    return vit.VisionTransformer(arch.patch_size, arch.hidden_size, arch.num_layers,
                                 arch.num_heads, arch.mlp_dim, num_classes=int(num_classes),
                                 dtype=common.DTYPES[dtype])
  fields = dict(
      num_classes=int(num_classes), patch_size=arch.patch_size, hidden_size=arch.hidden_size,
      num_layers=arch.num_layers, num_heads=arch.num_heads, mlp_dim=arch.mlp_dim,
      method=mc.method, num_fr_prompts=mc.num_fr_prompts, num_br_prompts=mc.num_br_prompts,
      num_groups=mc.num_groups, top_k=mc.top_k, num_br_blocks=mc.num_br_blocks,
      alpha_init=float(mc.alpha_init), beta_init=float(mc.beta_init),
      per_block_scales=bool(mc.per_block_scales), feature=mc.feature,
      prompt_mode=mc.prompt_mode, dropout=float(mc.dropout), dtype=common.DTYPES[dtype],
      skip_dead_prompt_work=bool(mc.get('skip_dead_prompt_work', True)),
      attention=mc.get('attention', 'auto'), pad_attention_to=int(mc.get('pad_attention_to', 0)),
      remat=bool(mc.get('remat', False)),
      remat_policy=mc.get('remat_policy', 'dots_with_no_batch_dims'))
  fields.update(overrides)
  model_cls = linear_probe.LinearProbe if fields['method'] == linear_probe.METHOD else ltdpt.LTDPT
  model = model_cls(**fields)
  model._validate()  # pylint: disable=protected-access
  return model
