"""Bad entries in a user's image folders: symbolic link loops and decompression bombs, found by
the scan before any step (named in one line, or skipped and recorded) and never a traceback
(ltdpt_jax/data/files.py, and `resolve_inputs` / `check_files` of ltdpt_jax/tools/predict.py).
The training run that records them in bad_images.txt is tests/test_own_data.py's."""

from __future__ import annotations

import io
import os
import pathlib
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import cli_worker
import image_folders
import train_utils
from ltdpt_jax import checkpoint as ckpt_lib
from ltdpt_jax import train
from ltdpt_jax.data import files
from ltdpt_jax.tools import predict as predict_lib

BOMB_SIZE = (30000, 30000)  # 9e8 pixels: over twice Pillow's limit, so Image.open raises


def write_bomb(path: pathlib.Path, size: tuple[int, int] = BOMB_SIZE) -> pathlib.Path:
  """An 8 x 8 PNG whose IHDR chunk (its CRC fixed) declares `size`: what Pillow's header says."""
  buf = io.BytesIO()
  Image.new('RGB', (8, 8), (200, 30, 30)).save(buf, format='PNG')
  data = bytearray(buf.getvalue())
  assert data[12:16] == b'IHDR'
  data[16:24] = struct.pack('>II', *size)
  data[29:33] = struct.pack('>I', zlib.crc32(bytes(data[12:29])))
  path.write_bytes(bytes(data))
  return path


def add_loops(folder: pathlib.Path) -> list[str]:
  """`folder/loop -> loop` (to itself) and `folder/sub/up -> ..` (back to `folder`); their
  paths."""
  os.symlink('loop', folder / 'loop')
  (folder / 'sub').mkdir(exist_ok=True)
  os.symlink('..', folder / 'sub' / 'up')
  return [str(folder / 'loop'), str(folder / 'sub' / 'up')]


def no_model(monkeypatch) -> None:
  """Building a model or restoring a checkpoint fails the test from here on (the commands check
  their inputs first)."""
  def fail(*args, **kwargs):
    pytest.fail('the model was built or the checkpoint restored before the inputs were checked')
  monkeypatch.setattr(train, 'Setup', fail)
  monkeypatch.setattr(ckpt_lib.Checkpointer, 'restore', fail)


def only_error_line(out, *needles: str) -> str:
  """One 'Error: ' line holding the needles (exit code 2) and nothing else on stderr: no library
  log (Orbax's lines of a restore included)."""
  line = cli_worker.one_error_line(out, 2, *needles)
  assert out.stderr.splitlines() == [line], out.stderr[-3000:]
  return line


@pytest.fixture
def looped(tmp_path):
  """train/ with loops in class_00 and at the top (`self -> .`), and class_01/extra linked to a
  folder outside (2 images; not a loop: followed)."""
  train = tmp_path / 'train'
  image_folders.write_folder(train, [4, 3], size=16)
  loops = add_loops(train / 'class_00')
  os.symlink('.', train / 'self')
  image_folders.write_folder(tmp_path / 'outside', [2], size=16, names=['pics'])
  os.symlink(tmp_path / 'outside' / 'pics', train / 'class_01' / 'extra')
  return train, loops + [str(train / 'self')]


def test_loops_are_found_and_other_linked_folders_followed(looped):
  train, loops = looped
  scan = files.scan_folder(str(train))
  assert scan.class_names == ('class_00', 'class_01')  # `self` is no class
  assert sorted(scan.problems) == sorted(loops)
  assert 'back to' in scan.problems[loops[1]] and 'never reaches' in scan.problems[loops[0]]
  assert np.bincount(scan.labels).tolist() == [4, 5]
  assert sum('/class_01/extra/' in p for p in scan.paths) == 2
  with pytest.raises(files.DataError, match=r"3 file\(s\) under .*train cannot be read: .*"
                                            r"class_00/loop: a symbolic link loop.*on_bad_image="):
    files.without_bad(scan, 'error')
  kept, bad = files.without_bad(scan, 'skip')
  assert kept.paths == scan.paths and sorted(bad) == sorted(loops)


def test_a_bomb_is_found_by_the_header_scan_without_decoding(tmp_path, monkeypatch):
  bomb = write_bomb(tmp_path / 'bomb.png')
  good = tmp_path / 'good.png'
  Image.new('RGB', (8, 8)).save(good)
  with pytest.raises(Image.DecompressionBombError):
    Image.open(bomb)  # what decoding it did
  monkeypatch.setattr(files, '_decode_problem', lambda p: pytest.fail(f'decoded {p}'))
  bad = files.check_images([str(bomb), str(good)], cache=False)
  assert list(bad) == [str(bomb)]
  assert bad[str(bomb)].startswith('too large (30000 x 30000 pixels, over the 89,478,485 of '
                                   'PIL.Image.MAX_IMAGE_PIXELS')
  assert files.declared_size(str(bomb)) == BOMB_SIZE
  with pytest.raises(files.DataError, match=r'1 file\(s\) under .* cannot be read: .*bomb\.png: '
                                            r'too large'):
    files.without_bad(files.Scan((str(bomb),), np.zeros(1, np.int64), ('a',), {}, 'x'), 'error')


@pytest.mark.filterwarnings('ignore::PIL.Image.DecompressionBombWarning')
def test_decoding_over_the_limit_is_our_error_and_the_cache_knows_the_limit(tmp_path,
                                                                           monkeypatch):
  monkeypatch.setenv('LTDPT_CACHE_DIR', str(tmp_path / 'cache'))
  bomb = write_bomb(tmp_path / 'bomb.png')
  with pytest.raises(files.DataError) as e:
    files.decode_image(str(bomb))
  assert 'bomb.png: too large (30000 x 30000 pixels' in str(e.value)
  assert 'DecompressionBombError' not in str(e.value) and '\n' not in str(e.value)
  big = tmp_path / 'big.png'  # 1600 pixels: over a limit of 1000, under Pillow's error at 2000
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(big)
  assert files.check_images([str(big)]) == {}
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
  assert 'too large (40 x 40 pixels' in files.check_images([str(big)])[str(big)]
  with pytest.raises(files.DataError, match=r'big\.png: too large \(40 x 40 pixels'):
    files.decode_image(str(big))


def test_predict_inputs_name_loops_and_bombs(looped, tmp_path):
  train, loops = looped
  with pytest.raises(predict_lib.PredictError, match=r'--images: 2 symbolic link loop\(s\): '
                                                     r'.*class_00/loop.*class_00/sub/up'):
    predict_lib.resolve_inputs([str(train / 'class_00')], ('a', 'b'))
  with pytest.raises(predict_lib.PredictError, match=r'3 symbolic link loop\(s\)'):
    predict_lib.resolve_inputs([str(train)], ('class_00', 'class_01'))  # labelled folders
  bomb = write_bomb(tmp_path / 'bomb.png')
  with pytest.raises(predict_lib.PredictError, match=r'1 file\(s\) are not readable images: '
                                                     r'.*bomb\.png: too large \(30000 x 30000'):
    predict_lib.check_files([str(bomb)])


def test_training_cli_names_a_loop_and_a_bomb_in_one_line(looped, tmp_path):
  """on_bad_image='error': one line before any step (the skipped ones are recorded in
  bad_images.txt: tests/test_own_data.py)."""
  train, loops = looped
  write_bomb(train / 'class_01' / 'bomb.png')
  image_folders.write_folder(tmp_path / 'val', [2, 2], size=16)
  config = train_utils.tiny_config()
  config.data.dataset = 'folder'
  config.data.train_dir, config.data.eval_dir = str(train), str(tmp_path / 'val')
  out = cli_worker.run_cli(cli_worker.cli_command(config, tmp_path / 'run'), timeout=300)
  cli_worker.one_error_line(out, 2, '4 file(s) under', *loops, 'bomb.png: too large',
                            "on_bad_image='skip'")
  assert not (tmp_path / 'run' / 'checkpoints').exists()
