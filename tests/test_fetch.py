"""One cache and one download routine for checkpoints and split files (ltdpt_jax/fetch.py)."""

import hashlib
import logging
import pathlib
import time

import pytest

from ltdpt_jax import fetch
from ltdpt_jax.data import splits


@pytest.fixture
def no_cache_env(monkeypatch):
  for name in ('LTDPT_CACHE_DIR', 'LTDPT_JAX_CACHE', 'XDG_CACHE_HOME'):
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


def test_cache_dir_from_the_environment(no_cache_env, tmp_path, caplog):
  no_cache_env.setenv('HOME', str(tmp_path / 'home'))
  assert fetch.cache_dir() == tmp_path / 'home' / '.cache' / 'ltdpt_jax'
  no_cache_env.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert fetch.cache_dir() == tmp_path / 'xdg' / 'ltdpt_jax'
  # The name the split files used before still works, with a deprecation message.
  no_cache_env.setenv('LTDPT_JAX_CACHE', str(tmp_path / 'old'))
  with caplog.at_level(logging.WARNING):
    assert fetch.cache_dir() == tmp_path / 'old'
  assert 'LTDPT_JAX_CACHE is deprecated' in caplog.text and 'LTDPT_CACHE_DIR' in caplog.text
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


def test_download_tries_mirrors_in_order(tmp_path):
  good = tmp_path / 'good.txt'
  good.write_text('payload')
  sha = hashlib.sha256(b'payload').hexdigest()
  bad = tmp_path / 'bad.txt'
  bad.write_text('tampered')
  missing = tmp_path / 'missing.txt'
  dest = tmp_path / 'out' / 'file.txt'
  assert fetch.download([missing.as_uri(), bad.as_uri(), good.as_uri()], dest,
                        sha256=sha) == dest
  assert dest.read_text() == 'payload'
  with pytest.raises(fetch.FetchError) as e:
    fetch.download([missing.as_uri(), bad.as_uri()], tmp_path / 'out' / 'other.txt', sha256=sha)
  msg = str(e.value)
  assert 'missing.txt: FileNotFoundError' in msg and 'bad.txt: sha256' in msg and sha in msg
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['file.txt']  # nothing partial


class _Server:
  """A local HTTP server on 127.0.0.1 whose handler misbehaves as asked (tests only)."""

  def __init__(self, body: bytes, mode: str, failures: int = 10**9):
    import http.server  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    self.requests = 0
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # pylint: disable=invalid-name
        server.requests += 1
        failing = server.requests <= failures
        if failing and mode == 'stall':
          time.sleep(3)  # longer than the client's timeout
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

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/file.bin'
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def quick_network(monkeypatch):
  monkeypatch.setattr(fetch, 'TIMEOUT_S', 1.0)
  monkeypatch.setattr(fetch, 'BACKOFF_S', 0.05)
  monkeypatch.setattr(fetch, 'PROGRESS_EVERY_S', 0.0)


def _refused_url():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return f'http://127.0.0.1:{s.getsockname()[1]}/vit.npz'


@pytest.mark.parametrize('mode,reason', [('refuse', 'ConnectionRefusedError'),
                                         ('stall', 'timed out'), ('drop', 'IncompleteRead')])
def test_unreachable_server_fails_in_one_line_after_retries(quick_network, tmp_path, mode, reason):
  server = None if mode == 'refuse' else _Server(b'x' * 100_000, mode)
  url = _refused_url() if server is None else server.url
  try:
    with pytest.raises(fetch.FetchError) as e:
      fetch.download([url], tmp_path / 'vit.npz', local_copy_key='config.model.checkpoint')
  finally:
    if server is not None:
      server.close()
  msg = str(e.value)
  assert '\n' not in msg and url in msg and reason in msg, msg
  assert f'after {fetch.RETRIES} attempts' in msg
  assert f'place the file by hand at {tmp_path / "vit.npz"}' in msg
  assert 'config.model.checkpoint' in msg
  if server is not None:
    assert server.requests == fetch.RETRIES
  assert list(tmp_path.iterdir()) == []  # no partial file


def test_dropped_connection_is_retried_and_progress_is_logged(quick_network, tmp_path, caplog):
  body = bytes(range(256)) * 40_000  # 10 MB: progress lines
  server = _Server(body, 'drop', failures=1)
  try:
    with caplog.at_level(logging.INFO):
      got = fetch.download([server.url], tmp_path / 'f.bin',
                           sha256=hashlib.sha256(body).hexdigest())
  finally:
    server.close()
  assert got.read_bytes() == body and server.requests == 2
  assert 'retrying in' in caplog.text and 'IncompleteRead' in caplog.text
  assert 'MB/s' in caplog.text and 'ETA' in caplog.text and '10.2 MB (100%)' in caplog.text


def test_http_error_is_not_retried(quick_network, tmp_path):
  import http.server  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  url = f'http://127.0.0.1:{httpd.server_address[1]}/no/such/file.npz'
  try:
    with pytest.raises(fetch.FetchError, match='HTTP 404') as e:
      fetch.download([url], tmp_path / 'x.npz')
  finally:
    httpd.shutdown()
    httpd.server_close()
  assert 'attempts' not in str(e.value)


def test_unreachable_split_file_names_the_local_copy_key(quick_network, tmp_path):
  url = _refused_url()
  with pytest.raises(fetch.FetchError) as e:
    splits.fetch_split_file('Places_LT_train.txt', cache=tmp_path / 'splits', urls=[url])
  msg = str(e.value)
  assert url in msg and str(tmp_path / 'splits' / 'Places_LT_train.txt') in msg
  assert 'config.data.split_dir' in msg
