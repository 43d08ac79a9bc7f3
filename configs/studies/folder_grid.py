r"""A grid on your own image folder: learning rate x epochs x FR prompts, chosen on validation.

  python -m ltdpt_jax.tools.ablate --study=folder_grid \
      --config.data.train_dir=DATA/train --config.data.eval_dir=DATA/val

configs/folder.py (the paper's recipe) with 10% of each class's training images held out
(data.val_fraction); the report names the cell of best validation top-1 and gives its accuracy
on the eval folder. Copy this file to tune other keys.
"""

from ltdpt_jax.studies import Study


def get_study():
  return Study(
      title='Grid on an image folder: lr x epochs x FR prompts, selected by validation top-1',
      config='configs/folder.py',
      overrides={'data.val_fraction': 0.1},
      grid={'optim.lr': [0.005, 0.02, 0.1], 'train.epochs': [20, 70],
            'model.num_fr_prompts': [4, 10]},
      select='val')
