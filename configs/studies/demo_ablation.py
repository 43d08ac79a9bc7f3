r"""The paper's ablation (Table 4) in miniature, on the demo task: methods x 3 seeds on a CPU.

  python -m ltdpt_jax.tools.ablate --study=demo_ablation --workdir=runs/ablate

A linear probe, VPT with the GNM-PT recipe (A), (A) + FR prompts (B), FR + BR = LT-DPT (C), and
LT-DPT with prompt_mode=carry; every row the demo's recipe otherwise, 5 seeds, (C) against (A)
seed by seed, and where each method's maps look (train.attention_stats). No paper numbers: the
task is the project's own (configs/demo.py).
"""

from ltdpt_jax.studies import Cell
from ltdpt_jax.studies import METHODS
from ltdpt_jax.studies import Study


def get_study():
  return Study(
      title='Ablation in miniature: the methods of Table 4 on the demo task',
      config='configs/demo.py',
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
