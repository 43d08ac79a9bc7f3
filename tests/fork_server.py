"""Command-line runs of the tests without paying for Python's imports each time.

`run(args, env, cwd, timeout)` behaves as `subprocess.run(args, capture_output=True, text=True)`
for `python -m module ...` and `python script.py ...`: the command runs in a process of its own,
with its own arguments, environment, working directory, output, exit code (negative: the signal
that ended it) and interpreter shutdown; only the libraries are imported already. One server per
pytest worker imports them (jax, flax, optax, Orbax, grain and the package's own library
modules, `PRELOAD`), then forks a process per command. A command of any other form, or whose
environment differs from the server's where imports read it (JAX_*, PYTHON*, TF_*: JAX reads
its options from the environment when it is imported), runs as a real subprocess. One difference
remains: absl's `--helpfull` also lists the flags of the libraries the server imported (grain's,
Orbax's), which a fresh Python running that command might not import; tests of what
`--helpfull` lists run a fresh Python.

As a script, `python tests/fork_server.py SOCKET` is the server: it listens on the Unix socket
SOCKET; per connection it forks a handler that reads one request (a JSON line: argv, env, cwd and
the files for stdout and stderr), forks the command's process, sends its pid, waits for it and
sends its exit code.
"""

from __future__ import annotations

import atexit
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time

# The libraries the command-line modules import; never a module that defines absl flags of an
# entry point (ltdpt_jax.main, ltdpt_jax.tools.*, ltdpt_jax.bench.__main__): run as __main__
# again, it would define them twice.
PRELOAD = ('numpy', 'jax', 'jax.numpy', 'flax.linen', 'optax', 'orbax.checkpoint', 'grain',
           'ml_collections.config_flags', 'absl.app', 'PIL.Image', 'matplotlib.pyplot',
           'ltdpt_jax.train', 'ltdpt_jax.cli', 'ltdpt_jax.maps', 'ltdpt_jax.plot',
           'ltdpt_jax.studies.report', 'ltdpt_jax.studies.launchers')
# Environment variables that modules read when imported.
IMPORT_TIME_ENV = ('JAX_', 'PYTHON', 'TF_')


def _import_time_env(env) -> dict[str, str]:
  return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)}


# --- The client (a pytest worker) ---

_lock = threading.Lock()
_server: dict = {}


def _start(env, cwd) -> str | None:
  """The socket of this process's server (started on first use); None if it has ended."""
  with _lock:
    if 'socket' in _server:
      return _server['socket'] if _server['proc'].poll() is None else None
    folder = tempfile.mkdtemp(prefix='ltdpt_fork_server_')
    path = os.path.join(folder, 'socket')
    log = open(os.path.join(folder, 'server.log'), 'w')  # pylint: disable=consider-using-with
    proc = subprocess.Popen([sys.executable, __file__, path], env=env, cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300  # a safety net: the wait ends when the socket appears
    while not os.path.exists(path) and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.02)
    if not os.path.exists(path):
      proc.kill()
      log.close()
      raise RuntimeError('tests/fork_server.py did not start:\n' +
                         pathlib.Path(log.name).read_text()[-3000:])
    _server.update(socket=path, proc=proc, env=_import_time_env(env))

    def stop():
      proc.terminate()
      proc.wait()
    atexit.register(stop)
    return path


def _command(args) -> tuple[str, str] | None:
  """('module', name) or ('script', path) for `python -m name ...` / `python path ...`."""
  if len(args) < 2 or args[0] != sys.executable:
    return None
  if args[1] == '-m' and len(args) > 2:
    return 'module', args[2]
  if args[1].endswith('.py') and not args[1].startswith('-'):
    return 'script', args[1]
  return None


def run(args, *, env, cwd, timeout) -> subprocess.CompletedProcess:
  """`subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)`,
  forked from the server where the command and environment allow it."""
  args = [str(a) for a in args]
  path = _start(env, cwd) if _command(args) else None
  if path is None or _server['env'] != _import_time_env(env):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)
  with tempfile.TemporaryDirectory(prefix='ltdpt_fork_run_') as folder:
    out, err = os.path.join(folder, 'stdout'), os.path.join(folder, 'stderr')
    with socket.socket(socket.AF_UNIX) as conn:
      conn.connect(path)
      conn.sendall(json.dumps(dict(argv=args, env=dict(env), cwd=str(cwd), out=out,
                                   err=err)).encode() + b'\n')
      reply = conn.makefile('r')
      pid = int(reply.readline())
      conn.settimeout(timeout)
      try:
        line = reply.readline()
      except TimeoutError:
        line = None
      if not line:  # past the timeout, or the handler is gone: the process is killed
        try:
          os.kill(pid, 9)
        except ProcessLookupError:
          pass
        raise subprocess.TimeoutExpired(args, timeout, pathlib.Path(out).read_text(),
                                        pathlib.Path(err).read_text())
    return subprocess.CompletedProcess(args, int(line), pathlib.Path(out).read_text(),
                                       pathlib.Path(err).read_text())


# --- The server ---

def _exec(request):
  """In the forked process: becomes the command (never returns; the interpreter exits as after
  `python -m ...` once the module's code ends)."""
  import runpy  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  signal.signal(signal.SIGCHLD, signal.SIG_DFL)
  os.chdir(request['cwd'])
  os.environ.clear()
  os.environ.update(request['env'])
  import ltdpt_jax  # pylint: disable=g-import-not-at-top
  ltdpt_jax.apply_xla_cpu_flags()  # what importing it does, in this environment
  null = os.open(os.devnull, os.O_RDONLY)
  os.dup2(null, 0)
  for fd, name in ((1, 'out'), (2, 'err')):
    target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(target, fd)
    os.close(target)
  kind, name = _command(request['argv'])
  sys.argv = request['argv'][2 if kind == 'module' else 1:]
  if kind == 'module':
    sys.path[0] = request['cwd']
    runpy.run_module(name, run_name='__main__', alter_sys=True)
  else:
    sys.path[0] = os.path.dirname(os.path.abspath(name))
    runpy.run_path(name, run_name='__main__')
  sys.exit(0)


def _handle(conn):
  """In a process forked per connection: forks the command's process, reports its pid and then
  its exit code, and exits. Returns the request in the command's process only."""
  import signal  # pylint: disable=g-import-not-at-top
  import traceback  # pylint: disable=g-import-not-at-top
  try:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    request = json.loads(conn.makefile('r').readline())
    pid = os.fork()
    if pid == 0:
      conn.close()
      return request
    conn.sendall(f'{pid}\n'.encode())
    _, status = os.waitpid(pid, 0)
    conn.sendall(f'{os.waitstatus_to_exitcode(status)}\n'.encode())
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    os._exit(1)
  os._exit(0)


def serve(path: str) -> dict:
  """Imports PRELOAD, then serves on the socket `path`. Returns a request, in the process that
  is to run it."""
  import importlib  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  for name in PRELOAD:
    importlib.import_module(name)
  ours = {f for f in flags.FLAGS if 'ltdpt_jax' in (
      flags.FLAGS.find_module_defining_flag(f) or '')}
  assert not ours, ours  # the libraries' flags only, never a command's
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  assert not xla_bridge.backends_are_initialized()  # each command starts its own
  assert threading.active_count() == 1  # forking is safe: no other Python thread holds a lock
  signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the handlers are reaped by the kernel
  with socket.socket(socket.AF_UNIX) as listener:
    listener.bind(path + '.tmp')
    listener.listen(16)
    os.rename(path + '.tmp', path)  # the socket appears once it accepts
    while True:
      conn, _ = listener.accept()
      sys.stdout.flush()
      sys.stderr.flush()
      if os.fork() == 0:
        listener.close()
        return _handle(conn)
      conn.close()


if __name__ == '__main__':
  _exec(serve(sys.argv[1]))
