r"""Table 6 of the paper: the balance factor lambda of the orthogonality loss (Eq. 7).

  python -m ltdpt_jax.tools.ablate --study=table6 --workdir=runs/table6

LT-DPT on CIFAR-100-LT at ratio 200, loss.orth_lambda in 0, 0.1, 0.2, 0.5 (the paper's), 1, 2.
"""

from ltdpt_jax.studies import Cell
from ltdpt_jax.studies import paper
from ltdpt_jax.studies import Study

PAPER = {0.0: 88.6, 0.1: 88.6, 0.2: 88.7, 0.5: 89.0, 1.0: 88.9, 2.0: 89.0}


def get_study():
  return Study(
      title='Table 6: the balance factor lambda on CIFAR-100-LT, ratio 200',
      config='configs/cifar100_lt.py:ratio=200',
      cells=tuple(Cell(f'lambda_{lam}', f'lambda = {lam}', {'loss.orth_lambda': lam},
                       paper=paper(top1)) for lam, top1 in PAPER.items()))
