"""A local directory served as Google Cloud Storage, for the gs:// tests (no network).

`serve(root, monkeypatch)` makes `gs://<bucket>/<path>` mean `<root>/<bucket>/<path>` for
everything the project reaches a bucket through:

* `etils.epath` (our JSON records, metrics, lock, split files; Orbax's metadata and commit
  files): without TensorFlow it opens gs:// through fsspec's `gcs` protocol (gcsfs in real
  runs). `LocalGCS` is registered under `gs` and `gcs`: a real fsspec file system (fsspec's
  `DirFileSystem` over the local one) that answers as gcsfs does (paths without the protocol,
  `bucket/path`; no append);
* TensorStore (the checkpoint's arrays): Orbax builds a `gcs` kvstore spec from the bucket and
  path (`gcs_utils.get_kvstore_for_gcs`); here that spec is TensorStore's `file` driver on the
  same directory, so the arrays land beside the metadata;
* the Cloud Storage client Orbax asks whether the bucket has a hierarchical namespace: a flat
  bucket, as `gcloud storage buckets create` makes by default.

Orbax sees a gs:// path throughout, so it takes its GCS code paths (commit-file atomicity instead
of renames, remote deletion, no append), which is what the tests are for.
"""

from __future__ import annotations

import importlib
import os
import types

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

_PREFIXES = ('gs://', 'gcs://')


def _strip(path):
  if isinstance(path, (list, tuple)):
    return type(path)(_strip(p) for p in path)
  path = os.fspath(path) if not isinstance(path, str) else path
  for prefix in _PREFIXES:
    if path.startswith(prefix):
      return path[len(prefix):]
  return path


class LocalGCS(DirFileSystem):
  """gs://bucket/path -> <root>/bucket/path (`root`: set by `serve`)."""

  protocol = ('gs', 'gcs')
  root = ''
  cachable = False  # another test's root must not be reused

  def __init__(self, *args, **kwargs):
    del args, kwargs  # gcsfs options (e.g. finalize_on_close) mean nothing here
    super().__init__(path=type(self).root, fs=LocalFileSystem(auto_mkdir=True))

  @classmethod
  def _strip_protocol(cls, path):
    return _strip(path).rstrip('/')

  def _join(self, path):
    return super()._join(_strip(path))

  def open(self, path, mode='rb', **kwargs):
    if 'a' in mode:  # Cloud Storage objects cannot be appended to
      raise NotImplementedError(f'append to {path}: not supported by Cloud Storage')
    return super().open(path, mode=mode, **kwargs)

  def _open(self, path, mode='rb', **kwargs):
    if 'a' in mode:
      raise NotImplementedError(f'append to {path}: not supported by Cloud Storage')
    return super()._open(path, mode=mode, **kwargs)


def serve(root, monkeypatch) -> None:
  """Serves `root` as Cloud Storage for this test (see the module docstring)."""
  from etils.epath import backend  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=g-import-not-at-top

  root = str(root)
  os.makedirs(root, exist_ok=True)
  monkeypatch.setattr(LocalGCS, 'root', root)
  fsspec_registry = importlib.import_module('fsspec.registry')  # the module, not its proxy
  for protocol in ('gs', 'gcs'):  # fsspec.filesystem('gs') is this one for the test
    monkeypatch.setitem(fsspec_registry._registry, protocol, LocalGCS)  # pylint: disable=protected-access
  # epath caches its file systems: the next gs:// path must get this one, and the test after
  # this one its own.
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  monkeypatch.setattr(backend.fsspec_backend, '_get_filesystem', fsspec.filesystem)

  def file_kvstore(ckpt_path: str) -> dict:
    bucket, path = gcs_utils.parse_gcs_path(ckpt_path, add_trailing_slash=False)
    return {'driver': 'file', 'path': os.path.join(root, bucket, path)}
  monkeypatch.setattr(gcs_utils, 'get_kvstore_for_gcs', file_kvstore)
  monkeypatch.setattr(gcs_utils, 'get_bucket',
                      lambda name: types.SimpleNamespace(name=name,
                                                         hierarchical_namespace_enabled=False))
