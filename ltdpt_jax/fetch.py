"""Files the project fetches once and keeps: backbone checkpoints and OLTR split files.

One cache, one download routine, one checksum:

* `cache_dir()`: the root of every cache of the project: `$LTDPT_CACHE_DIR`, else
  `$XDG_CACHE_HOME/ltdpt_jax`, else `~/.cache/ltdpt_jax`. Downloaded checkpoints sit in the root
  (`<sha1(url)[:12]>_<basename>`), split files in `splits/`, the tfds record-name index in
  `index/`. `$LTDPT_JAX_CACHE`, the name the split files used before, still works when
  `$LTDPT_CACHE_DIR` is unset, with a deprecation message.
* `download(urls, dest, sha256=...)`: tries the mirrors in order (each a few times, with
  back-off, when the failure is transient), streams each into a temporary file next to `dest`
  with progress in the log, checks its SHA-256 and renames it into place, so concurrent
  processes never read a partial file and a bad download never stays behind. A failure is one
  line: every URL and why, where to place the file by hand, which config key takes a local copy.
* `fetch_checkpoint(url_or_path, sha256)`: a local, gs:// or http(s)/file:// checkpoint as a
  readable path (URLs downloaded once into the cache).

NumPy-free and JAX-free: the data package (which grain workers import) uses it too.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import logging
import os
import pathlib
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence

CACHE_ENV = 'LTDPT_CACHE_DIR'
_DEPRECATED_CACHE_ENV = 'LTDPT_JAX_CACHE'
_CHUNK = 1 << 22


class FetchError(RuntimeError):
  """No mirror delivered the file (unreachable, or its SHA-256 was not the expected one)."""


@functools.lru_cache(maxsize=None)
def _warn_deprecated_env(value: str) -> None:
  logging.warning('$%s is deprecated; set $%s=%s instead (the same cache root).',
                  _DEPRECATED_CACHE_ENV, CACHE_ENV, value)


def cache_dir() -> pathlib.Path:
  """The root of the project's caches (see the module docstring)."""
  if os.environ.get(CACHE_ENV):
    return pathlib.Path(os.environ[CACHE_ENV])
  if os.environ.get(_DEPRECATED_CACHE_ENV):
    _warn_deprecated_env(os.environ[_DEPRECATED_CACHE_ENV])
    return pathlib.Path(os.environ[_DEPRECATED_CACHE_ENV])
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(base) / 'ltdpt_jax'


def is_url(path: str | os.PathLike) -> bool:
  """http://, https:// or file:// (what `download` fetches)."""
  return urllib.parse.urlparse(str(path)).scheme in ('http', 'https', 'file')


def is_remote(path: str | os.PathLike) -> bool:
  """gs://, s3://, ...: a path `etils.epath` opens, on a file system without append."""
  return '://' in str(path)


def sha256_of(path: str | os.PathLike) -> str:
  """The hex SHA-256 of a file (local, or anything `etils.epath` opens)."""
  h = hashlib.sha256()
  if is_remote(path):
    from etils import epath  # pylint: disable=g-import-not-at-top
    opened = epath.Path(path).open('rb')
  else:
    opened = open(path, 'rb')
  with opened as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      h.update(chunk)
  return h.hexdigest()


# Network behaviour of `download` (module constants, so tests can make them short).
TIMEOUT_S = 60.0       # per connection attempt and per read (a stalled server fails after this)
RETRIES = 3            # attempts per mirror for transient failures
BACKOFF_S = 2.0        # wait before the second attempt, doubled for each further one
PROGRESS_EVERY_S = 5.0


def _transient(e: BaseException) -> bool:
  """A failure worth retrying: a timeout, a dropped or reset connection, a 5xx or 429 reply."""
  if isinstance(e, urllib.error.HTTPError):
    return e.code >= 500 or e.code == 429
  if isinstance(e, urllib.error.URLError):
    e = e.reason if isinstance(e.reason, BaseException) else e
  return isinstance(e, (TimeoutError, ConnectionError, http.client.IncompleteRead,
                        http.client.RemoteDisconnected, socket.timeout))


def _reason(e: BaseException) -> str:
  if isinstance(e, urllib.error.HTTPError):
    return f'HTTP {e.code} {e.reason}'
  if isinstance(e, urllib.error.URLError):
    return f'{type(e.reason).__name__ if isinstance(e.reason, BaseException) else "URLError"}: '\
           f'{e.reason}'
  return f'{type(e).__name__}: {e}'


class _Progress:
  """Logs MB done, MB/s and the ETA of a download every PROGRESS_EVERY_S seconds."""

  def __init__(self, name: str, total: int | None):
    self.name, self.total, self.done = name, total, 0
    self.start = self.last = time.monotonic()

  def add(self, n: int, final: bool = False) -> None:
    self.done += n
    now = time.monotonic()
    if not final and now - self.last < PROGRESS_EVERY_S:
      return
    self.last = now
    rate = self.done / max(now - self.start, 1e-9)
    mb = self.done / 1e6
    if self.total:
      eta = (self.total - self.done) / rate if rate > 0 else float('inf')
      logging.info('Downloading %s: %.1f / %.1f MB (%.0f%%), %.1f MB/s, ETA %.0f s.', self.name,
                   mb, self.total / 1e6, 100 * self.done / self.total, rate / 1e6, eta)
    else:
      logging.info('Downloading %s: %.1f MB, %.1f MB/s.', self.name, mb, rate / 1e6)


def _fetch_once(url: str, tmp: str, timeout: float) -> str:
  """Streams `url` into the file `tmp`; returns its SHA-256."""
  h = hashlib.sha256()
  with open(tmp, 'wb') as out, urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
    length = resp.headers.get('Content-Length') if hasattr(resp, 'headers') else None
    progress = _Progress(os.path.basename(urllib.parse.urlparse(url).path) or url,
                         int(length) if length and length.isdigit() else None)
    for chunk in iter(lambda: resp.read(_CHUNK), b''):
      h.update(chunk)
      out.write(chunk)
      progress.add(len(chunk))
    if progress.total is not None and progress.done < progress.total:
      raise http.client.IncompleteRead(b'', progress.total - progress.done)
    if progress.done >= 10 * _CHUNK:
      progress.add(0, final=True)
  return h.hexdigest()


def download(urls: Sequence[str], dest: str | os.PathLike, *, sha256: str | None = None,
             timeout: float | None = None, local_copy_key: str | None = None) -> pathlib.Path:
  """Fetches the first of `urls` that works into `dest` (atomically) and returns `dest`.

  Each mirror is tried up to RETRIES times when the failure is transient (timeout, dropped
  connection, 5xx), waiting BACKOFF_S, then twice that, between attempts; progress (MB, MB/s,
  ETA) is logged for large files. With `sha256`, a mirror whose file has another digest counts
  as failed (nothing of it is kept). Raises FetchError, one line naming every URL and why it
  failed, the path where the file can be placed by hand, and `local_copy_key` (the config key
  that can point at a local copy instead).
  """
  dest = pathlib.Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  want = (sha256 or '').lower() or None
  timeout = TIMEOUT_S if timeout is None else timeout
  failures = []
  for url in urls:
    for attempt in range(RETRIES):
      fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f'.{dest.name}.', suffix='.part')
      os.close(fd)
      try:
        got = _fetch_once(url, tmp, timeout)
        if want and got != want:
          failures.append(f'{url}: sha256 {got} != expected {want}')
          break
        os.replace(tmp, dest)
        logging.info('Downloaded %s to %s (sha256 %s).', url, dest, got)
        return dest
      except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
        if _transient(e) and attempt + 1 < RETRIES:
          wait = BACKOFF_S * 2 ** attempt
          logging.warning('Downloading %s failed (%s); retrying in %.0f s.', url, _reason(e),
                          wait)
          time.sleep(wait)
          continue
        failures.append(f'{url}: {_reason(e)}' + (f' (after {RETRIES} attempts)'
                                                   if _transient(e) else ''))
        break
      finally:
        if os.path.exists(tmp):
          os.remove(tmp)
  by_hand = f'place the file by hand at {dest}' + (
      f', or set {local_copy_key} to a local copy' if local_copy_key else '')
  raise FetchError(f'Could not download {dest.name} (' + '; '.join(failures) + f'): {by_hand}.')


def fetch_checkpoint(url_or_path: str, sha256: str | None = None,
                     cache: str | os.PathLike | None = None) -> str:
  """Returns a readable path for a checkpoint given as a local path, gs:// path or URL.

  * http(s):// and file:// URLs are downloaded once (`download`) into `cache` (default
    `cache_dir()`) under `<sha1(url)[:12]>_<basename>`; a cached file is reused.
  * Local paths and other schemes (gs://, opened by `etils.epath` when read) are returned as
    they are.
  * When `sha256` is given, a local or cached file must have that SHA-256 (ValueError naming
    both digests otherwise); a download with another digest raises FetchError and is deleted.
  """
  url_or_path = str(url_or_path)
  want = (sha256 or '').lower() or None
  if not is_url(url_or_path):
    if want and not is_remote(url_or_path):
      if not os.path.exists(url_or_path):
        raise FileNotFoundError(f'Checkpoint {url_or_path!r} does not exist.')
      got = sha256_of(url_or_path)
      if got != want:
        raise ValueError(f'Checkpoint {url_or_path!r} has SHA-256 {got}, expected {want}.')
    return url_or_path
  root = pathlib.Path(cache) if cache is not None else cache_dir()
  name = os.path.basename(urllib.parse.urlparse(url_or_path).path) or 'checkpoint.npz'
  tag = hashlib.sha1(url_or_path.encode()).hexdigest()[:12]
  dest = root / f'{tag}_{name}'
  if dest.exists():
    if want:
      got = sha256_of(dest)
      if got != want:
        raise ValueError(f'Cached checkpoint {dest} (from {url_or_path}) has SHA-256 {got}, '
                         f'expected {want}; delete it to download again.')
    return str(dest)
  return str(download([url_or_path], dest, sha256=want,
                      local_copy_key='config.model.checkpoint (a local path)'))
