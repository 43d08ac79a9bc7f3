"""One cache and one download routine for checkpoints and split files (ltdpt_jax/fetch.py)."""

import hashlib
import logging
import pathlib

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
  assert 'missing.txt: URLError' in msg and 'bad.txt: sha256' in msg and sha in msg
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['file.txt']  # nothing partial
