"""Files the project fetches once and keeps: backbone checkpoints and OLTR split files.

`cache_dir()` is the root of every cache ($LTDPT_CACHE_DIR, else $XDG_CACHE_HOME/ltdpt_jax, else
~/.cache/ltdpt_jax); `download` fetches the first mirror that delivers, through pooch, or fails in
one line naming every URL and why, where to place the file by hand and which config key to set;
`fetch_checkpoint` gives a checkpoint as a readable path. NumPy- and JAX-free: the grain workers
import it with the data package.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import re
import shutil
import urllib.parse
import urllib.request
from collections.abc import Sequence

CACHE_ENV = 'LTDPT_CACHE_DIR'
_CHUNK = 1 << 22

# Network behaviour of `download` (module constants, so tests can make them short).
TIMEOUT_S = 60.0  # per connection attempt and per read: a stalled server fails after this
RETRIES = 3       # attempts per http(s) mirror; pooch waits 1 s, then 2 s, between them


class FetchError(RuntimeError):
  """No mirror delivered the file (unreachable, or its SHA-256 was not the expected one)."""


class _NotRetried(Exception):
  """A failure another attempt cannot fix (an HTTP 4xx reply): pooch retries only other errors."""


def cache_dir() -> pathlib.Path:
  """The root of the project's caches: checkpoints sit in it (`<sha1(url)[:12]>_<basename>`),
  split files in `splits/`, the tfds record-name index in `index/`, folder scans in `scans/`, the
  CIFAR-100 archive and its extraction in `cifar100/`."""
  if os.environ.get(CACHE_ENV):
    return pathlib.Path(os.environ[CACHE_ENV])
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


def _reason(e: BaseException) -> str:
  """Why an attempt failed, in one line: HTTP status, both digests, or the underlying error."""
  response = getattr(e, 'response', None)  # requests' HTTPError
  if response is not None:
    return f'HTTP {response.status_code} {response.reason}'
  if isinstance(e, _NotRetried):
    return str(e)
  digests = re.search(r'(\w+) hash of downloaded file .*expected (?:\w+:)?(\w+) but got (\w+)',
                      ' '.join(str(e).split()))
  if isinstance(e, ValueError) and digests:  # pooch's hash mismatch
    return f'{digests[1].lower()} {digests[3]} != expected {digests[2]}'
  for _ in range(8):  # the OS error (refused, timed out, ...) under requests' and urllib3's
    if (e.__cause__ or e.__context__) is None:
      break
    e = e.__cause__ or e.__context__
  return ' '.join(f'{type(e).__name__}: {e}'.split())


class _Mirror:
  """A pooch downloader for one URL that counts its attempts and logs each failed one.

  http(s) goes through `pooch.HTTPDownloader` (a tqdm progress bar on stderr); file:// URLs, which
  pooch has no downloader for, are copied.
  """

  def __init__(self, timeout: float, tries: int):
    self.timeout, self.tries, self.attempts = timeout, tries, 0

  def __call__(self, url: str, output_file: str, pup) -> None:
    import pooch  # pylint: disable=g-import-not-at-top
    self.attempts += 1
    try:
      parsed = urllib.parse.urlparse(url)
      if parsed.scheme == 'file':
        shutil.copyfile(urllib.request.url2pathname(parsed.path), output_file)
      else:
        pooch.HTTPDownloader(progressbar=True, timeout=self.timeout, chunk_size=1 << 20)(
            url, output_file, pup)
    except OSError as e:  # requests' errors are OSErrors
      logging.warning('Attempt %d of %d to download %s failed: %s.', self.attempts, self.tries,
                      url, _reason(e))
      status = e.response.status_code if getattr(e, 'response', None) is not None else None
      if status is not None and status < 500 and status not in (408, 429):
        raise _NotRetried(_reason(e)) from e
      raise


def download(urls: Sequence[str], dest: str | os.PathLike, *, sha256: str | None = None,
             md5: str | None = None, timeout: float | None = None,
             local_copy_key: str | None = None) -> pathlib.Path:
  """Fetches the first of `urls` that works into `dest` and returns `dest`.

  Each mirror goes through a one-file `pooch.Pooch`: an http(s) one gets RETRIES attempts (one
  after an HTTP 4xx reply), a file:// one a single copy. pooch writes a temporary file beside
  `dest` and renames it into place only when its SHA-256 is `sha256` (or its MD5 `md5`, for files
  whose publisher gives only that). An existing `dest` with that digest (any, without one) is
  kept; one with another is downloaded again. Raises FetchError:
  one line naming every URL and why it failed, where to place the file by hand, and
  `local_copy_key` (the config key that can point at a local copy instead).
  """
  # Imported here, not at the top: grain workers import this module and never download.
  import pooch  # pylint: disable=g-import-not-at-top
  pooch.get_logger().setLevel(logging.WARNING)  # its INFO lines say less than this function logs
  dest = pathlib.Path(dest)
  known = (f'sha256:{sha256.lower()}' if sha256 else f'md5:{md5.lower()}' if md5 else None)
  failures = []
  for url in urls:
    tries = 1 if urllib.parse.urlparse(url).scheme == 'file' else RETRIES
    mirror = _Mirror(TIMEOUT_S if timeout is None else timeout, tries)
    pup = pooch.create(path=dest.parent, base_url='', registry={dest.name: known},
                       urls={dest.name: url}, retry_if_failed=tries - 1)
    try:
      pup.fetch(dest.name, downloader=mirror)
    except (_NotRetried, OSError, ValueError) as e:  # requests' errors are OSErrors
      failures.append(f'{url}: {_reason(e)}' + (
          f' (after {mirror.attempts} attempts)' if mirror.attempts > 1 else ''))
      continue
    if mirror.attempts:
      logging.info('Downloaded %s to %s.', url, dest)
    return dest
  by_hand = f'place the file by hand at {dest}' + (
      f', or set {local_copy_key} to a local copy' if local_copy_key else '')
  raise FetchError(f'Could not download {dest.name} (' + '; '.join(failures) + f'): {by_hand}.')


def fetch_checkpoint(url_or_path: str, sha256: str | None = None,
                     cache: str | os.PathLike | None = None) -> str:
  """Returns a readable path for a checkpoint given as a local path, gs:// path or URL.

  * http(s):// and file:// URLs are downloaded once (`download`) into `cache` (default
    `cache_dir()`) under `<sha1(url)[:12]>_<basename>`.
  * Local paths and other schemes (gs://, opened by `etils.epath` when read) are returned as
    they are; with `sha256`, a local one must have that SHA-256 (ValueError naming both digests).
  """
  url_or_path = str(url_or_path)
  want = (sha256 or '').lower() or None
  if is_url(url_or_path):
    root = pathlib.Path(cache) if cache is not None else cache_dir()
    name = os.path.basename(urllib.parse.urlparse(url_or_path).path) or 'checkpoint.npz'
    tag = hashlib.sha1(url_or_path.encode()).hexdigest()[:12]
    return str(download([url_or_path], root / f'{tag}_{name}', sha256=want,
                        local_copy_key='config.model.checkpoint (a local path)'))
  if want and not is_remote(url_or_path):
    if not os.path.exists(url_or_path):
      raise FileNotFoundError(f'Checkpoint {url_or_path!r} does not exist.')
    got = sha256_of(url_or_path)
    if got != want:
      raise ValueError(f'Checkpoint {url_or_path!r} has SHA-256 {got}, expected {want}.')
  return url_or_path
