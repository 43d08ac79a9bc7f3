r"""LT-DPT on your own long-tailed images: an image folder, or list files (ltdpt_jax/data/files.py).

Image folders (the torchvision ImageFolder layout, <dir>/<class name>/<images>, nested folders
inside a class folder allowed):

  python -m ltdpt_jax.main --config=configs/folder.py:train_dir=DATA/train,eval_dir=DATA/val \
      --workdir=runs/mine

List files (`<relative/path> <label>` lines, as ImageNet-LT and Places-LT ship them, or a CSV
with the header `path,label`, the label a class name or an index), paths under image_root
(default: the list file's folder):

  python -m ltdpt_jax.main --config=configs/folder.py:train_list=train.txt,eval_list=val.txt,image_root=DATA \
      --workdir=runs/mine

Everything else is the paper's recipe (`config_lib.base_config()`): ViT-B/16 pretrained on
ImageNet-21k, 224 px, batch 128, lr 0.005, 70 epochs with DRW on the last 10, head/medium/tail
by > 100 / 20-100 / < 20 training images (`data.shot_thresholds`). Override as usual, e.g.
`--config.train.epochs=30 --config.data.on_bad_image=skip --config.data.batch_size=64`. Class
order: the sorted train class folders (or CSV names), unless `data.class_names` lists them.
"""

from ltdpt_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, train_dir='', eval_dir='', train_list='', eval_list='',
                             image_root='')
  c = config_lib.base_config()
  if arg.train_list or arg.eval_list:
    c.data.dataset = 'list'
    c.data.train_list, c.data.eval_list = arg.train_list, arg.eval_list
    c.data.image_root = arg.image_root
  else:
    c.data.dataset = 'folder'
    c.data.train_dir, c.data.eval_dir = arg.train_dir, arg.eval_dir
  return c
