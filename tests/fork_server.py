"""Command-line runs of the tests without paying for Python's imports each time.

`run(args, env, cwd, timeout)` behaves as `subprocess.run(args, capture_output=True, text=True)`
and `start(args, env, cwd, log)` as `subprocess.Popen(args, stdout=log, stderr=STDOUT)` for
`python -m module ...`, `python script.py ...` and `python -c code ...`: the command runs in a
process of its own, with its own arguments, environment, working directory, output, exit code
(negative: the signal that ended it) and interpreter shutdown; only the libraries are imported
already. A server imports them (jax, flax, optax, Orbax, grain, tensorboardX and the package's
own library modules, `PRELOAD`), then forks a process per command. JAX reads some of its options
from the environment when it is imported, so each pytest worker has one server per environment
of those variables (JAX_*, PYTHON*, TF_*; at most `MAX_SERVERS`, the least recently used stops):
a command with PYTHONPATH=blocker:... or JAX_ENABLE_X64=1 is forked from a server that was
started with it. A command of any other form runs as a real subprocess. One difference remains:
absl's `--helpfull` also lists the flags of the libraries the server imported (grain's, Orbax's),
which a fresh Python running that command might not import; tests of what `--helpfull` lists
run a fresh Python.

As a script, `python tests/fork_server.py SOCKET` is the server: it listens on the Unix socket
SOCKET; per connection it forks a handler that reads one request (a JSON line: argv, env, cwd and
the files for stdout and stderr), forks the command's process, sends its pid, waits for it and
sends its exit code.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import pathlib
import select
import shutil
import signal
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
           'tensorboardX', 'ltdpt_jax.train', 'ltdpt_jax.cli', 'ltdpt_jax.maps', 'ltdpt_jax.plot',
           'ltdpt_jax.studies.report', 'ltdpt_jax.studies.launchers')
# Environment variables that modules read when imported.
IMPORT_TIME_ENV = ('JAX_', 'PYTHON', 'TF_')
MAX_SERVERS = 3  # per pytest worker; each holds the imported libraries (a few hundred MB)


def _import_time_env(env) -> tuple[tuple[str, str], ...]:
  return tuple(sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)))


# --- The client (a pytest worker) ---

_lock = threading.Lock()
# import-time environment -> {'socket', 'proc', 'folder'}, the least recently used first
_servers: collections.OrderedDict = collections.OrderedDict()


def _stop(server):
  server['proc'].terminate()
  server['proc'].wait()
  shutil.rmtree(server['folder'], ignore_errors=True)


def _stop_all():
  while _servers:
    _stop(_servers.popitem(last=False)[1])


atexit.register(_stop_all)


def _socket(env, cwd) -> str | None:
  """The socket of this process's server for `env` (started on first use); None if it ended."""
  key = _import_time_env(env)
  with _lock:
    if key in _servers:
      _servers.move_to_end(key)
      server = _servers[key]
      return server['socket'] if server['proc'].poll() is None else None
    while len(_servers) >= MAX_SERVERS:
      _stop(_servers.popitem(last=False)[1])
    folder = tempfile.mkdtemp(prefix='ltdpt_fork_server_')
    path = os.path.join(folder, 'socket')
    with open(os.path.join(folder, 'server.log'), 'w') as log:
      proc = subprocess.Popen([sys.executable, __file__, path], env=env, cwd=cwd,
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300  # a safety net: the wait ends when the socket appears
    while not os.path.exists(path) and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.02)
    if not os.path.exists(path):
      proc.kill()
      proc.wait()
      text = pathlib.Path(folder, 'server.log').read_text()[-3000:]
      shutil.rmtree(folder, ignore_errors=True)
      raise RuntimeError('tests/fork_server.py did not start:\n' + text)
    _servers[key] = dict(socket=path, proc=proc, folder=folder)
    return path


def _command(args) -> tuple[str, str] | None:
  """('module', name), ('script', path) or ('code', code) for `python -m name ...`,
  `python path ...` or `python -c code ...`."""
  if len(args) < 2 or args[0] != sys.executable:
    return None
  if args[1] in ('-m', '-c') and len(args) > 2:
    return {'-m': 'module', '-c': 'code'}[args[1]], args[2]
  if args[1].endswith('.py') and not args[1].startswith('-'):
    return 'script', args[1]
  return None


def _recv_line(conn: socket.socket, buffer: bytes) -> tuple[bytes, bytes] | None:
  """The next line from the handler (after what `buffer` already holds) and what came after it;
  None if the handler closed the connection first."""
  while b'\n' not in buffer:
    chunk = conn.recv(64)
    if not chunk:
      return None
    buffer += chunk
  line, _, rest = buffer.partition(b'\n')
  return line, rest


class Process:
  """A forked command, used like `subprocess.Popen`: pid, poll(), wait(timeout), send_signal(),
  kill(), terminate(), returncode. `buffer`: what the handler sent after the pid."""

  def __init__(self, args, conn: socket.socket, pid: int, buffer: bytes):
    self.args, self.pid, self.returncode = args, pid, None
    self._conn, self._buffer = conn, buffer

  def _read(self, timeout: float | None) -> bool:
    """Reads the exit code if it comes within `timeout` s (None: waits for it)."""
    if self.returncode is not None:
      return True
    if b'\n' not in self._buffer and not select.select([self._conn], [], [], timeout)[0]:
      return False
    got = _recv_line(self._conn, self._buffer)
    self._conn.close()
    if got is None:  # the handler ended without reporting: the command's fate is unknown
      self._signal(signal.SIGKILL)
      raise RuntimeError(f'tests/fork_server.py lost process {self.pid} of {self.args}')
    self.returncode = int(got[0])
    return True

  def poll(self) -> int | None:
    self._read(0)
    return self.returncode

  def wait(self, timeout: float | None = None) -> int:
    if not self._read(timeout):
      raise subprocess.TimeoutExpired(self.args, timeout)
    return self.returncode

  def _signal(self, sig):
    try:
      os.kill(self.pid, sig)
    except ProcessLookupError:
      pass

  def send_signal(self, sig):
    if self.returncode is None:
      self._signal(sig)

  def kill(self):
    self.send_signal(signal.SIGKILL)

  def terminate(self):
    self.send_signal(signal.SIGTERM)


def _fork(args, env, cwd, out: str, err: str) -> Process | None:
  """The command forked from the server for its environment; None where it cannot be."""
  if not _command(args):
    return None
  path = _socket(env, cwd)
  if path is None:
    return None
  conn = socket.socket(socket.AF_UNIX)
  conn.connect(path)
  conn.sendall(json.dumps(dict(argv=args, env=dict(env), cwd=str(cwd), out=out,
                               err=err)).encode() + b'\n')
  got = _recv_line(conn, b'')
  if got is None:
    conn.close()
    raise RuntimeError(f'tests/fork_server.py did not start {args}')
  return Process(args, conn, int(got[0]), got[1])


def start(args, *, env, cwd, log) -> Process | subprocess.Popen:
  """`subprocess.Popen(args, env=env, cwd=cwd, stdout=<log>, stderr=subprocess.STDOUT)`, the
  output written to the file `log`, forked from a server where the command allows it."""
  args = [str(a) for a in args]
  process = _fork(args, env, cwd, str(log), str(log))
  if process is not None:
    return process
  with open(log, 'w') as f:
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)


def run(args, *, env, cwd, timeout) -> subprocess.CompletedProcess:
  """`subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)`,
  forked from a server where the command allows it."""
  args = [str(a) for a in args]
  with tempfile.TemporaryDirectory(prefix='ltdpt_fork_run_') as folder:
    out, err = os.path.join(folder, 'stdout'), os.path.join(folder, 'stderr')
    process = _fork(args, env, cwd, out, err)
    if process is None:
      return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, check=False)
    try:
      process.wait(timeout)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
      raise subprocess.TimeoutExpired(args, timeout, pathlib.Path(out).read_text(),
                                      pathlib.Path(err).read_text()) from None
    return subprocess.CompletedProcess(args, process.returncode, pathlib.Path(out).read_text(),
                                       pathlib.Path(err).read_text())


# --- The server ---

def _exec(request):
  """In the forked process: becomes the command (never returns; the interpreter exits as after
  `python -m ...` once the command's code ends)."""
  import runpy  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  signal.signal(signal.SIGCHLD, signal.SIG_DFL)
  os.chdir(request['cwd'])
  os.environ.clear()
  os.environ.update(request['env'])
  import ltdpt_jax  # pylint: disable=g-import-not-at-top
  ltdpt_jax.apply_xla_cpu_flags()  # what importing it does, in this environment
  null = os.open(os.devnull, os.O_RDONLY)
  os.dup2(null, 0)
  target = os.open(request['out'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
  os.dup2(target, 1)
  if request['err'] != request['out']:
    os.close(target)
    target = os.open(request['err'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
  os.dup2(target, 2)
  os.close(target)
  kind, what = _command(request['argv'])
  sys.argv = {'module': request['argv'][2:], 'script': request['argv'][1:],
              'code': ['-c', *request['argv'][3:]]}[kind]
  if kind == 'module':
    sys.path[0] = request['cwd']
    runpy.run_module(what, run_name='__main__', alter_sys=True)
  elif kind == 'script':
    sys.path[0] = os.path.dirname(os.path.abspath(what))
    runpy.run_path(what, run_name='__main__')
  else:  # python -c: an empty __main__ module, the working directory ('') first on the path
    sys.path[0] = ''
    main = types.ModuleType('__main__')
    sys.modules['__main__'] = main
    exec(compile(what, '<string>', 'exec'), main.__dict__)  # pylint: disable=exec-used
  sys.exit(0)


def _handle(conn):
  """In a process forked per connection: forks the command's process, reports its pid and then
  its exit code, and exits. Returns the request in the command's process only."""
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
