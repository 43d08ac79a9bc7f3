r"""Our train step against the PyTorch one on the same CPU, back to back, alternating rounds.

  python -m ltdpt_jax.bench.cpu_vs_torch --torch_python=/path/to/torchvenv/bin/python \
      --torch_step=/path/to/torch_step.py --model=ti16 --rounds=6

Each round runs the PyTorch script (`_torch`) and ours (`_ours`), each in a fresh process, the
order alternating between rounds so neither always runs on a warmer machine. Prints one line per
round and the medians (images/s of each, ours / PyTorch); `--out` writes the JSON. The machine
is shared: compare medians, never single runs, and run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TIMM = {'ti16': 'vit_tiny_patch16_224', 's16': 'vit_small_patch16_224',
        'b16': 'vit_base_patch16_224'}


def _torch(args) -> float:
  """Images/s of the PyTorch script (`--torch_step`: the LT-DPT step on a timm ViT, FR + BR
  prompts, both saliency biases, GCL, orthogonality loss, GNM, SGD), which takes --model (a
  timm name), --batch, --steps, --warmup and --threads and prints JSON with img_per_s last."""
  cmd = [args.torch_python, args.torch_step, '--model', TIMM[args.model], '--batch',
         str(args.batch), '--steps', str(args.steps), '--warmup', str(args.warmup), '--threads',
         str(args.threads)]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])['img_per_s']


def _ours(args) -> float:
  """Images/s of `python -m ltdpt_jax.bench --parts=train` on the same backbone, random and
  frozen, with synthetic data: the same prompt counts, groups, top-k and BR blocks (base_config's).
  XLA:CPU sizes its thread pool to the CPU's cores, PyTorch gets `--threads` (default the same)."""
  cmd = [sys.executable, '-m', 'ltdpt_jax.bench', '--config=configs/cifar100_lt.py',
         '--synthetic', '--config.model.checkpoint=', f'--config.model.backbone={args.model}',
         f'--config.data.batch_size={args.batch}', '--parts=train', f'--steps={args.steps}',
         f'--warmup={args.warmup}', '--repeats=1', '--num_classes=100']
  cmd += args.ours_flag or []
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo
  out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=root).stdout
  return json.loads(out)['train_step']['images_per_s']


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--torch_python', required=True, help='python of a venv with torch (CPU).')
  p.add_argument('--torch_step', required=True, help='the PyTorch script of the same train step '
                 '(prints JSON with img_per_s).')
  p.add_argument('--model', default='ti16', choices=sorted(TIMM))
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--steps', type=int, default=8)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--threads', type=int, default=os.cpu_count())
  p.add_argument('--rounds', type=int, default=6)
  p.add_argument('--ours_flag', action='append', help='Extra flag for ltdpt_jax.bench (repeat).')
  p.add_argument('--out', default=None)
  return p.parse_args(argv)


def _round(args, r: int) -> dict:
  """Round `r`: both steps' images/s (PyTorch first in even rounds), ours / PyTorch, the load."""
  order = ('torch', 'ours') if r % 2 == 0 else ('ours', 'torch')
  got = {name: {'torch': _torch, 'ours': _ours}[name](args) for name in order}
  got['ratio'] = got['ours'] / got['torch']
  got['load1'] = os.getloadavg()[0]
  print(f'round {r + 1}/{args.rounds}: torch {got["torch"]:.2f} img/s, ours {got["ours"]:.2f} '
        f'img/s, ours/torch {got["ratio"]:.2f} (load {got["load1"]:.2f})', flush=True)
  return got


def main(argv=None) -> int:
  args = _parse(argv)
  rounds = [_round(args, r) for r in range(args.rounds)]
  med = {k: statistics.median(g[k] for g in rounds) for k in ('torch', 'ours', 'ratio')}
  print(f'\n| backbone | PyTorch img/s | ours img/s | ours / PyTorch (median of {args.rounds} '
        'rounds) |\n|---|---|---|---|')
  print(f'| {args.model}, batch {args.batch} | {med["torch"]:.2f} | {med["ours"]:.2f} | '
        f'{med["ratio"]:.2f} |')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'args': vars(args), 'rounds': rounds, 'median': med,
                 'date': time.strftime('%Y-%m-%d')}, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
