r"""Table 4 of the paper: the components, on CIFAR-100-LT at ratio 200.

  python -m ltdpt_jax.tools.ablate --study=table4 --workdir=runs/table4

VPT (cross-entropy, no GNM, no DRW), (A) GNM-PT (VPT with the GCL + DRW loss and SGD + GNM),
(B) (A) + FR prompts, (C) FR + BR prompts: LT-DPT.
"""

from ltdpt_jax.studies import Cell
from ltdpt_jax.studies import METHODS
from ltdpt_jax.studies import paper
from ltdpt_jax.studies import Study


def get_study():
  return Study(
      title='Table 4: components of LT-DPT on CIFAR-100-LT, ratio 200',
      config='configs/cifar100_lt.py:ratio=200',
      cells=(
          Cell('vpt_plain', 'VPT', METHODS['vpt_plain'], paper=paper(72.8)),
          Cell('vpt', '(A) GNM-PT', METHODS['vpt'], paper=paper(88.3, 89.7, 89.6, 84.5)),
          Cell('fr', '(B) G + FR prompts', METHODS['fr'], paper=paper(88.4, 90.4, 89.5, 84.5)),
          Cell('fr_br', '(C) LT-DPT', METHODS['fr_br'], paper=paper(89.0, 91.0, 90.1, 85.2)),
      ))
