r"""Tables 2 and 3 of the paper: LT-DPT on ImageNet-LT, iNaturalist 2018 and Places365-LT.

  python -m ltdpt_jax.tools.ablate --study=table2_3 --workdir=runs/table2_3

Each cell is its dataset's config with the paper's settings (Places-LT: 100 epochs, DRW on the
last 40). From image trees instead of tfds: --config.data.source=files
--config.data.image_root=DIR (the same for every cell, so run one cell at a time with --cells).
"""

from ltdpt_jax.studies import Cell
from ltdpt_jax.studies import paper
from ltdpt_jax.studies import Study


def get_study():
  return Study(
      title='Tables 2-3: LT-DPT on ImageNet-LT, iNaturalist 2018 and Places365-LT',
      config='configs/imagenet_lt.py',
      cells=(
          Cell('imagenet_lt', 'ImageNet-LT (Table 2)', config='configs/imagenet_lt.py',
               paper=paper(84.0, head=85.8, medium=84.1, tail=78.4)),
          Cell('inat2018', 'iNaturalist 2018 (Table 3)', config='configs/inat2018.py',
               paper=paper(76.9, head=62.7, medium=77.7, tail=79.5)),
          Cell('places_lt', 'Places365-LT (Table 3)', config='configs/places.py',
               paper=paper(49.9, head=46.9, medium=52.6, tail=49.2)),
      ))
