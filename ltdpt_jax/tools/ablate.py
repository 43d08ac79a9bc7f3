r"""Runs a study (a table of the paper, the demo's ablation, a grid on your data) and reports it.

  python -m ltdpt_jax.tools.ablate --study=demo_ablation --seeds=3 --workdir=runs/ablate
  python -m ltdpt_jax.tools.ablate --study=table4 --launcher=slurm --dry_run

Each (cell, seed) is a normal run in `<workdir>/<cell>/seed_<s>` (resumable; a finished one is
skipped); `--config.a.b=v` applies to every cell. The report (`<workdir>/report.md`, `.json`;
`--report` alone rebuilds it) gives mean +- std over seeds beside the paper's numbers and flags
every setting that differed from the study's.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging

from ltdpt_jax import cli
from ltdpt_jax import metrics as metrics_lib
from ltdpt_jax.studies import estimate
from ltdpt_jax.studies import launchers
from ltdpt_jax.studies import report as report_lib
from ltdpt_jax.studies import spec as spec_lib

LAUNCHERS = ('local', 'slurm', 'tpu')


def define_flags():
  """The CLI's flags (defined only when run as a program)."""
  flags.DEFINE_string('study', None, 'A study of configs/studies/ (e.g. demo_ablation, table4) '
                      'or the path of a study file.')
  flags.DEFINE_enum('launcher', 'local', LAUNCHERS, 'local: here; slurm: one submitit array job; '
                    'tpu: launch/tpu_vm.sh per run.')
  flags.DEFINE_string('workdir', None, 'Root of the runs and the report (default runs/<study>; '
                      'gs://... for --launcher=tpu).')
  flags.DEFINE_integer('seeds', None, 'Runs per cell, train.seed = first_seed, first_seed + 1, '
                       '... (default: the study\'s).')
  flags.DEFINE_integer('first_seed', 0, 'The first seed.')
  flags.DEFINE_list('cells', None, 'Only these cells of the study (default: all).')
  flags.DEFINE_integer('parallel', 1, 'local: runs at once, as processes, the GPUs split between '
                       'them; tpu: slices at once.')
  flags.DEFINE_bool('dry_run', False, 'Print what would run or be submitted, run nothing.')
  flags.DEFINE_bool('report', False, 'Only gather the runs\' results into the report.')
  flags.DEFINE_bool('allow_config_change', False, 'Passed to every run (see ltdpt_jax.main).')
  flags.DEFINE_string('slurm_partition', '', 'Slurm partition.')
  flags.DEFINE_string('slurm_account', '', 'Slurm account.')
  flags.DEFINE_integer('slurm_gpus_per_task', 1, 'GPUs per array task (one run each).')
  flags.DEFINE_integer('slurm_cpus_per_task', 8, 'CPUs per task (the input workers).')
  flags.DEFINE_integer('slurm_time_min', 24 * 60, 'Time limit per task, minutes (a task that '
                       'reaches it is requeued and resumes).')
  flags.DEFINE_integer('slurm_max_parallel', 0, 'Tasks running at once (0: no limit).')
  flags.DEFINE_string('tpu_name', 'ltdpt', 'Prefix of the TPU VMs\' names (<prefix>-<job>).')
  flags.DEFINE_string('tpu_zone', '', 'TPU zone, e.g. us-east5-b.')
  flags.DEFINE_string('tpu_type', '', 'TPU accelerator type, e.g. v6e-8.')
  flags.DEFINE_bool('tpu_spot', False, 'Spot capacity.')
  flags.mark_flags_as_required(['study'])


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """(argv without the `--config.a.b=v` flags, those flags): they go to every run as they are."""
  overrides = [a for a in argv if a.startswith('--config.')]
  bad = [a for a in overrides if '=' not in a]
  if bad:
    cli.fail(f'{bad[0]}: write config overrides as --config.a.b=value.', cli.EXIT_BAD_INPUT)
  rest = [a for a in argv if not a.startswith('--config.')]
  if any(a.startswith('--config=') or a == '--config' for a in rest):
    cli.fail('--config: a study names its configs; choose the study with --study and change '
             'every run with --config.a.b=value.', cli.EXIT_BAD_INPUT)
  return rest, overrides


_OVERRIDES: list[str] = []


def jobs_of(study: spec_lib.Study, workdir: str, seeds: list[int], overrides: list[str], *,
            cells: list[str] | None = None, paths: str = 'cwd') -> list[launchers.Job]:
  """Every (cell, seed) of the study as a job (cell by cell); `paths`: how config files are
  written (`spec.resolve_config`)."""
  out = []
  for cell in study.expand(cells):
    for seed in seeds:
      args = spec_lib.cell_args(study, cell, seed, spec_lib.cell_workdir(workdir, cell, seed),
                                overrides, paths=paths)
      out.append(launchers.Job(cell.name, seed, tuple(args)))
  return out


def check_jobs(jobs: list[launchers.Job], *, num_devices: int | None) -> None:
  """Every job's config builds and is valid, before anything runs (ValueError naming the job)."""
  for job in jobs:
    try:
      config = spec_lib.config_from_args(job.args)
      cli.validate_config(config, num_devices=num_devices, num_processes=None)
    except (ValueError, AttributeError, KeyError, flags.Error) as e:
      text = str(e.args[0] if e.args else e).splitlines()[0]
      raise ValueError(f'cell {job.name}: {text}') from None


def write_report(study, workdir: str, seeds: list[int], cells, meta: dict[str, Any]) -> str:
  """Gathers the runs, writes report.json / report.md into `workdir`, returns the Markdown."""
  wanted = {cell.name: spec_lib.config_from_args(
      spec_lib.cell_args(study, cell, seeds[0], workdir, ())).to_dict()
            for cell in study.expand(cells)}
  gathered = report_lib.gather(study, workdir, seeds, wanted, cells=cells)
  table = report_lib.build(study, gathered, meta)
  text = report_lib.markdown(table)
  metrics_lib.write_json(os.path.join(workdir, 'report.json'), table)
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(f'# {study.title}\n\n{text}')
  return text


def _meta(f, seeds, seconds=None) -> dict[str, Any]:
  return {'launcher': f.launcher, 'seeds': seeds, 'overrides': list(_OVERRIDES),
          'record': 'last evaluation of each run (results.json "last")',
          'date': datetime.datetime.now().isoformat(timespec='seconds'),
          'host': {'cpus': os.cpu_count(), 'machine': platform.machine(),
                   'processor': _cpu_model()},
          'seconds': seconds or {}}


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as fh:
      for line in fh:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def _print_report(study, workdir, text):
  print(f'\n{study.title} ({workdir}/report.md):\n')
  print(text)


def main(argv):
  cli.start(argv)
  f = flags.FLAGS
  try:
    study = spec_lib.load_study(f.study)
    seeds = spec_lib.seeds_of(study, f.seeds, f.first_seed)
    names = [c.name for c in study.expand()]
    unknown = sorted(set(f.cells or ()) - set(names))
    if unknown:
      raise ValueError(f'--cells: no cell {unknown[0]!r} in study {study.name}; its cells: '
                       f'{", ".join(names)}.')
    if f.launcher == 'tpu' and not (f.tpu_zone and f.tpu_type) and not f.report:
      raise ValueError('--launcher=tpu needs --tpu_zone and --tpu_type (e.g. us-east5-b, v6e-8).')
  except ValueError as e:
    cli.fail(str(e), cli.EXIT_BAD_INPUT)
  workdir = f.workdir or os.path.join('runs', study.name)
  if f.launcher == 'slurm':  # the tasks start in the directory sbatch ran in: absolute paths
    workdir = os.path.abspath(workdir)
  if f.launcher == 'tpu' and not workdir.startswith('gs://') and not f.report:
    cli.fail(f'--launcher=tpu: --workdir={workdir} must be a gs:// path (every slice writes its '
             'run there).', cli.EXIT_BAD_INPUT)
  cells = list(f.cells) if f.cells else None
  if f.report:
    _print_report(study, workdir, write_report(study, workdir, seeds, cells, _meta(f, seeds)))
    return
  try:
    jobs = jobs_of(study, workdir, seeds, _OVERRIDES, cells=cells,
                   paths={'tpu': 'repo', 'slurm': 'absolute'}.get(f.launcher, 'cwd'))
    in_process = f.launcher == 'local' and f.parallel == 1
    num_devices = None
    if in_process and not f.dry_run:
      import jax  # pylint: disable=g-import-not-at-top
      num_devices = jax.device_count()
    check_jobs(jobs, num_devices=num_devices)
    slots = (launchers.device_groups(f.parallel, launchers.visible_gpus())
             if f.launcher == 'local' else None)
  except ValueError as e:
    cli.fail(str(e), cli.EXIT_BAD_INPUT)
  print(f'Study {study.name}: {study.title}; {len(jobs)} run(s) ({len(jobs) // len(seeds)} '
        f'cell(s) x {len(seeds)} seed(s)) under {workdir}, launcher {f.launcher}.')

  if f.dry_run:
    dry_run(f, workdir, jobs, slots)
    return
  if f.launcher == 'slurm':
    submitted = launchers.submit_slurm(jobs, _slurm_folder(workdir), _slurm_options(f))
    for job, sub in zip(jobs, submitted):
      print(f'{job.name}: Slurm job {sub.job_id}')
    print(f'Submitted. When the tasks have finished: {_report_command(f, workdir)}')
    return
  if in_process:
    result = cli.run_guarded(lambda: launchers.run_in_process(
        jobs, allow_config_change=f.allow_config_change), workdir)
    if 'stopped_at' in result:
      job, step = result['stopped_at']
      logging.warning('Stopped in %s at step %d; rerun the same command to resume.', job, step)
      sys.exit(cli.EXIT_STOPPED)
    seconds = result['seconds']
  else:
    if f.launcher == 'tpu':
      tpu = launchers.TpuOptions(f.tpu_name, f.tpu_zone, f.tpu_type, f.tpu_spot)
      index = {j.name: i for i, j in enumerate(jobs)}
      result = launchers.run_processes(
          jobs, launchers.tpu_command, parallel=f.parallel, log_dir=_log_dir(workdir),
          job_env=lambda j: tpu.env(index[j.name]), skip_finished=True)
    else:
      extra = ['--allow_config_change'] if f.allow_config_change else []
      result = launchers.run_processes(
          jobs, lambda j: launchers.main_command(j) + extra, parallel=f.parallel,
          log_dir=_log_dir(workdir), slot_env=slots)
    failed = {k: v for k, v in result['exit_codes'].items()
              if v not in (0, cli.EXIT_STOPPED)}
    if result['stopped']:
      print('Stopped; rerun the same command to resume (finished runs are skipped).',
            file=sys.stderr)
      sys.exit(cli.EXIT_STOPPED)
    if failed:
      first = next(iter(failed))
      cli.fail(f'{len(failed)} run(s) failed: {", ".join(failed)} (exit codes '
               f'{sorted(set(failed.values()))}); see {_log_dir(workdir)}/{first.replace("/seed_", "_seed")}.log',
               failed[first])
    seconds = result['seconds']
  _print_report(study, workdir,
                write_report(study, workdir, seeds, cells, _meta(f, seeds, seconds)))


def _log_dir(workdir: str) -> str:
  return os.path.join(workdir, 'logs') if not workdir.startswith('gs://') else os.path.join(
      'runs', 'study_logs', os.path.basename(workdir.rstrip('/')))


def _slurm_folder(workdir: str) -> str:
  """Where submitit keeps the array job's pickles and the tasks' logs."""
  return os.path.join(workdir, 'slurm')


def _slurm_options(f) -> launchers.SlurmOptions:
  return launchers.SlurmOptions(
      partition=f.slurm_partition, account=f.slurm_account, gpus_per_task=f.slurm_gpus_per_task,
      cpus_per_task=f.slurm_cpus_per_task, time_min=f.slurm_time_min,
      max_parallel=f.slurm_max_parallel, name=f'ltdpt_{f.study}'.replace('/', '_'))


def _report_command(f, workdir: str) -> str:
  return shlex.join([sys.executable.rsplit('/', 1)[-1], '-m', 'ltdpt_jax.tools.ablate',
                     f'--study={f.study}', f'--workdir={workdir}', '--report',
                     *([f'--seeds={f.seeds}'] if f.seeds else [])])


def dry_run(f, workdir: str, jobs: list[launchers.Job], slots) -> None:
  """Prints exactly what the launcher would run or submit."""
  if f.launcher == 'slurm':
    print(launchers.slurm_dry_run(jobs, _slurm_folder(workdir), _slurm_options(f)))
  elif f.launcher == 'tpu':
    tpu = launchers.TpuOptions(f.tpu_name, f.tpu_zone, f.tpu_type, f.tpu_spot)
    print(f'# {min(f.parallel, len(jobs))} at a time, from the repository root:')
    print('\n'.join(launchers.tpu_lines(jobs, tpu)))
  else:
    extra = ['--allow_config_change'] if f.allow_config_change else []
    for i, job in enumerate(jobs):
      done = '  # finished: skipped' if launchers.finished(job) else ''
      env = ' '.join(f'{k}={v}' for k, v in (slots[i % len(slots)] if f.parallel > 1
                                             else {}).items())
      print(f'{env + " " if env else ""}python -m ltdpt_jax.main '
            f'{shlex.join(list(job.args) + extra)}{done}')
    if f.parallel > 1:
      print(f'# {f.parallel} at a time; each slot keeps its devices.')
  print(f'# then the report: {_report_command(f, workdir)}')
  print(gpu_estimate(jobs))


def gpu_estimate(jobs: list[launchers.Job]) -> str:
  """One line: the study's accelerator time from its FLOP count (`studies.estimate`)."""
  total, unknown = 0.0, 0
  for job in jobs:
    flops = estimate.run_flops(spec_lib.config_from_args(job.args))
    if flops is None:
      unknown += 1
    else:
      total += flops['total']
  rate = estimate.GPU_PEAK_FLOPS * estimate.SUSTAINED_FRACTION
  if unknown == len(jobs):
    return '# GPU time: no estimate (not a paper benchmark: its dataset size is not known here).'
  return (f'# GPU time, estimated from the FLOP count: {estimate.hours(total, rate):.2f} h of one '
          f'GPU at {rate / 1e12:.0f} TFLOP/s sustained (half an H100/H200\'s bf16 peak; not yet '
          f'measured on a GPU){f"; {unknown} run(s) not estimated" if unknown else ""}.')


def parse_flags(argv):
  global _OVERRIDES
  rest, _OVERRIDES = split_overrides(list(argv))
  return cli.parse_flags(rest)


def run_cli():
  define_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run_cli()
