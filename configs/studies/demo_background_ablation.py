r"""The ablation of Table 4 on the second demo, where the scene misleads: methods x 5 seeds.

  python -m ltdpt_jax.tools.ablate --study=demo_background_ablation

The study `demo_ablation` (its cells, seeds, attention shares and (C) against (A) seed by seed)
on configs/demo_background.py instead of configs/demo.py: the class is the object and the
training scenes mislead, the tail most. No paper numbers: the task is the project's own.
"""

import dataclasses

from ltdpt_jax.studies import load_study


def get_study():
  return dataclasses.replace(
      load_study('demo_ablation'), name='',
      title='The methods of Table 4 where the background misleads (configs/demo_background.py)',
      config='configs/demo_background.py')
