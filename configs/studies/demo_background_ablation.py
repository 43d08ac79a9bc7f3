r"""The ablation of Table 4 on the second demo, where the scene misleads: methods x 5 seeds.

  python -m ltdpt_jax.tools.ablate --study=demo_background_ablation

A linear probe, VPT with the GNM-PT recipe (A), (A) + FR prompts (B), FR + BR = LT-DPT (C), and
LT-DPT with prompt_mode=carry; every row the demo's recipe otherwise, 5 seeds, (C) against (A)
seed by seed, and where each method's maps look (train.attention_stats). No paper numbers: the
task is the project's own (configs/demo_background.py: the class is the object, the
training scenes mislead, the tail most).
"""

from ltdpt_jax.studies import Cell
from ltdpt_jax.studies import METHODS
from ltdpt_jax.studies import Study


def get_study():
  return Study(
      title='The methods of Table 4 where the background misleads (configs/demo_background.py)',
      config='configs/demo_background.py',
      seeds=5,
      overrides={'train.attention_stats': True},
      paired=(('fr_br', 'vpt'),),
      cells=(
          Cell('linear', 'Linear probe (head only)', METHODS['linear']),
          Cell('vpt', 'VPT + GNM-PT recipe (A)', METHODS['vpt']),
          Cell('fr', '(A) + FR prompts (B)', METHODS['fr']),
          Cell('fr_br', 'FR + BR: LT-DPT (C)', METHODS['fr_br']),
          Cell('carry', 'LT-DPT, prompt_mode=carry', METHODS['carry']),
      ))
