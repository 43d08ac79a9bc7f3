"""Plots of one run or of several overlaid: `python -m ltdpt_jax.tools.plot --workdir=RUN [RUN ...]`.

The figures are those a training run draws itself after each evaluation (`ltdpt_jax.plot`).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath

from ltdpt_jax import cli
from ltdpt_jax.plot import plot_runs


def define_flags() -> None:
  """The command's flags (defined when it runs: other commands import this module)."""
  flags.DEFINE_multi_string('workdir', None, 'Run(s) to plot (more may follow as positional '
                            'arguments).')
  flags.DEFINE_string('out', None, 'Output directory (default: <run>/plots for one run, '
                      './plots_compare for several).')


def main(argv: Sequence[str]) -> None:
  workdirs = list(flags.FLAGS.workdir or []) + list(argv[1:])
  if not workdirs:
    cli.fail('pass --workdir=RUN [RUN ...].', cli.EXIT_BAD_INPUT)
  for w in workdirs:
    if not epath.Path(w).is_dir():
      cli.fail(f'--workdir {w} is not a directory.', cli.EXIT_BAD_INPUT)
  out = flags.FLAGS.out or (str(epath.Path(workdirs[0]) / 'plots') if len(workdirs) == 1
                       else 'plots_compare')
  try:
    written = plot_runs(workdirs, out)
  except ValueError as e:
    cli.fail(str(e), cli.EXIT_BAD_INPUT)
  for path in written:
    logging.info('Wrote %s', path)
  if not written:
    cli.fail(f'nothing to plot in {workdirs} (no eval_<step>.json, no metrics.jsonl).',
             cli.EXIT_BAD_INPUT)


def run() -> None:
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
