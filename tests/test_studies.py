"""Studies (`python -m ltdpt_jax.tools.ablate`): the repository's tables as runs, the launchers
(here in sequence and in parallel, Slurm through submitit, Cloud TPU dry runs), the report
against numpy and the deviation flags, the validation split and the choice of the best cell."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

import cli_worker
import train_utils
from ltdpt_jax import config_lib
from ltdpt_jax.data import sources
from ltdpt_jax.data import splits
from ltdpt_jax.studies import launchers
from ltdpt_jax.studies import report as report_lib
from ltdpt_jax.studies import spec
from ltdpt_jax.tools import ablate

REPO = train_utils.REPO
TOY = cli_worker.cli_overrides(train_utils.tiny_config(epochs=1, drw_epochs=0, batch_size=32))
VAL = '--config.data.val_fraction=0.15'
PAPER_TABLES = ('table1', 'table2_3', 'table4', 'table5', 'table6', 'table7')

TOY_STUDY = '''
from ltdpt_jax.studies import Cell, METHODS, Study, paper

def get_study():
  return Study(title='Toy', config='configs/demo.py', seeds=2, select='val', cells=(
      Cell('linear', 'Linear probe', METHODS['linear']),
      Cell('fr_br', 'LT-DPT', METHODS['fr_br'], paper=paper(50.0, tail=40.0))))
'''


def _toy_study(tmp_path) -> str:
  path = tmp_path / 'toy_study.py'
  path.write_text(TOY_STUDY)
  return str(path)


def _config_by_hand(config_spec: str, overrides: dict, seed: int):
  """The config of a study's cell the straightforward way: the config file's get_config(arg),
  then each override set on it."""
  path, _, arg = config_spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('c', REPO / path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  c = module.get_config(arg or None)
  for key, value in {**overrides, 'train.seed': seed}.items():
    *parents, field = key.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[field] = value
  return c


# --- The repository's studies ---

def test_every_table_is_a_study_whose_runs_are_the_papers_configs_with_the_cells_overrides():
  assert set(PAPER_TABLES) | {'demo_ablation'} <= set(spec.known_studies())
  for name in (*PAPER_TABLES, 'demo_ablation', 'demo_background_ablation', 'folder_grid'):
    study = spec.load_study(name)
    user = {'data.train_dir': 'DATA/train', 'data.eval_dir': 'DATA/val'} if name == 'folder_grid' \
        else {}
    jobs = ablate.jobs_of(study, 'runs/x', [0, 1], [f'--config.{k}={v}' for k, v in user.items()])
    assert len(jobs) == 2 * len(study.expand())
    ablate.check_jobs(jobs, num_devices=None)  # every run's config is valid
    for job in jobs[:4]:
      cell = next(c for c in study.expand() if c.name == job.cell)
      want = _config_by_hand(study.cell_config(cell),
                             {**study.overrides, **cell.overrides, **user}, job.seed)
      assert spec.config_from_args(job.args).to_dict() == want.to_dict(), (name, job.cell)
      assert job.workdir == f'runs/x/{job.cell}/seed_{job.seed}'
    if name in PAPER_TABLES:  # each paper cell carries the paper's top-1
      assert all(c.paper.get('accuracy') for c in study.expand()), name
  t4 = {c.name: c for c in spec.load_study('table4').expand()}
  assert t4['vpt_plain'].overrides['optim.gnm_rho'] == 0.0 and t4['fr_br'].paper == {
      'accuracy': 89.0, 'head_accuracy': 91.0, 'medium_accuracy': 90.1, 'tail_accuracy': 85.2}
  t1 = [c.config for c in spec.load_study('table1').expand()]
  assert t1 == [f'configs/cifar100_lt.py:ratio={r}' for r in (200, 100, 50, 10)]
  t5 = spec.load_study('table5').expand()
  assert {c.overrides['model.checkpoint'] for c in t5} == {
      config_lib.CHECKPOINTS[b] for b in ('ti16', 's16', 'b16')}


def test_a_grid_is_a_cell_per_combination_and_names_are_checked():
  study = spec.Study(title='g', config='configs/folder.py', grid={
      'optim.lr': [0.01, 0.1], 'train.epochs': [5, 10, 20]})
  cells = study.expand()
  assert [c.name for c in cells][:3] == ['lr=0.01,epochs=5', 'lr=0.01,epochs=10',
                                         'lr=0.01,epochs=20']
  assert len(cells) == 6 and cells[5].overrides == {'optim.lr': 0.1, 'train.epochs': 20}
  with pytest.raises(ValueError, match='names a cell twice'):
    spec.Study(title='t', config='x', cells=(spec.Cell('a', 'A'), spec.Cell('a', 'B'))).expand()
  with pytest.raises(ValueError, match='no cells'):
    spec.Study(title='t', config='x').expand()


def test_overrides_go_to_every_run_but_may_not_set_what_a_cell_sets():
  study = spec.load_study('table4')
  cell = study.expand()[1]  # (A): model.method=vpt
  args = spec.cell_args(study, cell, 3, 'w', ['--config.train.epochs=2'])
  c = spec.config_from_args(args)
  assert (c.train.epochs, c.model.method, c.train.seed) == (2, 'vpt', 3)
  with pytest.raises(ValueError, match='model.method is set by the study'):
    spec.cell_args(study, cell, 0, 'w', ['--config.model.method=fr'])
  with pytest.raises(ValueError, match='train.seed is set by the study.*--seeds'):
    spec.cell_args(study, cell, 0, 'w', ['--config.train.seed=1'])
  tpu = spec.cell_args(study, cell, 0, 'gs://b/w', [], paths='repo')
  assert tpu[0] == '--config=configs/cifar100_lt.py:ratio=200'


# --- The report ---

def _run_dir(root: pathlib.Path, config, *, results=None, run_info=None):
  root.mkdir(parents=True, exist_ok=True)
  (root / 'config.json').write_text(json.dumps(config.to_dict()))
  (root / 'run_info.json').write_text(json.dumps(run_info or {}))
  if results is not None:
    (root / 'results.json').write_text(json.dumps(results))


def _record(acc, head, medium, tail, val=None):
  last = {'accuracy': acc, 'head_accuracy': head, 'medium_accuracy': medium,
          'tail_accuracy': tail, 'step': 10, 'epoch': 1}
  out = {'last': last, 'last_by_evaluator': {'eval': last}}
  if val is not None:
    out['last_by_evaluator']['val'] = {'accuracy': val}
  return out


def test_report_means_stds_and_differences_against_numpy(tmp_path):
  study = spec.load_study(_toy_study(tmp_path))
  rng = np.random.default_rng(0)
  values = {}
  wanted = {}
  for cell in study.expand():
    args = spec.cell_args(study, cell, 0, 'w', [])
    wanted[cell.name] = spec.config_from_args(args).to_dict()
    for seed in (0, 1, 2):
      v = rng.uniform(0.2, 0.9, size=4)
      if cell.name == 'linear':
        v[3] = np.nan  # a group without classes: None in the record
      values[cell.name, seed] = v
      rec = _record(*[None if np.isnan(x) else float(x) for x in v])
      config = spec.config_from_args(spec.cell_args(study, cell, seed, 'w', []))
      _run_dir(tmp_path / 'w' / cell.name / f'seed_{seed}', config, results=rec)
  gathered = report_lib.gather(study, str(tmp_path / 'w'), [0, 1, 2, 3], wanted)
  table = report_lib.build(study, gathered)
  for row in table['rows']:
    assert row['seeds'] == [0, 1, 2] and row['missing_seeds'] == [3]
    assert row['deviations'] == {}
    for i, metric in enumerate(spec.METRICS):
      xs = np.array([values[row['cell'], s][i] for s in (0, 1, 2)], np.float64)
      if np.isnan(xs).all():
        assert row[metric] == {'mean': None, 'std': None, 'n': 0, 'paper': None,
                               'difference': None}
        continue
      assert row[metric]['mean'] == pytest.approx(xs.mean(), abs=1e-12)
      assert row[metric]['std'] == pytest.approx(xs.std(ddof=1), abs=1e-12)
  fr_br = table['rows'][1]
  assert fr_br['accuracy']['difference'] == pytest.approx(100 * fr_br['accuracy']['mean'] - 50.0)
  assert fr_br['head_accuracy']['paper'] is None
  text = report_lib.markdown(table)
  m = np.array([values['fr_br', s][0] for s in (0, 1, 2)])
  line = next(li for li in text.splitlines() if li.startswith('| LT-DPT |'))
  assert f'{100 * m.mean():.2f} ± {100 * m.std(ddof=1):.2f}' in line
  assert f'50.0 ({100 * m.mean() - 50:+.2f})' in line and '| 3 of 4 |' in line
  assert '(!)' not in text and text.startswith('On a demo task (synthetic shapes, configs/demo.py)')


def test_each_setting_that_differs_is_flagged(tmp_path, monkeypatch):
  study = spec.load_study('table4')
  cell = study.expand()[3]
  wanted_config = spec.config_from_args(spec.cell_args(study, cell, 0, 'w', []))
  wanted = wanted_config.to_dict()
  published = {n: sha for n, (sha, _) in splits.SPLIT_FILES.items()}
  url = wanted_config.model.checkpoint
  monkeypatch.setitem(config_lib.CHECKPOINT_SHA256, url, 'a' * 64)

  def flags_of(change=None, info=None):
    c = spec.config_from_args(spec.cell_args(study, cell, 0, 'w', []))
    if change:
      change(c)
    run = {'config': c.to_dict(), 'run_info': {'backbone_sha256': 'a' * 64, 'devices': 8,
                                               **(info or {})}}
    return report_lib.deviations(run, wanted, devices=None)

  assert flags_of() == []
  cases = [
      (lambda c: setattr(c.data, 'batch_size', 64) or setattr(c.optim, 'lr', 0.01),
       'global batch 64 (paper 128)'),  # the lr 0.01 at batch 64 is the paper's after scaling
      (lambda c: setattr(c.train, 'epochs', 10), 'epochs 10 (paper 70)'),
      (lambda c: setattr(c.train, 'drw_epochs', 5), 'DRW epochs 5 (paper 10)'),
      (lambda c: setattr(c.data, 'image_size', 160), 'image size 160 (paper 224)'),
      (lambda c: setattr(c.optim, 'lr', 0.01), 'learning rate 0.01 after batch scaling (paper '
                                               '0.005)'),
  ]
  for change, phrase in cases:
    assert flags_of(change) == [phrase]
  # the batch alone also changes the scaled learning rate
  assert flags_of(lambda c: setattr(c.data, 'batch_size', 256)) == [
      'global batch 256 (paper 128)', 'learning rate 0.01 after batch scaling (paper 0.005)']
  assert flags_of(info={'backbone_sha256': 'b' * 64}) == [
      "backbone sha256 bbbbbbbbbbbb (paper's file aaaaaaaaaaaa)"]
  monkeypatch.delitem(config_lib.CHECKPOINT_SHA256, url)
  assert flags_of(lambda c: setattr(c.model, 'checkpoint', '/copy/B_16.npz')) == [
      f'backbone /copy/B_16.npz (paper {url})']
  name = 'Places_LT_train.txt'
  assert flags_of(info={'split_files': {name: published[name]}}) == []
  assert flags_of(info={'split_files': {name: 'c' * 64}}) == [
      f'split file {name} sha256 cccccccccccc (published {published[name][:12]})']
  assert report_lib.deviations({'config': wanted, 'run_info': {'devices': 8}}, wanted,
                               devices=4) == ['8 devices (paper 4)']
  demo = spec.config_from_args([f'--config={REPO / "configs/demo.py"}']).to_dict()
  flagged = report_lib.deviations({'config': demo, 'run_info': {}}, wanted)
  assert flagged[0] == 'the demo task (synthetic shapes), not a paper dataset'


# --- The validation split and the best cell ---

@pytest.mark.parametrize('fraction', [0.1, 0.25, 0.5])
def test_val_split_per_class_keeps_a_training_image_and_is_seeded(fraction):
  labels = np.repeat(np.arange(6), [1, 2, 5, 9, 40, 300])
  np.random.default_rng(1).shuffle(labels)
  train, val = sources.val_split(labels, fraction, seed=3)
  assert np.intersect1d(train, val).size == 0
  assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
  for c, n in enumerate([1, 2, 5, 9, 40, 300]):
    want = min(int(np.floor(fraction * n + 0.5)), n - 1)
    assert (labels[val] == c).sum() == want
    assert (labels[train] == c).sum() >= 1
  again, _ = sources.val_split(labels, fraction, seed=3)
  other, _ = sources.val_split(labels, fraction, seed=4)
  assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_val_fraction_holds_images_out_of_training_and_evaluates_them():
  c = train_utils.tiny_config()
  whole = sources.get_sources(c.data)
  c.data.val_fraction = 0.25
  src = sources.get_sources(c.data)
  assert len(src.train) + len(src.val) == len(whole.train)
  train_idx, val_idx = sources.val_split(whole.train.labels, 0.25, int(c.data.seed))
  assert np.array_equal(src.val.labels, whole.train.labels[val_idx])
  assert np.array_equal(src.val[0]['image'], whole.train[int(val_idx[0])]['image'])
  assert np.array_equal(src.train[1]['image'], whole.train[int(train_idx[1])]['image'])
  from ltdpt_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  batches = list(data_lib.make_eval_iterator(c.data, split='val'))
  assert sum(int(b['mask'].sum()) for b in batches) == len(src.val)
  c.data.val_fraction = 0.0
  with pytest.raises(ValueError, match='val_fraction > 0'):
    list(data_lib.make_eval_iterator(c.data, split='val'))


def test_best_cell_is_the_highest_validation_top1():
  def row(name, val, acc):
    return {'cell': name, 'label': name.upper(), 'val_accuracy': {'mean': val},
            **{m: {'mean': acc} for m in spec.METRICS}}
  rows = [row('a', 0.5, 0.9), row('b', 0.7, 0.6), row('c', 0.7, 0.95), row('d', None, 1.0)]
  best = report_lib.best_cell(rows)
  assert best['cell'] == 'b' and best['accuracy'] == 0.6 and best['val_accuracy'] == 0.7
  assert report_lib.best_cell([row('d', None, 1.0)]) is None


# --- The command, through each launcher ---

def _ablate(*args, timeout=600, worker=False, **env):
  head = ([sys.executable, str(REPO / 'tests' / 'cli_worker.py')] if worker
          else [sys.executable, '-m', 'ltdpt_jax.tools.ablate'])
  return cli_worker.run_cli([*head, *args], timeout=timeout,
                            **({'LTDPT_TEST_COMMAND': 'ablate'} if worker else {}), **env)


def _runs(workdir: pathlib.Path) -> dict[str, dict]:
  return {f'{p.parent.parent.name}/{p.parent.name}': json.loads(p.read_text())['last']
          for p in sorted(workdir.glob('*/seed_*/results.json'))}


def test_a_toy_study_interrupted_resumed_and_in_parallel_gives_the_same_runs(tmp_path):
  """Sequential (in this process) with the first run stopped by SIGTERM after a checkpoint, then
  rerun to the end; then the study's seed 1 with --parallel=2 in another workdir, then rerun
  (every run skipped). The runs agree exactly and the report's numbers are the runs' own."""
  study = _toy_study(tmp_path)
  seq, par = tmp_path / 'seq', tmp_path / 'par'
  stopped = _ablate(f'--study={study}', f'--workdir={seq}', *TOY, VAL, worker=True,
                    LTDPT_TEST_SIGTERM_AT_STEP=1)
  assert stopped.returncode == 75, stopped.stderr[-3000:]
  assert 'rerun the same command to resume' in stopped.stderr
  assert not (seq / 'linear' / 'seed_0' / 'results.json').exists()
  assert (seq / 'linear' / 'seed_0' / 'checkpoints').is_dir()
  done = _ablate(f'--study={study}', f'--workdir={seq}', *TOY, VAL)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'Resumed from the checkpoint of step 2' in done.stderr
  table = json.loads((seq / 'report.json').read_text())
  runs = _runs(seq)
  val = {name: json.loads((seq / name / 'results.json').read_text())['last_by_evaluator']['val']
         for name in runs}  # the held-out training images (--config.data.val_fraction=0.15)
  assert all(v['num_examples'] > 0 and v['step'] == runs[k]['step'] for k, v in val.items())
  means = {c: np.mean([val[f'{c}/seed_{s}']['accuracy'] for s in (0, 1)]) for c in ('linear',
                                                                                   'fr_br')}
  assert table['best']['cell'] == max(means, key=means.get)
  assert table['best']['accuracy'] == np.mean(
      [runs[f'{table["best"]["cell"]}/seed_{s}']['accuracy'] for s in (0, 1)])
  assert 'Best cell by validation top-1' in done.stdout
  assert sorted(runs) == ['fr_br/seed_0', 'fr_br/seed_1', 'linear/seed_0', 'linear/seed_1']
  for name in runs:  # each run is its cell's method and seed, at the toy size of the overrides
    config = json.loads((seq / name / 'config.json').read_text())
    assert (config['model']['method'], f'seed_{config["train"]["seed"]}',
            config['train']['epochs']) == (*name.split('/'), 1)
  for row in table['rows']:
    xs = [runs[f'{row["cell"]}/seed_{s}']['accuracy'] for s in (0, 1)]
    assert row['accuracy']['mean'] == pytest.approx(np.mean(xs), abs=1e-12)
    assert row['accuracy']['std'] == pytest.approx(np.std(xs, ddof=1), abs=1e-12)
  md = (seq / 'report.md').read_text()
  assert md.startswith('# Toy') and md.split('\n', 2)[2] in done.stdout
  assert 'On a demo task (synthetic shapes, configs/demo.py)' in md  # and the toy sizes, flagged
  assert re.search(r'- every run: .*epochs 1 \(paper 16\)', md)

  # In parallel: seed 1 of both cells, two processes at once.
  parallel = _ablate(f'--study={study}', f'--workdir={par}', '--parallel=2', '--first_seed=1',
                     '--seeds=1', *TOY, VAL)
  assert parallel.returncode == 0, parallel.stderr[-3000:]
  assert parallel.stdout.count(': started') == 2
  assert {k: v['accuracy'] for k, v in _runs(par).items()} == {
      k: v['accuracy'] for k, v in runs.items() if k.endswith('seed_1')}
  assert all((par / 'logs' / f'{c}_seed1.log').stat().st_size > 0 for c in ('linear', 'fr_br'))
  again = _ablate(f'--study={study}', f'--workdir={par}', '--parallel=2', '--first_seed=1',
                  '--seeds=1', *TOY, VAL)
  assert again.returncode == 0 and ': started' not in again.stdout
  assert again.stdout.count('finished before') == 2
  rows = {r['cell']: r for r in json.loads((par / 'report.json').read_text())['rows']}
  assert rows['linear']['accuracy']['mean'] == runs['linear/seed_1']['accuracy']


def test_slurm_runs_a_task_through_submitit_and_requeues_the_same_run(tmp_path):
  study = spec.load_study(_toy_study(tmp_path))
  jobs = ablate.jobs_of(study, str(tmp_path / 'w'), [0], TOY, cells=['linear'])
  submitted = launchers.submit_slurm(jobs, str(tmp_path / 'slurm'), launchers.SlurmOptions(),
                                     cluster='debug')
  result = submitted[0].result()  # the debug executor runs the task here, now
  assert result['last']['accuracy'] == json.loads(
      (tmp_path / 'w' / 'linear' / 'seed_0' / 'results.json').read_text())['last']['accuracy']
  again = launchers.SlurmTask().checkpoint(list(jobs[0].args))
  assert again.function.__class__ is launchers.SlurmTask and again.args == (list(jobs[0].args),)


def test_slurm_dry_run_is_the_array_job_submitit_writes(tmp_path):
  out = _ablate('--study=table4', '--launcher=slurm', '--dry_run', f'--workdir={tmp_path}/t4',
                '--slurm_partition=gpu', '--slurm_account=lab', '--slurm_gpus_per_task=2',
                '--slurm_cpus_per_task=12', '--slurm_time_min=600', '--slurm_max_parallel=2',
                '--seeds=2', '--config.data.source=files', '--config.data.image_root=/data/c')
  assert out.returncode == 0, out.stderr[-3000:]
  sbatch = dict(re.findall(r'^#SBATCH --([a-z-]+)=(\S+)$', out.stdout, re.M))
  assert sbatch['array'] == '0-7%2'  # 4 cells x 2 seeds, 2 at a time
  assert (sbatch['partition'], sbatch['account'], sbatch['gpus-per-node'],
          sbatch['cpus-per-task'], sbatch['time']) == ('gpu', 'lab', '2', '12', '600')
  assert sbatch['signal'] == 'USR2@90'  # submitit requeues on it
  assert sbatch['output'].startswith(f'{tmp_path}/t4/slurm/')
  tasks = re.findall(r'^# task (\d+): (\S+): python -m ltdpt_jax.main (.*)$', out.stdout, re.M)
  assert [t[1] for t in tasks][:3] == ['vpt_plain/seed_0', 'vpt_plain/seed_1', 'vpt/seed_0']
  args = shlex.split(tasks[2][2])
  assert f'--workdir={tmp_path}/t4/vpt/seed_0' in args and '--config.data.source=files' in args
  assert spec.config_from_args(args).data.image_root == '/data/c'
  assert not (tmp_path / 't4').exists()  # a dry run writes nothing


def test_tpu_dry_run_lines_are_accepted_by_tpu_vm_sh(tmp_path):
  out = _ablate('--study=table6', '--launcher=tpu', '--dry_run', '--workdir=gs://b/t6',
                '--tpu_zone=us-east5-b', '--tpu_type=v6e-8', '--parallel=3', '--tpu_spot')
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [li for li in out.stdout.splitlines() if 'launch/tpu_vm.sh' in li]
  assert len(lines) == 6 and '# 3 at a time' in out.stdout
  env_words, _, command = lines[5].partition(' bash ')
  env = dict(w.split('=', 1) for w in shlex.split(env_words))
  assert env == {'NAME': 'ltdpt-5', 'ZONE': 'us-east5-b', 'TYPE': 'v6e-8', 'SPOT': '1'}
  args = shlex.split(command)[1:]
  assert args[0] == '--config=configs/cifar100_lt.py:ratio=200'
  assert '--workdir=gs://b/t6/lambda_2.0/seed_0' in args
  script_env = {k: v for k, v in os.environ.items() if k not in ('NAME', 'ZONE', 'TYPE')}
  dry = subprocess.run(['bash', 'launch/tpu_vm.sh', *args], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env={**script_env, **env, 'DRY_RUN': '1',
                                                    'LOGS': str(tmp_path / 'logs')})
  assert dry.returncode == 0, dry.stderr[-3000:]
  assert 'python -m ltdpt_jax.main' in dry.stdout and 'lambda_2.0/seed_0' in dry.stdout


@pytest.mark.parametrize('args, needle', [
    (['--study=nope'], 'no such study; known: demo_ablation'),
    (['--study=table4', '--config=configs/demo.py'], 'a study names its configs'),
    (['--study=table4', '--cells=fr,xyz'], "no cell 'xyz' in study table4"),
    (['--study=table4', '--config.model.method=fr'], 'model.method is set by the study'),
    (['--study=table4', '--config.model.no_such=1'], 'cell vpt_plain'),
    (['--study=table4', '--config.train.epochs=-1'], 'train.epochs=-1 must be > 0'),
    (['--study=table4', '--launcher=tpu', '--tpu_zone=z', '--tpu_type=v4-8',
      '--workdir=runs/x'], 'must be a gs:// path'),
])
def test_bad_study_input_is_one_line(args, needle):
  out = _ablate(*args, '--dry_run', timeout=120)
  cli_worker.one_error_line(out, 2, needle)


def test_the_gpu_estimate_counts_every_epoch_and_evaluation():
  from ltdpt_jax import models  # pylint: disable=g-import-not-at-top
  from ltdpt_jax.models import flops  # pylint: disable=g-import-not-at-top
  from ltdpt_jax.studies import estimate  # pylint: disable=g-import-not-at-top
  study = spec.load_study('table4')
  c = spec.config_from_args(spec.cell_args(study, study.expand()[3], 0, 'w', []))
  got = estimate.run_flops(c)
  per = flops.analytic_flops(models.build_model(c.model, 100, 224), 224)
  # CIFAR-100-LT at ratio 200 has 9,502 training images (LDAM-DRW's count): 74 batches of 128
  # per epoch, 70 epochs, an evaluation of the 10,000 test images after each.
  assert got['train'] == pytest.approx(70 * 74 * 128 * per['train'], rel=1e-12)
  assert got['eval'] == pytest.approx(70 * 10_000 * per['forward'], rel=1e-12)
  assert 60e9 < per['train'] < 75e9  # ViT-B/16 at 224 px: about 68 GFLOP per image and step
  assert estimate.run_flops(train_utils.tiny_config()) is None
  out = _ablate('--study=table4', '--dry_run', timeout=120)
  hours = sum(estimate.hours(estimate.run_flops(spec.config_from_args(j.args))['total'])
              for j in ablate.jobs_of(study, 'w', [0], []))
  assert f'{hours:.2f} h of one GPU' in out.stdout


def test_paired_differences_and_foreground_shares_against_numpy(tmp_path):
  study = spec.Study(title='P', config='configs/demo.py', paired=(('fr_br', 'vpt'),), cells=(
      spec.Cell('vpt', 'VPT (A)', spec.METHODS['vpt']),
      spec.Cell('fr_br', 'LT-DPT (C)', spec.METHODS['fr_br'])), name='p')
  rng = np.random.default_rng(5)
  acc, share = {}, {}
  wanted = {}
  for cell in study.expand():
    wanted[cell.name] = spec.config_from_args(spec.cell_args(study, cell, 0, 'w', [])).to_dict()
    for seed in range(5):
      acc[cell.name, seed] = rng.uniform(0.5, 0.9, 4)
      share[cell.name, seed] = rng.uniform(0.1, 0.6, 3)
      if cell.name == 'vpt' and seed == 4:
        continue  # a seed only one cell finished is left out of the pairs
      rec = _record(*map(float, acc[cell.name, seed]))
      rec['last_by_evaluator']['attention'] = {
          'gradcam_true': float(share[cell.name, seed][0]),
          'fr_attention': float(share[cell.name, seed][1]),
          'tail_br_attention': float(share[cell.name, seed][2]), 'foreground_area': 0.16}
      config = spec.config_from_args(spec.cell_args(study, cell, seed, 'w', []))
      _run_dir(tmp_path / 'w' / cell.name / f'seed_{seed}', config, results=rec)
  table = report_lib.build(study, report_lib.gather(study, str(tmp_path / 'w'), range(5),
                                                    wanted))
  (p,) = table['paired']
  assert p['seeds'] == [0, 1, 2, 3]
  for i, metric in enumerate(spec.METRICS):
    d = np.array([acc['fr_br', s][i] - acc['vpt', s][i] for s in range(4)])
    assert p[metric]['mean'] == pytest.approx(d.mean(), abs=1e-12)
    assert p[metric]['se'] == pytest.approx(d.std(ddof=1) / 2.0, abs=1e-12)
  fr_br = table['rows'][1]
  assert fr_br['shares']['fr_attention']['mean'] == pytest.approx(
      np.mean([share['fr_br', s][1] for s in range(5)]))
  assert fr_br['shares']['tail_br_attention']['n'] == 5
  assert fr_br['shares']['br_attention'] == {'mean': None, 'std': None, 'n': 0}
  text = report_lib.markdown(table)
  d0 = np.array([acc['fr_br', s][0] - acc['vpt', s][0] for s in range(4)])
  assert (f'Paired, LT-DPT (C) minus VPT (A) over the same 4 seed(s) (mean ± standard error, '
          f'points): top-1 {100 * d0.mean():+.2f} ± {100 * d0.std(ddof=1) / 2:.2f}') in text
  line = next(li for li in text.splitlines() if li.startswith('| LT-DPT (C) | 0.'))
  assert f'| {np.mean([share["fr_br", s][0] for s in range(5)]):.2f} |' in line
  assert line.endswith(f'n/a / n/a / {np.mean([share["fr_br", s][2] for s in range(5)]):.2f} |')


def test_the_background_demos_ablation_at_toy_size(tmp_path):
  """configs/studies/demo_background_ablation.py, two cells and one seed of a tiny model at
  16 px (random init: the study's backbone is not what is tested): the runs use the background
  class set, and the report pairs (C) with (A) and shows where the maps look."""
  toy = ['--config.model.checkpoint=', '--config.model.checkpoint_sha256=',
         '--config.data.image_size=16', '--config.model.vit.patch_size=4',
         '--config.model.vit.hidden_size=32', '--config.model.vit.mlp_dim=64',
         '--config.model.vit.num_heads=2', '--config.model.vit.num_layers=2',
         '--config.model.num_br_blocks=1', '--config.data.num_train_max=40',
         '--config.data.imbalance_ratio=10',
         '--config.data.num_test_per_class=5', '--config.data.batch_size=32',
         '--config.data.eval_batch_size=16', '--config.train.epochs=1',
         '--config.train.drw_epochs=0', '--config.train.plots=False',
         '--config.evals.eval.every_epochs=1']
  workdir = tmp_path / 'bg'
  out = _ablate('--study=demo_background_ablation', '--cells=vpt,fr_br', '--seeds=1',
                f'--workdir={workdir}', *toy)
  assert out.returncode == 0, out.stderr[-3000:]
  config = json.loads((workdir / 'fr_br' / 'seed_0' / 'config.json').read_text())
  assert config['data']['class_set'] == 'background' and config['train']['attention_stats']
  table = json.loads((workdir / 'report.json').read_text())
  (p,) = table['paired']
  runs = _runs(workdir)
  assert p['accuracy']['mean'] == pytest.approx(
      runs['fr_br/seed_0']['accuracy'] - runs['vpt/seed_0']['accuracy'], abs=1e-12)
  assert table['rows'][1]['shares']['fr_attention']['n'] == 1
  assert table['rows'][0]['shares']['br_attention']['n'] == 0  # VPT has no BR prompts
  assert 'Foreground shares (attention evaluator' in out.stdout


def test_parallel_slots_split_the_gpus(monkeypatch):
  assert launchers.device_groups(2, ['0', '1', '2', '3']) == [
      {'CUDA_VISIBLE_DEVICES': '0,1'}, {'CUDA_VISIBLE_DEVICES': '2,3'}]
  assert launchers.device_groups(3, ['4', '5', '6', '7']) == [
      {'CUDA_VISIBLE_DEVICES': '4'}, {'CUDA_VISIBLE_DEVICES': '5'}, {'CUDA_VISIBLE_DEVICES': '6'}]
  assert launchers.device_groups(2, []) == [{}, {}]  # a CPU machine: N processes
  with pytest.raises(ValueError, match='needs at least 3 GPUs'):
    launchers.device_groups(3, ['0', '1'])
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '2,5')
  assert launchers.visible_gpus() == ['2', '5']
