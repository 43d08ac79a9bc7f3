r"""Table 1 of the paper: LT-DPT on CIFAR-100-LT at imbalance ratios 200, 100, 50 and 10.

  python -m ltdpt_jax.tools.ablate --study=table1 --workdir=runs/table1

Each cell is configs/cifar100_lt.py at its ratio, the paper's settings (Section 5.3).
"""

from ltdpt_jax.studies import Cell
from ltdpt_jax.studies import paper
from ltdpt_jax.studies import Study

# The paper's LT-DPT row of Table 1 (top-1, %).
PAPER = {200: 89.0, 100: 90.4, 50: 91.0, 10: 91.6}


def get_study():
  return Study(
      title='Table 1: LT-DPT on CIFAR-100-LT by imbalance ratio',
      config='configs/cifar100_lt.py',
      cells=tuple(Cell(f'ratio_{r}', f'LT-DPT, ratio {r}', config=f'configs/cifar100_lt.py:ratio={r}',
                       paper=paper(top1)) for r, top1 in PAPER.items()))
