r"""Our train step against the PyTorch anchor on the same CPU, back to back, alternating rounds.

  python -m ltdpt_jax.bench.cpu_vs_torch --torch_python=/path/to/torchvenv/bin/python \
      --torch_step=../shared/perf/torch_step.py --model=ti16 --rounds=6

Each round runs the PyTorch step (`torch_step.py`: the LT-DPT step on a timm ViT, FR + BR
prompts, both saliency biases, GCL, orthogonality loss, GNM, SGD; batch 8, 224 px, 100 classes,
`--threads` threads) and then ours (`python -m ltdpt_jax.bench --parts=train` on the same
backbone with a random frozen backbone and synthetic data: the same prompt counts, groups, top-k
and BR blocks, which are base_config's), each in a fresh process, the order alternating between
rounds so neither always runs on a warmer machine. Prints one line per round and a table: the
median images/s of each and the median of the per-round ratios ours / PyTorch (the machine is
shared: compare medians, never single runs). `--out` writes the JSON (every round too).

Both processes get the same thread budget: torch `--threads`, ours the CPU's cores (XLA:CPU uses
its own thread pool sized to them); run it on an otherwise idle machine.
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
  cmd = [args.torch_python, args.torch_step, '--model', TIMM[args.model], '--batch',
         str(args.batch), '--steps', str(args.steps), '--warmup', str(args.warmup), '--threads',
         str(args.threads)]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])['img_per_s']


def _ours(args) -> float:
  cmd = [sys.executable, '-m', 'ltdpt_jax.bench', '--config=configs/cifar100_lt.py',
         '--synthetic', '--config.model.checkpoint=', f'--config.model.backbone={args.model}',
         f'--config.data.batch_size={args.batch}', '--parts=train', f'--steps={args.steps}',
         f'--warmup={args.warmup}', '--repeats=1', '--num_classes=100']
  cmd += args.ours_flag or []
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
  out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=root).stdout
  return json.loads(out)['train_step']['images_per_s']


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--torch_python', required=True, help='python of a venv with torch (CPU).')
  p.add_argument('--torch_step', default='../shared/perf/torch_step.py')
  p.add_argument('--model', default='ti16', choices=sorted(TIMM))
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--steps', type=int, default=8)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--threads', type=int, default=os.cpu_count())
  p.add_argument('--rounds', type=int, default=6)
  p.add_argument('--ours_flag', action='append', help='Extra flag for ltdpt_jax.bench (repeat).')
  p.add_argument('--out', default=None)
  args = p.parse_args(argv)
  rounds = []
  for r in range(args.rounds):
    order = ('torch', 'ours') if r % 2 == 0 else ('ours', 'torch')
    got = {}
    for name in order:
      got[name] = {'torch': _torch, 'ours': _ours}[name](args)
    got['ratio'] = got['ours'] / got['torch']
    got['load1'] = os.getloadavg()[0]
    rounds.append(got)
    print(f'round {r + 1}/{args.rounds}: torch {got["torch"]:.2f} img/s, ours {got["ours"]:.2f} '
          f'img/s, ours/torch {got["ratio"]:.2f} (load {got["load1"]:.2f})', flush=True)
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
