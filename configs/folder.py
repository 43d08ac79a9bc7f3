r"""LT-DPT on your own long-tailed images: an image folder, or list files, with the paper's recipe.

  python -m ltdpt_jax.main --config=configs/folder.py:train_dir=DATA/train,eval_dir=DATA/val \
      --workdir=runs/mine
  python -m ltdpt_jax.main --workdir=runs/mine \
      --config=configs/folder.py:train_list=train.txt,eval_list=val.csv,image_root=DATA

Folders: <dir>/<class name>/<images>; lists: `<path> <label>` lines or a `path,label` CSV, paths
under `image_root` (default the list's folder). See ltdpt_jax/data/files.py.
"""

from ltdpt_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, train_dir='', eval_dir='', train_list='', eval_list='',
                             image_root='')
  # Everything else is base_config's (the paper's recipe: ViT-B/16, 224 px, batch 128, 70 epochs,
  # head / medium / tail by data.shot_thresholds); class order: the sorted train class folders or
  # CSV names, unless data.class_names lists them.
  c = config_lib.base_config()
  if arg.train_list or arg.eval_list:
    c.data.dataset = 'list'
    c.data.train_list, c.data.eval_list = arg.train_list, arg.eval_list
    c.data.image_root = arg.image_root
  else:
    c.data.dataset = 'folder'
    c.data.train_dir, c.data.eval_dir = arg.train_dir, arg.eval_dir
  return c
