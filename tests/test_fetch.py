"""One cache and one download routine (through pooch) for checkpoints and split files."""

import hashlib
import http.server
import logging
import pathlib
import select
import socket
import threading
import time
import types

import pooch
import pytest

from ltdpt_jax import fetch
from ltdpt_jax.data import splits


@pytest.fixture
def no_cache_env(monkeypatch):
  for name in ('LTDPT_CACHE_DIR', 'XDG_CACHE_HOME'):
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


def test_cache_dir_from_the_environment(no_cache_env, tmp_path):
  no_cache_env.setenv('HOME', str(tmp_path / 'home'))
  assert fetch.cache_dir() == tmp_path / 'home' / '.cache' / 'ltdpt_jax'
  no_cache_env.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert fetch.cache_dir() == tmp_path / 'xdg' / 'ltdpt_jax'
  no_cache_env.setenv('LTDPT_CACHE_DIR', str(tmp_path / 'new'))
  assert fetch.cache_dir() == tmp_path / 'new'


def test_checkpoints_and_split_files_share_the_cache(no_cache_env, tmp_path):
  no_cache_env.setenv('LTDPT_CACHE_DIR', str(tmp_path / 'cache'))
  src = tmp_path / 'remote'
  src.mkdir()
  (src / 'Places_LT_val.txt').write_text('train/a/1.jpg 0\n')
  (src / 'vit.npz').write_bytes(b'not read here')
  sha = hashlib.sha256((src / 'Places_LT_val.txt').read_bytes()).hexdigest()
  got = splits.fetch_split_file('Places_LT_val.txt', urls=[(src / 'Places_LT_val.txt').as_uri()],
                                sha256=sha)
  assert got == tmp_path / 'cache' / 'splits' / 'Places_LT_val.txt'
  ckpt = pathlib.Path(fetch.fetch_checkpoint((src / 'vit.npz').as_uri()))
  assert ckpt.parent == tmp_path / 'cache' and ckpt.name.endswith('_vit.npz')
  assert ckpt.read_bytes() == b'not read here'


class _Server:
  """A local HTTP server on 127.0.0.1 whose handler misbehaves as asked (tests only).

  Modes: 'ok' serves `body`; 'stall' answers nothing until the server closes; 'drop' sends a third
  of `body` and closes the connection; 'missing' answers 404. The first `failures` requests
  misbehave, the later ones are served. On exit it first handles every connection a client made
  (a client that gave up on a stalled one may leave it waiting to be accepted), so `requests`
  counts them all.
  """

  def __init__(self, body: bytes, mode: str = 'ok', failures: int = 10**9):
    self.requests = self.accepted = self.handled = 0
    self.closing = threading.Event()
    lock = threading.Lock()
    server = self

    def count(name: str) -> int:
      with lock:
        setattr(server, name, getattr(server, name) + 1)
        return getattr(server, name)

    class Handler(http.server.BaseHTTPRequestHandler):
      def handle(self):
        try:
          super().handle()
        finally:
          count('handled')

      def do_GET(self):  # pylint: disable=invalid-name
        failing = count('requests') <= failures
        if failing and mode == 'stall':
          server.closing.wait()
          return
        if failing and mode == 'missing':
          self.send_error(404)
          return
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if failing and mode == 'drop':
          self.wfile.write(body[:len(body) // 3])  # then the connection closes
          return
        self.wfile.write(body)

      def log_message(self, *args):
        pass

    class Httpd(http.server.ThreadingHTTPServer):
      def get_request(self):
        request = super().get_request()
        count('accepted')
        return request

    self.httpd = Httpd(('127.0.0.1', 0), Handler)
    self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/file.bin'
    threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.closing.set()  # stalled handlers return
    # Every connection left in the listen queue accepted, then (no more to come) every accepted
    # one handled. The bounds only end a broken test.
    self._wait(lambda: not select.select([self.httpd.socket], [], [], 0)[0])
    self.httpd.shutdown()
    self._wait(lambda: self.handled == self.accepted)
    self.httpd.server_close()

  @staticmethod
  def _wait(predicate, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not predicate():
      assert time.monotonic() < deadline, 'connections left unhandled'
      time.sleep(0.01)


@pytest.fixture
def no_waits(monkeypatch):
  """pooch sleeps (`time.sleep` in `pooch.core.stream_download`) between attempts: not here."""
  monkeypatch.setattr(pooch.core, 'time', types.SimpleNamespace(sleep=lambda seconds: None))
  monkeypatch.setattr(fetch, 'TIMEOUT_S', 120.0)  # a bound on a broken test, never reached


@pytest.fixture
def refused_url():
  """A URL on a port of 127.0.0.1 that refuses connections: bound, never listening, and held
  for the test (no other process can take it)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    yield f'http://127.0.0.1:{s.getsockname()[1]}/vit.npz'


def test_download_tries_mirrors_in_order(no_waits, tmp_path):
  good = tmp_path / 'good.txt'
  good.write_text('payload')
  sha = hashlib.sha256(b'payload').hexdigest()
  missing = tmp_path / 'missing.txt'
  dest = tmp_path / 'out' / 'file.txt'
  with _Server(b'tampered') as bad:
    assert fetch.download([missing.as_uri(), bad.url, good.as_uri()], dest, sha256=sha) == dest
    assert dest.read_text() == 'payload'
    with pytest.raises(fetch.FetchError) as e:
      fetch.download([missing.as_uri(), bad.url], tmp_path / 'out' / 'other.txt', sha256=sha)
  msg = str(e.value)
  assert msg.index('missing.txt: FileNotFoundError') < msg.index(f'{bad.url}: sha256 ')
  tampered = hashlib.sha256(b'tampered').hexdigest()
  assert f'sha256 {tampered} != expected {sha} (after {fetch.RETRIES} attempts)' in msg
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['file.txt']  # nothing partial


def test_existing_file_is_kept_unless_its_digest_differs(tmp_path):
  src = tmp_path / 'src.txt'
  src.write_text('new')
  dest = tmp_path / 'dest.txt'
  dest.write_text('old')
  assert fetch.download([src.as_uri()], dest).read_text() == 'old'
  sha = hashlib.sha256(b'new').hexdigest()
  assert fetch.download([src.as_uri()], dest, sha256=sha).read_text() == 'new'


@pytest.mark.parametrize('mode,reason', [('refuse', 'ConnectionRefusedError'),
                                         ('stall', 'timed out'), ('drop', 'IncompleteRead')])
def test_unreachable_server_fails_in_one_line_after_retries(no_waits, monkeypatch, tmp_path,
                                                            refused_url, mode, reason):
  if mode == 'stall':
    # (connect, read), as requests takes them: the connection is made (the listen queue holds
    # it), then the server never answers, so every read times out, however short.
    monkeypatch.setattr(fetch, 'TIMEOUT_S', (120.0, 0.2))
  with _Server(b'x' * 100_000, 'ok' if mode == 'refuse' else mode) as server:
    url = refused_url if mode == 'refuse' else server.url
    with pytest.raises(fetch.FetchError) as e:
      fetch.download([url], tmp_path / 'vit.npz', local_copy_key='config.model.checkpoint')
  msg = str(e.value)
  assert '\n' not in msg and f'{url}: ' in msg and reason in msg, msg
  assert f'after {fetch.RETRIES} attempts' in msg
  assert f'place the file by hand at {tmp_path / "vit.npz"}' in msg
  assert 'config.model.checkpoint' in msg
  assert server.requests == (0 if mode == 'refuse' else fetch.RETRIES)
  assert list(tmp_path.iterdir()) == []  # no partial file


def test_dropped_connection_is_retried_with_a_progress_bar(no_waits, tmp_path, caplog, capsys):
  body = bytes(range(256)) * 40_000  # 10.24 MB
  with _Server(body, 'drop', failures=1) as server, caplog.at_level(logging.WARNING):
    got = fetch.download([server.url], tmp_path / 'f.bin', sha256=hashlib.sha256(body).hexdigest())
  assert got.read_bytes() == body and server.requests == 2
  assert f'Attempt 1 of {fetch.RETRIES} to download {server.url} failed' in caplog.text
  assert 'IncompleteRead' in caplog.text
  err = capsys.readouterr().err  # tqdm's bar: its last state covers the whole file
  assert '100%' in err and '10.2M/10.2M' in err, err[-300:]
  assert list(tmp_path.iterdir()) == [got]


def test_http_error_is_not_retried(no_waits, tmp_path):
  with _Server(b'', 'missing') as server:
    with pytest.raises(fetch.FetchError, match='HTTP 404 Not Found') as e:
      fetch.download([server.url], tmp_path / 'x.npz')
  assert 'attempts' not in str(e.value) and server.requests == 1


def test_unreachable_split_file_names_the_local_copy_key(no_waits, tmp_path, refused_url):
  url = refused_url
  with pytest.raises(fetch.FetchError) as e:
    splits.fetch_split_file('Places_LT_train.txt', cache=tmp_path / 'splits', urls=[url])
  msg = str(e.value)
  assert url in msg and str(tmp_path / 'splits' / 'Places_LT_train.txt') in msg
  assert 'config.data.split_dir' in msg
