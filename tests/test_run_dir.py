"""A run directory nothing can corrupt or confuse, tried through the CLI as a user would.

Every run trains `train_utils.tiny_config()` (14 steps: checkpoints at 3, 6, 7, 9, 12, 14;
evaluations at 7 and 14). The reference is one
uninterrupted run (`straight`); every damaged, killed, refused or resumed run must end with its
evaluation files byte for byte, or fail with exactly one line and exit code 2.
"""

from __future__ import annotations

import gc
import hashlib
import json
import pathlib
import shutil
import signal
import socket
import subprocess
import time

import pytest

import cli_worker
import fork_server
import npz_utils
import train_utils
from ltdpt_jax import run_dir
from ltdpt_jax import train

STEPS = 14


_config = train_utils.run_config


def _cli(workdir, *extra, config=None, worker=False):
  return cli_worker.cli_command(config or _config(), workdir, *extra, worker=worker)


def _steps(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / 'checkpoints').iterdir()
                if p.name.isdigit())


def _evals_equal(workdir, reference):
  for name in ('eval_7.json', 'eval_14.json'):
    assert (pathlib.Path(workdir) / name).read_bytes() == (reference / name).read_bytes(), name


def _train_records(workdir):
  with open(pathlib.Path(workdir) / 'metrics.jsonl') as f:
    return [r for r in map(json.loads, f) if r['split'] == 'train']


def _tb_events(tb_dir):
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from test_train import _read_tfrecords  # pylint: disable=g-import-not-at-top
  return [event_pb2.Event.FromString(payload)
          for path in sorted(pathlib.Path(tb_dir).glob('events.out.tfevents.*'))
          for payload in _read_tfrecords(path)]


def _tensorboard_view(tb_dir) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} as TensorBoard shows the event files: read in the order they were
  written, a restart marker (SessionLog.START at step s) purging the events after step s."""
  shown: dict[str, dict[int, float]] = {}
  for event in _tb_events(tb_dir):
    if event.HasField('session_log') and event.session_log.status == event.session_log.START:
      for steps in shown.values():
        for step in [s for s in steps if s > event.step]:
          del steps[step]
    for value in event.summary.value:
      shown.setdefault(value.tag, {})[event.step] = value.simple_value
  return shown


def _popen(args, log, **extra_env):
  """`args` started as by subprocess.Popen (forked by tests/fork_server.py), its output to
  the file `log`."""
  env = train_utils.subprocess_env()
  env.update({k: str(v) for k, v in extra_env.items()})
  return fork_server.start(args, env=env, cwd=train_utils.REPO, log=log)


def _wait_for(predicate, proc, log, what, timeout=240):
  """Waits until `predicate()`; fails if `proc` (its output in the file `log`) ends first."""
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, f'ended before {what}: ' + log.read_text()[-3000:]
    assert time.time() < deadline, f'no {what} within {timeout} s'
    time.sleep(0.05)


def _refused(call, *needles: str) -> str:
  """The SetupError message of `call()`: the one line the CLI prints for it with exit code 2
  (`cli.run_guarded`; the subprocess tests here check that path), holding every needle. Cases
  that fail before anything trains run in this process, without a Python start per case."""
  with pytest.raises(run_dir.SetupError) as e:
    call()
  line = str(e.value)
  assert '\n' not in line, line
  for needle in needles:
    assert needle in line, (needle, line)
  return line


@pytest.fixture(scope='module')
def straight(cli_straight):
  return cli_straight.workdir


@pytest.fixture
def stopped_at_7(straight, tmp_path):
  """A copy of the straight run as if killed after its checkpoint of step 7."""
  return cli_worker.copy_killed_after(straight, 7, tmp_path / 'run')


# ---------------------------------------------------------------------------------------------
# One run per workdir; kill -9 during a save.
# ---------------------------------------------------------------------------------------------

def test_second_run_refused_and_kill_9_during_a_save_resumes_exactly(straight, tmp_path):
  """A run hangs half-way through writing its checkpoint of step 9: a second run on the same
  workdir is refused in one line naming the holder, while `--mode=eval` runs beside it and
  evaluates a checkpoint as the straight run did; after kill -9 of the first (its lock goes
  with it) the same command resumes from step 7 and ends like the straight run, each step once
  in metrics.jsonl."""
  workdir, marker = tmp_path / 'run', tmp_path / 'saving'
  log = tmp_path / 'first.log'
  first = _popen(_cli(workdir, worker=True), log, LTDPT_TEST_HANG_IN_SAVE=9,
                 LTDPT_TEST_MARKER=marker)
  try:
    _wait_for(marker.exists, first, log, 'the save of step 9')
    second = cli_worker.run_cli(_cli(workdir), timeout=120)
    line = cli_worker.one_error_line(second, 2, 'is in use by another run',
                                     f'PID {first.pid}', socket.gethostname())
    assert '--workdir' in line
    # --mode=eval may run beside it (docs/run-directory.md: "One run per workdir"), and evaluates as it did.
    record = train.evaluate_checkpoint(_config(), str(workdir), step=7)
    assert record == json.loads((straight / 'eval_7.json').read_text())
    assert first.poll() is None  # neither the refused run nor the evaluation disturbed it
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  assert _steps(workdir) == [3, 6, 7]  # 9 was never completed
  assert any('orbax-checkpoint-tmp' in p.name for p in (workdir / 'checkpoints').iterdir())
  out = cli_worker.run_cli(_cli(workdir))
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'Resumed from the checkpoint of step 7' in out.stderr
  _evals_equal(workdir, straight)
  steps = [r['step'] for r in _train_records(workdir)]
  assert steps == sorted(set(steps)), steps
  assert not any('orbax-checkpoint-tmp' in p.name for p in (workdir / 'checkpoints').iterdir())
  # TensorBoard: the resumed run marks its restart at step 7, so earlier events after it go;
  # what TensorBoard then shows is every record of metrics.jsonl, once.
  starts = [e.step for e in _tb_events(workdir / 'tb') if e.HasField('session_log')
            and e.session_log.status == e.session_log.START]
  assert 7 in starts, starts
  shown = _tensorboard_view(workdir / 'tb')
  for tag, split, key in (('train/loss', 'train', 'loss'), ('eval/accuracy', 'eval', 'accuracy')):
    records = {r['step']: r[key] for r in map(json.loads, open(workdir / 'metrics.jsonl'))
               if r['split'] == split}
    assert shown[tag] == pytest.approx(records), tag


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints.
# ---------------------------------------------------------------------------------------------

def _damage(step_dir: pathlib.Path, kind: str):
  if kind == 'truncated array file':
    # Every OCDBT data file: the biggest alone is not always read (a save can leave a data file
    # that the manifest no longer references, and then the restore rightly succeeds).
    for path in (step_dir / 'state').rglob('d/*'):
      with open(path, 'r+b') as f:
        f.truncate(10)
  elif kind == 'garbage metadata':
    (step_dir / 'meta' / 'metadata').write_text('{not json')
  elif kind == 'deleted manifest':
    (step_dir / 'state' / 'manifest.ocdbt').unlink()
  else:
    raise ValueError(kind)


DAMAGE = ('truncated array file', 'garbage metadata', 'deleted manifest')


def test_every_kind_of_damage_is_told_from_another_model(stopped_at_7):
  """Each kind of damage raises CheckpointDamaged naming the step and the root cause (a resume
  sets it aside); the intact checkpoint of another model raises CheckpointMismatch instead."""
  from ltdpt_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  abstract = train.Setup(_config()).abstract_state()
  other = _config()
  other.model.num_fr_prompts = 3
  other_abstract = train.Setup(other).abstract_state()
  checkpointer = ckpt_lib.Checkpointer(str(stopped_at_7), read_only=True)
  try:
    with pytest.raises(ckpt_lib.CheckpointMismatch, match='params/fr_prompts'):
      checkpointer.restore(6, other_abstract)
    for step, kind in zip((3, 6, 7), DAMAGE):
      _damage(stopped_at_7 / 'checkpoints' / str(step), kind)
      with pytest.raises(ckpt_lib.CheckpointDamaged, match=f'step {step} .* is damaged: its '):
        checkpointer.read_meta(step)
        checkpointer.restore(step, abstract)
  finally:
    checkpointer.close()
    # A failed Orbax restore leaves asyncio tasks whose errors were never retrieved: freed here,
    # not by the cyclic GC at some later allocation, which on Python 3.11 may fall inside another
    # test's ast.literal_eval (np.load) and break it ("AST constructor recursion depth mismatch":
    # the freed task logs its traceback, and formatting it parses source).
    gc.collect()


def _log_of(call, caplog) -> list[str]:
  """The log lines of `call()` run in this process (what the CLI prints to stderr)."""
  caplog.clear()
  with caplog.at_level('INFO'):
    call()
  return [r.getMessage() for r in caplog.records]


def test_damaged_latest_checkpoint_falls_back_to_the_one_before(stopped_at_7, straight, caplog):
  workdir = stopped_at_7
  _damage(workdir / 'checkpoints' / '7', 'truncated array file')
  log = _log_of(lambda: train.train_and_evaluate(_config(), str(workdir)), caplog)
  lines = [l for l in log if 'is damaged' in l]
  assert len(lines) == 1 and 'step 7' in lines[0] and '7.damaged' in lines[0], lines
  assert any('Resumed from the checkpoint of step 6' in l for l in log), log
  assert (workdir / 'checkpoints' / '7.damaged').is_dir()  # kept, never chosen again
  _evals_equal(workdir, straight)


def test_damaged_final_checkpoint_is_resumed_past_not_taken_as_finished(straight, tmp_path,
                                                                         caplog):
  """A finished run whose last checkpoint is damaged: the train command does not call it
  finished, sets the checkpoint aside, resumes from the one before and ends like the straight
  run."""
  workdir = tmp_path / 'run'
  shutil.copytree(straight, workdir)
  _damage(workdir / 'checkpoints' / str(STEPS), 'truncated array file')
  log = _log_of(lambda: train.train_and_evaluate(_config(), str(workdir)), caplog)
  assert not any('has finished' in l for l in log), log
  lines = [l for l in log if 'is damaged' in l]
  assert len(lines) == 1 and f'step {STEPS}' in lines[0], lines
  assert any('Resumed from the checkpoint of step 12' in l for l in log), log
  assert (workdir / 'checkpoints' / f'{STEPS}.damaged').is_dir() and STEPS in _steps(workdir)
  _evals_equal(workdir, straight)


def test_no_restorable_checkpoint_and_eval_of_a_damaged_step(stopped_at_7):
  workdir = stopped_at_7
  _damage(workdir / 'checkpoints' / '7', 'truncated array file')
  _refused(lambda: train.evaluate_checkpoint(_config(), str(workdir), step=7),
           'step 7', 'is damaged', 'steps that can: [3, 6]')
  assert (workdir / 'checkpoints' / '7').is_dir()  # eval mode moves nothing
  for step in (3, 6):
    _damage(workdir / 'checkpoints' / str(step), 'deleted manifest')
  _refused(lambda: train.train_and_evaluate(_config(), str(workdir)),
           'No checkpoint in', 'can be restored', 'steps [3, 6, 7] are damaged', 'new --workdir')
  assert _steps(workdir) == []  # nothing trained from scratch
  assert not (workdir / 'eval_14.json').exists()


# ---------------------------------------------------------------------------------------------
# Config drift and the backbone's digest.
# ---------------------------------------------------------------------------------------------

def test_config_drift_refused_allowed_or_accepted_and_recorded(stopped_at_7, straight, caplog):
  workdir = stopped_at_7
  changed = _config()
  changed.optim.lr = 0.1
  _refused(lambda: train.train_and_evaluate(changed, str(workdir)),
           'optim.lr 0.05 -> 0.1', 'config.json', '--allow_config_change')
  assert _steps(workdir) == [3, 6, 7]
  # Allowed: how often it logs and saves. The run goes on, says so and records it.
  periods = _config()
  periods.train.log_every_steps = 3
  periods.train.checkpoint_every_steps = 4
  log = _log_of(lambda: train.train_and_evaluate(periods, str(workdir)), caplog)
  assert any('train.checkpoint_every_steps 3 -> 4' in l for l in log), log
  _evals_equal(workdir, straight)
  history = [json.loads(l) for l in (workdir / 'config_changes.jsonl').read_text().splitlines()]
  assert history[-1]['accepted'] == 'allowed' and history[-1]['resumed_at_step'] == 7
  assert history[-1]['changes']['train.log_every_steps'] == [2, 3]
  assert json.loads((workdir / 'config.json').read_text())['train']['log_every_steps'] == 3


def test_another_model_is_one_line_even_when_accepted(stopped_at_7):
  workdir = stopped_at_7
  changed = _config()
  changed.model.num_fr_prompts = 3
  _refused(lambda: train.train_and_evaluate(changed, str(workdir)),
           'model.num_fr_prompts 2 -> 3', '--allow_config_change')
  out = cli_worker.run_cli(_cli(workdir, '--allow_config_change', config=changed))
  line = cli_worker.one_error_line(out, 2, 'holds other arrays', 'params/fr_prompts',
                                   'config.json')
  assert 'strict' not in line and 'asyncio' not in out.stderr
  assert _steps(workdir) == [3, 6, 7] and not list(workdir.glob('checkpoints/*.damaged'))


def test_allow_config_change_records_what_ran(stopped_at_7):
  """(The augmentation's crop range: a change of what runs that compiles nothing new.)"""
  workdir = stopped_at_7
  changed = _config()
  changed.data.crop_min_scale = 0.5
  train.train_and_evaluate(changed, str(workdir), allow_config_change=True)
  assert json.loads((workdir / 'config.json').read_text())['data']['crop_min_scale'] == 0.5
  history = [json.loads(l) for l in (workdir / 'config_changes.jsonl').read_text().splitlines()]
  assert history == [dict(history[0], accepted='--allow_config_change', resumed_at_step=7,
                          changes={'data.crop_min_scale': [0.08, 0.5]})]
  meta = json.loads((workdir / 'checkpoints' / '14' / 'meta' / 'metadata').read_text())
  assert meta['config']['data']['crop_min_scale'] == 0.5  # later resumes compare with what ran


def test_another_backbone_file_of_the_same_shapes_is_refused(tmp_path):
  """A run records its backbone file's SHA-256; a resume or an evaluation with another file
  of the same architecture (another pretraining, a re-downloaded cache entry) is refused."""
  arch = dict(patch=4, width=32, depth=2, heads=2, mlp=64, grid=4, num_classes=None)
  a, b = tmp_path / 'a.npz', tmp_path / 'b.npz'
  npz_utils.write_random_checkpoint(a, seed=1, **arch)
  npz_utils.write_random_checkpoint(b, seed=2, **arch)
  digest_a, digest_b = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b))
  config = _config()
  config.train.epochs, config.train.drw_epochs = 1, 0
  workdir = tmp_path / 'run'

  def with_backbone(path):
    c = config.copy_and_resolve_references()
    c.model.checkpoint = str(path)
    return c

  train.train_and_evaluate(with_backbone(a), str(workdir))
  assert json.loads((workdir / 'run_info.json').read_text())['backbone_sha256'] == digest_a
  shutil.rmtree(workdir / 'checkpoints' / '7')  # as if stopped before its last step
  out = cli_worker.run_cli(_cli(workdir, config=with_backbone(b)))
  cli_worker.one_error_line(out, 2, digest_a, digest_b, 'config.model.checkpoint')
  with pytest.raises(run_dir.SetupError, match=f'{digest_b}.*{digest_a}'):
    train.evaluate_checkpoint(with_backbone(b), str(workdir), step=6)
  shutil.copy(a, tmp_path / 'moved.npz')  # the same file elsewhere: fine
  results = train.train_and_evaluate(with_backbone(tmp_path / 'moved.npz'), str(workdir))
  assert results['last']['step'] == 7


# ---------------------------------------------------------------------------------------------
# OS failures.
# ---------------------------------------------------------------------------------------------

def _try_mount_tmpfs(path: pathlib.Path, size: str, read_only: bool = False) -> bool:
  path.mkdir(parents=True, exist_ok=True)
  opts = f'size={size}' + (',ro' if read_only else '')
  return subprocess.run(['mount', '-t', 'tmpfs', '-o', opts, 'tmpfs', str(path)],
                        capture_output=True).returncode == 0


def _umount(path: pathlib.Path):
  subprocess.run(['umount', str(path)], capture_output=True)


def test_unwritable_workdirs_fail_in_one_line_before_building(tmp_path):
  regular = tmp_path / 'a_file'
  regular.write_text('x')
  out = cli_worker.run_cli(_cli(regular / 'run'), timeout=120)
  line = cli_worker.one_error_line(out, 2, f'--workdir={regular / "run"}', 'Not a directory')
  assert 'choose another --workdir' in line
  assert 'Parameters:' not in out.stderr  # refused before the model was built
  out = cli_worker.run_cli(_cli(regular), timeout=120)  # the workdir is a regular file
  cli_worker.one_error_line(out, 2, f'--workdir={regular}', 'File exists', 'regular file')
  assert regular.read_text() == 'x'
  # A read-only file system: EROFS injected where the run first writes (cli_worker's
  # LTDPT_TEST_READ_ONLY), and on a read-only tmpfs below.
  out = cli_worker.run_cli(_cli(tmp_path / 'ro' / 'run', worker=True), timeout=120,
                           LTDPT_TEST_READ_ONLY=tmp_path / 'ro')
  cli_worker.one_error_line(out, 2, 'Read-only file system', 'writable', str(tmp_path / 'ro'))
  assert 'Parameters:' not in out.stderr and not (tmp_path / 'ro').exists()


def test_read_only_tmpfs_workdir_fails_in_one_line(tmp_path):
  ro = tmp_path / 'ro'
  if not _try_mount_tmpfs(ro, '1m', read_only=True):
    pytest.skip('mounting a tmpfs needs root (the injected EROFS of the test above still runs)')
  try:
    out = cli_worker.run_cli(_cli(ro / 'run'), timeout=120)
    cli_worker.one_error_line(out, 2, 'Read-only file system', 'writable')
  finally:
    _umount(ro)


@pytest.mark.parametrize('disk', ['injected ENOSPC', 'tmpfs'])
def test_full_disk_is_one_line_and_resumes_exactly_with_space(straight, tmp_path, disk):
  """The run's file system fills up (an ENOSPC injected at the real write of the checkpoint of
  step 9, and a 200 KiB tmpfs where one can be mounted): one line naming the path and the fix,
  exit code 2, no traceback from any thread or atexit handler; moved to a disk with space, it
  resumes and ends like the straight run."""
  small = tmp_path / 'small'
  mounted = disk == 'tmpfs' and _try_mount_tmpfs(small, '200k')
  if disk == 'tmpfs' and not mounted:
    pytest.skip('mounting a tmpfs needs root (the injected ENOSPC case still runs)')
  workdir = small / 'run'
  try:
    out = cli_worker.run_cli(_cli(workdir, worker=True),
                             **({} if mounted else {'LTDPT_TEST_ENOSPC_IN_SAVE': 9}))
    line = cli_worker.one_error_line(out, 2, 'No space left on device', 'free space',
                                     'rerun the same command to resume', str(workdir))
    assert 'intact' in line
    assert 'Exception ignored' not in out.stderr
    moved = tmp_path / 'moved'
    shutil.copytree(workdir, moved, ignore=shutil.ignore_patterns('.lock'))
  finally:
    if mounted:
      _umount(small)
  train.train_and_evaluate(_config(), str(moved))
  _evals_equal(moved, straight)
  steps = [r['step'] for r in _train_records(moved)]
  assert steps == sorted(set(steps)), steps


@pytest.mark.parametrize('hook,step', [('LTDPT_TEST_DELETE_WORKDIR_IN_SAVE', 6),
                                       ('LTDPT_TEST_DELETE_WORKDIR_AFTER_SAVE', 3)])
def test_workdir_deleted_during_a_run_is_one_true_line(tmp_path, hook, step):
  """The workdir deleted while a checkpoint is being written, or between two saves (3 and 6,
  with no evaluation between them to notice): one line, exit code 2, no traceback from any
  thread, no claim that a checkpoint is intact, and no half-empty workdir written anew."""
  workdir = tmp_path / 'run'
  out = cli_worker.run_cli(_cli(workdir, worker=True), **{hook: step})
  line = cli_worker.one_error_line(out, 2, 'vanished', 'no checkpoint is left', 'rerun')
  assert 'intact' not in line
  assert not workdir.exists()


# ---------------------------------------------------------------------------------------------
# Signals.
# ---------------------------------------------------------------------------------------------

def test_ctrl_c_saves_a_checkpoint_and_stops_with_exit_75(tmp_path):
  """Like SIGTERM (whose resume test_train checks to the last bit): a Ctrl-C once step 3 is done
  (the process sends it to itself) stops the run after the next step with a checkpoint of that
  step (4, which no schedule saves) and the resume hint."""
  workdir = tmp_path / 'run'
  out = cli_worker.run_cli(_cli(workdir, worker=True), LTDPT_TEST_SIGINT_AT_STEP=3)
  log = out.stdout + out.stderr
  assert out.returncode == 75, log[-3000:]
  assert 'LTDPT_TEST_SIGINT_AT_STEP=3: sending SIGINT' in log
  assert 'Traceback' not in log and 'KeyboardInterrupt' not in log
  assert 'SIGINT received: saving a checkpoint' in log
  stopped = max(_steps(workdir))
  assert 3 <= stopped < STEPS and stopped == 4
  assert f'Stopped at step {stopped} after a checkpoint; rerun the same command to resume' in log
  assert int(cli_worker.restore_state(workdir)[0]['step']) == stopped


def test_second_ctrl_c_stops_at_once(tmp_path):
  """A first Ctrl-C once step 1 is done, a second one while the stop's checkpoint (of step 2) is
  half written and its save hangs (both sent by the process to itself): the run does not wait
  for the save; it stops at once with exit code 130 and one line."""
  workdir = tmp_path / 'run'
  out = cli_worker.run_cli(_cli(workdir, worker=True), timeout=300,
                           LTDPT_TEST_SIGINT_AT_STEP=1, LTDPT_TEST_SIGINT_IN_SAVE='any')
  log = out.stdout + out.stderr
  assert out.returncode == 130, log[-3000:]
  assert 'SIGINT received: saving a checkpoint' in log  # the first one asked for a checkpoint
  second = 'LTDPT_TEST_SIGINT_IN_SAVE=any: sending SIGINT to this process in the save of step 2'
  assert second in log
  errors = [l for l in log.splitlines() if l.startswith('Error: ')]
  assert len(errors) == 1 and 'second Ctrl-C' in errors[0] and 'Traceback' not in log
  assert _steps(workdir) == []  # the half-written checkpoint of step 2 is no checkpoint


# ---------------------------------------------------------------------------------------------
# Files that are not checkpoints, and URLs that cannot be reached.
# ---------------------------------------------------------------------------------------------

def test_not_an_npz_is_one_line(tmp_path):
  out = cli_worker.run_cli(_cli(tmp_path / 'run', '--config.model.checkpoint=/etc/passwd'),
                           timeout=120)
  line = cli_worker.one_error_line(out, 2, '/etc/passwd', 'official',
                                   'vision_transformer .npz', 'config.model.checkpoint')
  assert 'pickle' not in line.lower()
  assert not (tmp_path / 'run').exists()


def test_unreachable_checkpoint_url_is_one_line(tmp_path):
  """(Retries of refused, stalled and dropped connections: tests/test_fetch.py.)"""
  import http.server  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  url = f'http://127.0.0.1:{httpd.server_address[1]}/no/such/vit.npz'
  try:
    out = cli_worker.run_cli(_cli(tmp_path / 'run', f'--config.model.checkpoint={url}'),
                             timeout=180, LTDPT_CACHE_DIR=tmp_path / 'cache')
  finally:
    httpd.shutdown()
    httpd.server_close()
  line = cli_worker.one_error_line(out, 2, url, 'HTTP 404', str(tmp_path / 'cache'),
                                   'config.model.checkpoint')
  assert 'place the file by hand at' in line
