"""Files the project fetches once and keeps: backbone checkpoints and OLTR split files.

One cache, one download routine, one checksum:

* `cache_dir()`: the root of every cache of the project: `$LTDPT_CACHE_DIR`, else
  `$XDG_CACHE_HOME/ltdpt_jax`, else `~/.cache/ltdpt_jax`. Downloaded checkpoints sit in the root
  (`<sha1(url)[:12]>_<basename>`), split files in `splits/`, the tfds record-name index in
  `index/`. `$LTDPT_JAX_CACHE`, the name the split files used before, still works when
  `$LTDPT_CACHE_DIR` is unset, with a deprecation message.
* `download(urls, dest, sha256=...)`: tries the mirrors in order, streams each into a temporary
  file next to `dest`, checks its SHA-256 and renames it into place, so concurrent processes
  never read a partial file and a bad download never stays behind.
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
import tempfile
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
  """The hex SHA-256 of a local file."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      h.update(chunk)
  return h.hexdigest()


def download(urls: Sequence[str], dest: str | os.PathLike, *, sha256: str | None = None,
             timeout: float = 60.0) -> pathlib.Path:
  """Fetches the first of `urls` that works into `dest` (atomically) and returns `dest`.

  With `sha256`, a mirror whose file has another digest counts as failed (nothing of it is
  kept). Raises FetchError listing every mirror and why it failed.
  """
  dest = pathlib.Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  want = (sha256 or '').lower() or None
  failures = []
  for url in urls:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f'.{dest.name}.', suffix='.part')
    h = hashlib.sha256()
    try:
      with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
        for chunk in iter(lambda: resp.read(_CHUNK), b''):
          h.update(chunk)
          out.write(chunk)
      got = h.hexdigest()
      if want and got != want:
        failures.append(f'{url}: sha256 {got} != expected {want}')
        continue
      os.replace(tmp, dest)
      logging.info('Downloaded %s to %s (sha256 %s).', url, dest, got)
      return dest
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
      failures.append(f'{url}: {type(e).__name__}: {e}')
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  raise FetchError(f'Could not download {dest.name} (tried: ' + '; '.join(failures) + ').')


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
  return str(download([url_or_path], dest, sha256=want))
