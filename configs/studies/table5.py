r"""Table 5 of the paper: backbone sizes (ViT-T/16, S/16, B/16), GNM-PT against LT-DPT.

  python -m ltdpt_jax.tools.ablate --study=table5 --workdir=runs/table5

CIFAR-100-LT at ratio 200; each backbone its AugReg ImageNet-21k file (config_lib.CHECKPOINTS).
"""

from ltdpt_jax import config_lib
from ltdpt_jax.studies import Cell
from ltdpt_jax.studies import METHODS
from ltdpt_jax.studies import paper
from ltdpt_jax.studies import Study

# backbone -> (GNM-PT, LT-DPT): (top-1, head, medium, tail) in %.
PAPER = {
    'ti16': ((28.7, 28.6, 32.0, 21.5), (28.8, 32.3, 31.7, 21.2)),
    's16': ((73.0, 78.3, 77.0, 61.2), (73.3, 78.6, 77.9, 60.2)),
    'b16': ((88.3, 89.7, 89.6, 84.5), (89.0, 91.0, 90.1, 85.2)),
}
NAMES = {'ti16': 'ViT-T/16', 's16': 'ViT-S/16', 'b16': 'ViT-B/16'}


def get_study():
  cells = []
  for backbone, (gnm, ours) in PAPER.items():
    b = {'model.backbone': backbone, 'model.checkpoint': config_lib.CHECKPOINTS[backbone]}
    cells.append(Cell(f'{backbone}_gnm_pt', f'{NAMES[backbone]}, GNM-PT', {**b, **METHODS['vpt']},
                      paper=paper(*gnm)))
    cells.append(Cell(f'{backbone}_lt_dpt', f'{NAMES[backbone]}, LT-DPT',
                      {**b, **METHODS['fr_br']}, paper=paper(*ours)))
  return Study(title='Table 5: backbone sizes on CIFAR-100-LT, ratio 200',
               config='configs/cifar100_lt.py:ratio=200', cells=tuple(cells))
