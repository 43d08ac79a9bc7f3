"""A user's own long-tailed data: image folders and list files, read with Pillow in grain workers.

'folder' (`scan_folder`: ImageFolder layout) and 'list' (`read_list`: OLTR lines or a CSV) find
the images; `check_images` and `without_bad` catch damaged files before any step; `open_image`
and `decode_image` give every image as 8-bit RGB; `ImageFiles` is the random-access source. The
train and eval transforms of the tfds datasets follow, so the saliency is computed on the view
the model sees.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import hashlib
import json
import logging
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image
from PIL import ImageOps

from ltdpt_jax import fetch

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp')
ON_BAD_IMAGE = ('error', 'skip')
BACKGROUND = (255, 255, 255)  # what transparent pixels are composited on


class DataError(ValueError):
  """A folder or list file that cannot be used as given (one line naming it and the fix).

  Raised before any step: a missing or empty directory, a class folder with no images, an eval
  class the train folder does not have, a list line that does not parse or names a missing file.
  """


@dataclasses.dataclass(frozen=True)
class Scan:
  """What a scan found: image paths (absolute), their labels, the class names, what it skipped."""
  paths: tuple[str, ...]
  labels: np.ndarray
  class_names: tuple[str, ...]
  ignored: dict[str, int]  # 'hidden', 'not an image': counts
  where: str               # the folder or list file, for messages
  # {path: problem} of what the listing found bad (symbolic link loops); `without_bad` handles
  # them with the unreadable images.
  problems: dict[str, str] = dataclasses.field(default_factory=dict)


def is_image_name(name: str) -> bool:
  return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_images(folder: str, ignored: dict[str, int] | None = None,
                problems: dict[str, str] | None = None, above: frozenset = frozenset()
                ) -> list[str]:
  """Image files below `folder` (recursive, sorted), listed with `os.scandir` (no decoding).

  Extensions `IMAGE_EXTENSIONS` match case-insensitively; hidden files and folders (starting with
  '.') and files of other extensions are skipped, and `ignored` counts them ('hidden', 'not an
  image') for the log. Symbolic links to folders are followed, except those that loop (back to a
  folder above them, or to themselves): `problems` gets {link: what is wrong} of those. `above`:
  the folders above `folder` that count too ({(st_dev, st_ino)}, e.g. the classes' root).
  """
  ignored = {} if ignored is None else ignored
  problems = {} if problems is None else problems
  out, stack = [], [(folder, above | {_folder_id(folder)})]
  while stack:
    current, chain = stack.pop()  # `chain`: the folders the walk came through, itself included
    with os.scandir(current) as it:
      entries = sorted(it, key=lambda e: e.name)
    subdirs = []
    for e in entries:
      if e.name.startswith('.'):
        ignored['hidden'] = ignored.get('hidden', 0) + 1
      elif loop := symlink_loop(e, chain):
        problems[e.path] = loop
      elif is_folder(e):
        subdirs.append((e.path, chain | {_folder_id(e.path)}))
      elif is_image_name(e.name):
        out.append(e.path)
      else:
        ignored['not an image'] = ignored.get('not an image', 0) + 1
    stack.extend(reversed(subdirs))
  return sorted(out)


def _folder_id(path: str) -> tuple[int, int]:
  st = os.stat(path)
  return st.st_dev, st.st_ino


def is_folder(entry: os.DirEntry) -> bool:
  """Whether a directory entry is a folder or a link to one (False for a link that loops)."""
  try:
    return entry.is_dir(follow_symlinks=True)
  except OSError:
    return False


def symlink_loop(entry: os.DirEntry, above: frozenset = frozenset()) -> str | None:
  """What is wrong with a symbolic link that loops: to itself (or a chain of links back to
  itself), or to one of the folders `above` it ({(st_dev, st_ino)}); None for any other entry."""
  if not entry.is_symlink():
    return None
  try:
    st = os.stat(entry.path)
  except OSError as e:
    if e.errno != errno.ELOOP:
      return None  # a dangling link: listed (and found unreadable) or ignored, like any file
    return (f'a symbolic link loop (-> {os.readlink(entry.path)}, which never reaches a file or '
            'folder)')
  if (st.st_dev, st.st_ino) not in above:
    return None
  return (f'a symbolic link loop (-> {os.readlink(entry.path)}, back to '
          f'{os.path.realpath(entry.path)} above it)')


def _local_only(path: str, key: str) -> str:
  """Image files are read with os.scandir and Pillow: a gs:// path gets one line saying how to
  bring the images to a local (or mounted) file system."""
  if '://' in str(path):
    raise DataError(f'config.data.{key}={path!r} is remote: image folders and list files are '
                    'read from a local or mounted file system. Copy them to local disk '
                    '(gcloud storage cp -r SRC DEST) or mount the bucket (gcsfuse), and point '
                    f'config.data.{key} there.')
  return os.path.abspath(os.path.expanduser(str(path)))


def _class_folders(root: str, key: str, problems: dict[str, str]) -> list[str]:
  if not root:
    raise DataError(f"config.data.{key} is not set; point it at a folder of class folders "
                    "(<dir>/<class name>/<images>).")
  if not os.path.isdir(root):
    raise DataError(f'config.data.{key}={root!r} is not a directory; point it at a folder of '
                    'class folders (<dir>/<class name>/<images>).')
  with os.scandir(root) as it:
    entries = [e for e in it if not e.name.startswith('.')]
  above = frozenset([_folder_id(root)])
  problems.update((e.path, loop) for e in entries if (loop := symlink_loop(e, above)))
  names = sorted(e.name for e in entries if e.path not in problems and is_folder(e))
  if not names:
    raise DataError(f'config.data.{key}={root!r} has no class folders: put each class\'s images '
                    'in <dir>/<class name>/.')
  return names


def scan_folder(root: str, *, class_names: Sequence[str] | None = None, key: str = 'train_dir',
                allow_empty_classes: bool = False) -> Scan:
  """The images of an ImageFolder-layout `root`: `<root>/<class name>/<image files>`.

  Images in nested folders inside a class folder belong to that class (`walk_images`).
  `class_names` fixes the classes and their order (every class folder must be one of them);
  otherwise they are the sorted folder names. `allow_empty_classes` (eval folders): a class of
  `class_names` may have no folder or no image there.
  """
  root = _local_only(root, key) if root else ''
  problems: dict[str, str] = {}
  folders = _class_folders(root, key, problems)
  names = tuple(class_names) if class_names else tuple(folders)
  index = {n: i for i, n in enumerate(names)}
  unknown = [f for f in folders if f not in index]
  if unknown:
    raise DataError(f'{root} has class folder(s) {unknown[:5]} that the classes do not have '
                    f'({len(names)} classes from '
                    f'{"config.data.class_names" if class_names else "the train folder"}, e.g. '
                    f'{list(names[:5])}); rename or remove them, or list them in '
                    'config.data.class_names.')
  ignored: dict[str, int] = {}
  paths, labels = [], []
  for folder in folders:
    found = walk_images(os.path.join(root, folder), ignored, problems,
                        frozenset([_folder_id(root)]))
    if not found and not allow_empty_classes:
      raise DataError(f'Class folder {os.path.join(root, folder)} has no images (extensions '
                      f'{", ".join(IMAGE_EXTENSIONS)}); add some or remove the folder.')
    paths += found
    labels += [index[folder]] * len(found)
  if not paths:
    raise DataError(f'config.data.{key}={root!r} has no images in its class folders.')
  return Scan(tuple(paths), np.asarray(labels, np.int64), names, ignored, root, problems)


def _parse_lines(path: str) -> list[tuple[int, str, str]]:
  """[(line number, relative path, label text)] of an OLTR list or a `path,label` CSV."""
  with open(path, newline='', encoding='utf-8') as f:
    text = f.read()
  lines = text.splitlines()
  first = next((l for l in lines if l.strip()), '')
  if first.replace(' ', '').lower().startswith('path,label'):
    rows = []
    reader = csv.reader(lines)
    header = [h.strip().lower() for h in next(reader)]
    ip, il = header.index('path'), header.index('label')
    for lineno, row in enumerate(reader, start=2):
      if not row or not ''.join(row).strip():
        continue
      if len(row) <= max(ip, il) or not row[ip].strip() or not row[il].strip():
        raise DataError(f'{path}:{lineno}: malformed CSV row {",".join(row)!r}; expected '
                        "'<path>,<label>' under the header 'path,label'.")
      rows.append((lineno, row[ip].strip(), row[il].strip()))
    return rows
  rows = []
  for lineno, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    parts = line.rsplit(None, 1)
    if len(parts) != 2 or not parts[1].lstrip('-').isdigit() or int(parts[1]) < 0:
      raise DataError(f'{path}:{lineno}: malformed line {line.strip()!r}; expected '
                      "'<relative/path> <non-negative integer label>' (OLTR) or a CSV file "
                      "with the header 'path,label'.")
    rows.append((lineno, parts[0], parts[1]))
  return rows


def read_list(path: str, *, image_root: str = '', class_names: Sequence[str] | None = None,
              key: str = 'train_list') -> Scan:
  """The images a list file names; every file must exist.

  Either OLTR lines `<relative path> <label>` (what ImageNet-LT and Places-LT ship; the label an
  index) or a CSV file with the header `path,label` (the label a class name or an index). Paths
  are relative to `image_root` (default: the list file's folder). Class names: `class_names`,
  else the sorted names of a CSV, else '0'..'K-1'.
  """
  if not path:
    raise DataError(f'config.data.{key} is not set; point it at a list file of '
                    "'<relative/path> <label>' lines or a 'path,label' CSV.")
  path = _local_only(path, key)
  if not os.path.isfile(path):
    raise DataError(f'config.data.{key}={path!r} does not exist.')
  rows = _parse_lines(path)
  if not rows:
    raise DataError(f'List file {path} has no entries.')
  root = _local_only(image_root, 'image_root') if image_root else os.path.dirname(path)
  texts = [t for _, _, t in rows]
  if class_names:
    names = tuple(class_names)
  elif all(t.isdigit() for t in texts):
    names = tuple(str(i) for i in range(max(int(t) for t in texts) + 1))
  else:
    names = tuple(sorted(set(texts)))
  index = {n: i for i, n in enumerate(names)}
  paths, labels = [], []
  for lineno, rel, text in rows:
    if text in index:
      label = index[text]
    elif text.isdigit() and int(text) < len(names):
      label = int(text)
    else:
      raise DataError(f'{path}:{lineno}: label {text!r} is not one of the {len(names)} classes '
                      f'(e.g. {list(names[:5])}); fix the line or config.data.class_names.')
    # Relative to the root; a leading '/' is joined to it too (OLTR), unless it names a file.
    full = rel if os.path.isabs(rel) and os.path.isfile(rel) else os.path.join(root,
                                                                                rel.lstrip('/'))
    if not os.path.isfile(full):
      raise DataError(f'{path}:{lineno}: {rel!r} is not a file under config.data.image_root='
                      f'{root!r} (looked for {full}).')
    paths.append(full)
    labels.append(label)
  return Scan(tuple(paths), np.asarray(labels, np.int64), names, {}, path)


# ---------------------------------------------------------------------------------------------
# Checking and decoding.
# ---------------------------------------------------------------------------------------------

# Formats by their first bytes, and what a complete file of that format ends with.
_MAGIC = ((b'\xff\xd8\xff', 'JPEG'), (b'\x89PNG\r\n\x1a\n', 'PNG'), (b'GIF87a', 'GIF'),
          (b'GIF89a', 'GIF'), (b'BM', 'BMP'), (b'II*\x00', 'TIFF'), (b'MM\x00*', 'TIFF'))
_ENDS = {'JPEG': (b'\xff\xd9', 'no end-of-image marker'), 'PNG': (b'IEND', 'no IEND chunk'),
         'GIF': (b';', 'no trailer')}


def _format_of(head: bytes) -> str | None:
  if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
    return 'WEBP'
  return next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)


def _decode_problem(path: str) -> str | None:
  try:
    with Image.open(path) as im:
      im.load()
  except Exception as e:  # pylint: disable=broad-except  # Pillow raises many kinds
    return f'not a readable image ({type(e).__name__}: {e})'
  return None


def declared_size(path: str, fmt: str | None = None) -> tuple[int, int]:
  """(width, height) as the header of an image file declares it, read by Pillow's parser of its
  format (`fmt`, else found from the first bytes) without decoding, and without the size check
  of `Image.open` (which raises on a decompression bomb before saying its size)."""
  if fmt is None:
    with open(path, 'rb') as f:
      fmt = _format_of(f.read(16))
  Image.init()
  if fmt not in Image.OPEN:
    raise ValueError(f'no header parser for {fmt or "this format"}')
  with Image.OPEN[fmt][0](path) as im:
    return im.size


def _pixel_problem(size: tuple[int, int]) -> str | None:
  """Pillow's limit against decompression bombs (`Image.MAX_IMAGE_PIXELS`) against a size."""
  limit, (width, height) = Image.MAX_IMAGE_PIXELS, size
  if not limit or width * height <= limit:
    return None
  return (f'too large ({width} x {height} pixels, over the {limit:,} of '
          'PIL.Image.MAX_IMAGE_PIXELS: a decompression bomb?)')


def _size_problem(path: str, fmt: str) -> str | None:
  """A declared size over Pillow's limit; a header Pillow cannot parse is a problem only when
  the file does not decode either."""
  try:
    size = declared_size(path, fmt)
  except Exception:  # pylint: disable=broad-except  # Pillow raises many kinds
    return _decode_problem(path)
  return _pixel_problem(size)


def _header_problem(path: str) -> str | None:
  """None if the file looks like a complete image, else what is wrong.

  Two small reads and the header: the first bytes must be those of an image format, the size
  the header declares within Pillow's limit (`_pixel_problem`), and a JPEG, PNG or GIF must end
  the way a complete file does (a file cut short is the commonest damage). Only a file whose end
  (or header) looks wrong is decoded, to tell damage from harmless trailing bytes.
  """
  try:
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
      head = f.read(16)
      f.seek(max(0, size - 32))
      tail = f.read()
  except OSError as e:
    return f'not readable ({e.strerror})'
  fmt = _format_of(head)
  if fmt is None:
    return (f'not an image ({size} bytes starting {head[:8]!r}; not JPEG, PNG, GIF, BMP, TIFF or '
            'WEBP)')
  if problem := _size_problem(path, fmt):
    return problem
  end, missing = _ENDS.get(fmt, (b'', ''))
  if end and end not in tail[-16:] and _decode_problem(path):
    return f'a {fmt} cut short ({missing})'
  return None


_CHECKS_VERSION = 2  # one more for each new check: the cached results of older checks are stale


def _listing_key(paths: Sequence[str]) -> str:
  """What a cached check result holds for: the checks (their version, Pillow's pixel limit) and
  the listing (paths, sizes, mtimes)."""
  h = hashlib.sha1(f'checks {_CHECKS_VERSION}, {Image.MAX_IMAGE_PIXELS} px\n'.encode())
  for p in paths:
    try:
      st = os.stat(p)
      stamp = f'{st.st_size}\0{st.st_mtime_ns}'
    except OSError as e:  # a dangling link: the check says so
      stamp = f'errno {e.errno}'
    h.update(f'{p}\0{stamp}\n'.encode())
  return h.hexdigest()


def check_images(paths: Sequence[str], *, cache: bool = True) -> dict[str, str]:
  """{path: problem} of the files that fail the header check (`_header_problem`, no decoding).

  The check catches the commonest damage, a file cut short, and decompression bombs (a header
  declaring more pixels than Pillow decodes, `Image.MAX_IMAGE_PIXELS`). The result for an
  identical listing (paths, sizes, mtimes) is cached under `fetch.cache_dir()/scans`, so a second
  scan of the same files only lists them.
  """
  key = _listing_key(paths) if cache else None
  cache_file = fetch.cache_dir() / 'scans' / f'{key}.json' if key else None
  if cache_file is not None and cache_file.is_file():
    try:
      return json.loads(cache_file.read_text())
    except ValueError:
      pass
  # One Python loop (tens of microseconds a file, the header parse included): threads would only
  # contend for the GIL, and worker processes cost more to start than they save at that speed.
  problems = {p: r for p in paths if (r := _header_problem(p))}
  if cache_file is not None:
    try:
      cache_file.parent.mkdir(parents=True, exist_ok=True)
      tmp = cache_file.with_suffix(f'.tmp{os.getpid()}')
      tmp.write_text(json.dumps(problems))
      tmp.replace(cache_file)
    except OSError as e:  # a read-only cache only costs the next scan its speed
      logging.warning('Could not cache the image check in %s: %s', cache_file, e)
  return problems


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
  if mode.startswith('I;16') or mode == 'I':
    return np.clip(arr.astype(np.float64) / 257.0, 0, 255).round().astype(np.uint8)
  if mode == 'F':
    return (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
  return arr.astype(np.uint8)


def to_rgb_image(im: Image.Image) -> Image.Image:
  """A Pillow image (any mode) as an RGB Pillow image, the same for every image.

  EXIF orientation applied; grayscale and 1-bit repeated, palette through its colours, CMYK by
  Pillow's conversion, 16-bit and 32-bit integer grayscale scaled by 1/257 (65535 -> 255), float
  images clipped to [0, 1] then scaled, and transparency (RGBA, LA, palette with a transparent
  colour) composited on white (`BACKGROUND`).
  """
  try:
    im = ImageOps.exif_transpose(im)
  except Exception:  # pylint: disable=broad-except  # a broken EXIF block: keep it as stored
    pass
  if im.mode == 'P':
    im = im.convert('RGBA' if 'transparency' in im.info else 'RGB')
  if im.mode in ('RGBA', 'LA', 'PA') or (im.mode == 'RGB' and 'transparency' in im.info):
    rgba = im.convert('RGBA')
    background = Image.new('RGBA', rgba.size, BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert('RGB')
  if im.mode in ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I', 'F'):
    gray = _to_uint8(np.asarray(im), im.mode)
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))
  if im.mode != 'RGB':
    im = im.convert('RGB')
  return im


def to_rgb(im: Image.Image) -> np.ndarray:
  """`to_rgb_image` as HWC uint8."""
  return np.asarray(to_rgb_image(im))


# The JPEG comment of a file `tools/store.py` re-encoded at a smaller size: the size (width x
# height) of the image it was made from, on which the training crop is drawn.
STORED_SIZE_TAG = b'ltdpt_jax original size '


def stored_size(im: Image.Image) -> tuple[int, int] | None:
  """(width, height) of the image a stored file was made from (its `STORED_SIZE_TAG` comment),
  or None for any other file."""
  comment = im.info.get('comment', b'')
  if not comment.startswith(STORED_SIZE_TAG):
    return None
  width, height = comment[len(STORED_SIZE_TAG):].split(b'x')
  return int(width), int(height)


def open_image(path: str) -> tuple[Image.Image, tuple[int, int]]:
  """The image file at `path` as an RGB Pillow image (`to_rgb_image`; the first frame of an
  animated GIF), decoded, and the size the training crop is drawn on (`stored_size`, else its
  own). DataError for a file that does not decode or is larger than Pillow's limit
  (`_pixel_problem`), checked before any pixel is decoded."""
  try:
    with Image.open(path) as im:
      if _pixel_problem(im.size):
        raise Image.DecompressionBombError(path)
      im.seek(0)
      im.load()
      rgb = to_rgb_image(im)
      return rgb, stored_size(im) or rgb.size
  except Image.DecompressionBombError as e:
    problem, cause = _bomb_problem(path, e), e
  except Exception as e:  # pylint: disable=broad-except
    problem, cause = f'{type(e).__name__}: {e}', e
  raise DataError(f'Cannot decode image {path}: {problem}. Remove or replace it (config.data.'
                  "on_bad_image='skip' drops the files the scan finds bad).") from cause


def decode_image(path: str) -> np.ndarray:
  """The image file at `path` as HWC uint8 RGB (`open_image`)."""
  return np.ascontiguousarray(np.asarray(open_image(path)[0]))


def _bomb_problem(path: str, error: Exception) -> str:
  """`_pixel_problem` of a file `Image.open` refused as too large (Pillow's own words if its
  header does not parse without `Image.open`)."""
  try:
    return _pixel_problem(declared_size(path)) or str(error)
  except Exception:  # pylint: disable=broad-except
    return f'too large ({error})'


class ImageFiles:
  """Random-access source over image files: [i] -> {'image', 'label', 'id': i}; `labels`.

  The input pipeline calls `open(i)` instead, which keeps the decoded image in Pillow (the
  transforms then run on it without copies to NumPy and back).
  """

  def __init__(self, paths: Sequence[str], labels: np.ndarray):
    if len(paths) != len(labels):
      raise ValueError(f'{len(paths)} paths but {len(labels)} labels.')
    self.paths = tuple(paths)
    self.labels = np.asarray(labels, np.int64)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    return {'image': decode_image(self.paths[index]), 'label': int(self.labels[index]),
            'id': index}

  def open(self, index: int) -> tuple[Image.Image, tuple[int, int]]:
    """`open_image` of file `index`: its RGB Pillow image and the size crops are drawn on."""
    return open_image(self.paths[int(index)])


def without_bad(scan: Scan, on_bad_image: str) -> tuple[Scan, dict[str, str]]:
  """The scan without the files that fail the header check and the links that loop
  (`Scan.problems`) ('skip'), or DataError ('error').

  `on_bad_image` is config.data.on_bad_image: 'error' (default) stops before any step naming the
  bad files; 'skip' drops them (counted in the log; the train loop writes their paths to
  `<workdir>/bad_images.txt`). Also returns {path: problem} of the files dropped.
  """
  if on_bad_image not in ON_BAD_IMAGE:
    raise DataError(f'config.data.on_bad_image={on_bad_image!r} is not valid; choose one of '
                    f'{ON_BAD_IMAGE}.')
  bad = {**scan.problems, **check_images(scan.paths)}
  if bad and on_bad_image == 'error':
    listed = '; '.join(f'{p}: {r}' for p, r in list(bad.items())[:5])
    raise DataError(f'{len(bad)} file(s) under {scan.where} cannot be read: {listed}'
                    f'{" ..." if len(bad) > 5 else ""}. Remove or replace them, or set '
                    "config.data.on_bad_image='skip' to train without them.")
  if not bad:
    return scan, {}
  keep = [i for i, p in enumerate(scan.paths) if p not in bad]
  logging.warning('Skipping %d unreadable file(s) under %s (config.data.on_bad_image=skip).',
                  len(bad), scan.where)
  return dataclasses.replace(scan, paths=tuple(scan.paths[i] for i in keep),
                             labels=scan.labels[keep]), bad
