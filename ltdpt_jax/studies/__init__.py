"""Studies: the paper's tables, the demo's ablation and grids on your data, each run in one command.

`spec` (Study, Cell, `load_study`, the flags of each run), `launchers` (here, processes, Slurm
through submitit, Cloud TPU) and `report` (mean +- std over seeds beside the paper's numbers,
deviations flagged, the best cell of a grid). The command is `python -m ltdpt_jax.tools.ablate`.
"""

from ltdpt_jax.studies.spec import Cell
from ltdpt_jax.studies.spec import load_study
from ltdpt_jax.studies.spec import METHODS
from ltdpt_jax.studies.spec import paper
from ltdpt_jax.studies.spec import Study
