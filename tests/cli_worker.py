"""Helpers for the train-loop, CLI and multi-host tests, and a fault-injecting CLI worker.

As a module: `cli_overrides(config)` turns a config into `--config.a.b=v` flags over
configs/demo.py (so a subprocess runs exactly `train_utils.tiny_config()` through the real CLI),
`restore_state(workdir, step)` reads a checkpoint's state with Orbax alone (no `train.Setup`),
`copy_killed_after(workdir, step, to)` copies a finished run as if killed after a checkpoint.

As a script: `python tests/cli_worker.py <ltdpt_jax.main flags>` runs `ltdpt_jax.main` (with
LTDPT_TEST_COMMAND=ablate: `ltdpt_jax.tools.ablate`) with faults injected from the environment,
for the tests only:
  LTDPT_TEST_STEP_DELAY=s        sleep s seconds before each training batch (a slow run to signal)
  LTDPT_TEST_NAN_AFTER_STEP=k    the state after step k (and later) has NaN parameters (divergence)
  LTDPT_TEST_HANG_IN_SAVE=k      the save of step k (k=any: of any step) writes its data-iterator
                                 file, creates the file $LTDPT_TEST_MARKER and hangs (the
                                 checkpoint is half written)
  LTDPT_TEST_ENOSPC_IN_SAVE=k    the save of step k fails with ENOSPC (a full disk, injected)
  LTDPT_TEST_SIGINT_IN_SAVE=k    the save of step k (k=any: of any step) writes its data-iterator
                                 file, then the process sends itself SIGINT and the save hangs (a
                                 Ctrl-C while the checkpoint is half written: after
                                 LTDPT_TEST_SIGINT_AT_STEP, the second one, which must not wait)
  LTDPT_TEST_READ_ONLY=dir       every directory or file created or written under `dir` fails
                                 with EROFS (a read-only file system, injected)
  LTDPT_TEST_SIGTERM_AT_STEP=k   the process sends itself SIGTERM once step k is done (a preemption)
  LTDPT_TEST_SIGINT_AT_STEP=k    the process sends itself SIGINT once step k is done (a Ctrl-C)
  LTDPT_TEST_SIGKILL_AT_STEP=k   the process kills itself (SIGKILL) once step k is done (host lost)
  LTDPT_TEST_DELETE_WORKDIR_IN_SAVE=k      the workdir is deleted during the save of step k
  LTDPT_TEST_DELETE_WORKDIR_AFTER_SAVE=k   the workdir is deleted once the save of step k is
                                           complete (between two saves)
A signal sent "once step k is done" arrives while the loop fetches the batch of step k + 1, so a
single process that SIGTERM or SIGINT stops trains step k + 1 and stops after it. Every signal
hook prints one line naming itself before it sends its signal.
"""

from __future__ import annotations

import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO = 'configs/demo.py'


def cli_overrides(config) -> list[str]:
  """`--config.x=v` flags that turn configs/demo.py into `config` (every differing leaf)."""
  import train_utils  # pylint: disable=g-import-not-at-top
  base = train_utils.leaves(train_utils.load_config('demo').to_dict())
  want = train_utils.leaves(config.to_dict())
  if set(base) != set(want):
    raise ValueError(f'config keys differ from demo.py: {set(base) ^ set(want)}')
  flags = []
  for k, v in sorted(want.items()):
    if v == base[k] and type(v) is type(base[k]):
      continue
    if isinstance(v, (tuple, list)):
      raise ValueError(f'cannot pass the sequence config.{k}={v!r} as a flag')
    flags.append(f'--config.{k}={v!r}' if isinstance(v, float) else f'--config.{k}={v}')
  return flags


def cli_command(config, workdir, *extra: str, worker: bool = False) -> list[str]:
  """The command line that trains/evaluates `config` in `workdir` through the CLI."""
  head = [sys.executable, str(REPO / 'tests' / 'cli_worker.py')] if worker else [
      sys.executable, '-m', 'ltdpt_jax.main']
  return head + [f'--config={REPO / DEMO}', f'--workdir={workdir}', *cli_overrides(config),
                 *extra]


def run_cli(args, *, timeout=600, **extra_env):
  """Runs a command (e.g. `cli_command(...)`) as `subprocess.run` would, a Python command forked
  from tests/fork_server.py's server (its libraries imported once); the CompletedProcess gets
  `.seconds`."""
  import time  # pylint: disable=g-import-not-at-top
  import fork_server  # pylint: disable=g-import-not-at-top
  import train_utils  # pylint: disable=g-import-not-at-top
  env = train_utils.subprocess_env()
  env.update({k: str(v) for k, v in extra_env.items()})
  t0 = time.perf_counter()
  out = fork_server.run(args, env=env, cwd=REPO, timeout=timeout)
  out.seconds = time.perf_counter() - t0
  return out


def one_error_line(out, code: int = 2, *needles: str) -> str:
  """Asserts the process exited with `code`, printed exactly one 'Error: ' line holding every
  needle and no traceback; returns that line."""
  assert out.returncode == code, (out.returncode, out.stderr[-3000:])
  assert 'Traceback' not in out.stderr + out.stdout, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith('Error: ')]
  assert len(errors) == 1, out.stderr[-3000:]
  for needle in needles:
    assert needle in errors[0], (needle, errors[0])
  return errors[0]


def copy_killed_after(workdir, step: int, to) -> pathlib.Path:
  """A copy of a finished run's `workdir` at `to`, as if it had been killed after its checkpoint
  of `step`: the later checkpoints, evaluation records and results.json are gone (the metrics
  already written stay, as after a kill -9; the resume cuts them back)."""
  import shutil  # pylint: disable=g-import-not-at-top
  to = pathlib.Path(to)
  shutil.copytree(workdir, to)
  for path in (to / 'checkpoints').iterdir():
    if path.name.isdigit() and int(path.name) > step:
      shutil.rmtree(path)
  for path in to.glob('eval_*.json'):
    if int(path.stem.split('_')[-1]) > step:
      path.unlink()
  (to / 'results.json').unlink()
  return to


def restore_state(workdir, step: int | None = None):
  """(state pytree of numpy arrays, step) of a checkpoint, read with Orbax alone, on one device.

  The restore target comes from the checkpoint's own array metadata, so this works whatever
  device or process count wrote it. PRNG key arrays come back as their raw uint32 data.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(workdir) / 'checkpoints'
  steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())
  step = steps[-1] if step is None else step
  path = root / str(step) / 'state'
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(path).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          meta)
    state = ckptr.restore(path, target)
  return jax.tree.map(lambda x: np.asarray(jax.random.key_data(x)) if jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) else np.asarray(x), state), step


def _inject_faults():
  """Patches ltdpt_jax as the LTDPT_TEST_* variables ask (see the module docstring)."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import sharding  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import train  # pylint: disable=g-import-not-at-top

  def wait_for_preemption_sync(timeout_s: float = 120):
    # Several processes: JAX's SIGTERM notifier looks for the signal once a second, then every
    # process holds its step count under this key while they agree on the step to stop after
    # (the next one). Waiting here until all did (120 s: a safety net) makes the run stop within
    # a step or two of this one however fast the steps go. One process: the flag is already set.
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    client, n = distributed.global_state.client, distributed.global_state.num_processes
    deadline = time.monotonic() + timeout_s
    while client is not None and time.monotonic() < deadline and len(
        client.key_value_dir_get('PREEMPTION_CURRENT_COUNTER/')) < n:
      time.sleep(0.05)

  def signal_after_step(name: str, step: int):
    # The process sends itself the signal of `name` once step `step` is done: when the loop asks
    # for the batch of the next step (the one whose iterator state has that step's number).
    signum = next(getattr(signal, sig) for sig in ('SIGKILL', 'SIGINT', 'SIGTERM') if sig in name)
    prefetch = sharding.prefetch_to_device

    def prefetch_then_signal(*args, **kwargs):
      for batch, iter_state in prefetch(*args, **kwargs):
        if int(iter_state['step']) == step + 1:
          print(f'{name}={step}: sending {signum.name} to this process.', flush=True)
          os.kill(os.getpid(), signum)
          wait_for_preemption_sync()
        yield batch, iter_state
    sharding.prefetch_to_device = prefetch_then_signal

  delay = float(os.environ.get('LTDPT_TEST_STEP_DELAY', '0'))
  if delay > 0:
    prefetch = sharding.prefetch_to_device

    def slow_prefetch(*args, **kwargs):
      for item in prefetch(*args, **kwargs):
        time.sleep(delay)
        yield item
    sharding.prefetch_to_device = slow_prefetch

  for name in ('LTDPT_TEST_SIGTERM_AT_STEP', 'LTDPT_TEST_SIGINT_AT_STEP',
               'LTDPT_TEST_SIGKILL_AT_STEP'):
    if os.environ.get(name):
      signal_after_step(name, int(os.environ[name]))

  nan_after = os.environ.get('LTDPT_TEST_NAN_AFTER_STEP')
  if nan_after is not None:
    wrap_train_step_with_nan(train, int(nan_after))

  hang, full = os.environ.get('LTDPT_TEST_HANG_IN_SAVE'), os.environ.get('LTDPT_TEST_ENOSPC_IN_SAVE')
  interrupt = os.environ.get('LTDPT_TEST_SIGINT_IN_SAVE')
  if hang or full or interrupt:
    import errno  # pylint: disable=g-import-not-at-top
    from ltdpt_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    save = ckpt_lib.IteratorHandler.save

    def faulty_save(self, directory, item=None, args=None):
      step = pathlib.Path(str(directory)).parent.name.split('.')[0]
      if step == full:
        raise OSError(errno.ENOSPC, 'No space left on device', str(directory))
      save(self, directory, item=item, args=args)
      if interrupt in (step, 'any'):
        print(f'LTDPT_TEST_SIGINT_IN_SAVE={interrupt}: sending SIGINT to this process in the save '
              f'of step {step}.', flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(600)
      if hang in (step, 'any'):
        pathlib.Path(os.environ['LTDPT_TEST_MARKER']).write_text(str(directory))
        time.sleep(600)
    ckpt_lib.IteratorHandler.save = faulty_save

  if os.environ.get('LTDPT_TEST_READ_ONLY'):
    read_only(os.environ['LTDPT_TEST_READ_ONLY'])

  in_save, after_save = (os.environ.get('LTDPT_TEST_DELETE_WORKDIR_IN_SAVE'),
                         os.environ.get('LTDPT_TEST_DELETE_WORKDIR_AFTER_SAVE'))
  if in_save or after_save:
    delete_workdir(in_save, after_save)


def read_only(root: str):
  """Makes every creation of a directory or a file, and every open for writing, under `root`
  fail as on a read-only file system (EROFS), where the run does them (os.mkdir, open)."""
  import builtins  # pylint: disable=g-import-not-at-top
  import errno  # pylint: disable=g-import-not-at-top
  root = os.path.abspath(root)
  mkdir, open_ = os.mkdir, builtins.open

  def under(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(root)

  def refuse(path):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

  def read_only_mkdir(path, *args, **kwargs):
    if under(path):
      refuse(path)
    return mkdir(path, *args, **kwargs)

  def read_only_open(file, mode='r', *args, **kwargs):
    if under(file) and any(c in mode for c in 'wax+'):
      refuse(file)
    return open_(file, mode, *args, **kwargs)
  os.mkdir, builtins.open = read_only_mkdir, read_only_open


def delete_workdir(in_save: str | None, after_save: str | None):
  """Deletes the run's --workdir during the save of step `in_save` (the checkpoint half written),
  or once the save of step `after_save` is complete (before the next one)."""
  import shutil  # pylint: disable=g-import-not-at-top
  from ltdpt_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  workdir = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--workdir='))
  handler_save, checkpointer_save = ckpt_lib.IteratorHandler.save, ckpt_lib.Checkpointer.save

  def save_in_a_vanishing_workdir(self, directory, item=None, args=None):
    if pathlib.Path(str(directory)).parent.name.split('.')[0] == in_save:
      shutil.rmtree(workdir)
    handler_save(self, directory, item=item, args=args)

  def save_then_delete(self, step, *args, **kwargs):
    saved = checkpointer_save(self, step, *args, **kwargs)
    if str(step) == after_save:
      self.wait()
      shutil.rmtree(workdir)
    return saved

  ckpt_lib.IteratorHandler.save = save_in_a_vanishing_workdir
  ckpt_lib.Checkpointer.save = save_then_delete


def wrap_train_step_with_nan(train_module, nan_after: int):
  """Makes `train_module.Setup`'s compiled step return NaN parameters from step `nan_after` on
  (as a learning rate of 1e30 would, without compiling another program)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  setup_cls = train_module.Setup
  poison = jax.jit(lambda state: state.replace(params=jax.tree.map(
      lambda p: jnp.where(state.step >= nan_after, jnp.nan, p), state.params)))

  class _Compiled:
    def __init__(self, compiled):
      self._compiled = compiled

    def __call__(self, state, frozen, batch):
      state, metrics = self._compiled(state, frozen, batch)
      return poison(state), metrics

    def __getattr__(self, name):
      return getattr(self._compiled, name)

  class _Lowered:
    def __init__(self, lowered):
      self._lowered = lowered

    def compile(self):
      return _Compiled(self._lowered.compile())

  class _Step:
    def __init__(self, step):
      self._step = step

    def lower(self, *args):
      return _Lowered(self._step.lower(*args))

  class NaNSetup(setup_cls):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      self.train_step = _Step(self.train_step)

  train_module.Setup = NaNSetup


if __name__ == '__main__':
  sys.path.insert(0, str(REPO))
  _inject_faults()
  if os.environ.get('LTDPT_TEST_COMMAND') == 'ablate':  # a study's runs, in this process
    from ltdpt_jax.tools import ablate  # pylint: disable=g-import-not-at-top
    ablate.run_cli()
  else:
    from ltdpt_jax import main as main_lib  # pylint: disable=g-import-not-at-top
    main_lib.run()
