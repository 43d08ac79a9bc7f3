r"""Table 7 of the paper (Appendix A): H, the number of last blocks with BR prompts.

  python -m ltdpt_jax.tools.ablate --study=table7 --workdir=runs/table7

LT-DPT on CIFAR-100-LT at ratio 200, model.num_br_blocks in 3, 6 (the paper's), 12.
"""

from ltdpt_jax.studies import Cell
from ltdpt_jax.studies import paper
from ltdpt_jax.studies import Study

PAPER = {3: (88.1, 90.7, 89.3, 83.1), 6: (89.0, 91.0, 90.1, 85.2), 12: (88.9, 90.7, 89.9, 85.0)}


def get_study():
  return Study(
      title='Table 7: BR prompts in the last H blocks, CIFAR-100-LT, ratio 200',
      config='configs/cifar100_lt.py:ratio=200',
      cells=tuple(Cell(f'h_{h}', f'H = {h}', {'model.num_br_blocks': h}, paper=paper(*p))
                  for h, p in PAPER.items()))
