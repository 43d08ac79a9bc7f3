"""grain pipelines on the synthetic source: transforms, order, host shards, resume, eval padding."""

import math
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

import train_utils
from ltdpt_jax import config_lib
from ltdpt_jax.data import pipeline
from ltdpt_jax.data import sources
from ltdpt_jax.data import transforms

SIZE = 32


def make_config(**data):
  c = config_lib.base_config()
  c.data.dataset = 'synthetic'
  c.data.num_classes = 10
  c.data.imbalance_ratio = 10.0
  c.data.num_train_max = 30
  c.data.num_test_per_class = 7
  c.data.image_size = SIZE
  c.data.batch_size = 24
  c.data.eval_batch_size = 12
  c.data.num_workers = 0
  c.train.seed = 5
  for k, v in data.items():
    c.data[k] = v
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ---------------------------------------------------------------- transforms

def ramp(h, w):
  """A linear ramp, which any normalised bilinear filter reproduces exactly away from borders."""
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  return np.stack([x * 255 / (w - 1), y * 255 / (h - 1), np.full((h, w), 77.0)], -1)


def test_random_resized_crop_params_ranges_and_fallback():
  rng = np.random.default_rng(0)
  areas, ratios = [], []
  for _ in range(2000):
    top, left, h, w = transforms.random_resized_crop_params(120, 200, rng)
    assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 200 and h > 0 and w > 0
    areas.append(h * w / (120 * 200))
    ratios.append(w / h)
  areas, ratios = np.array(areas), np.array(ratios)
  assert areas.min() > 0.08 * 0.9 and areas.max() <= 1.0
  assert ratios.min() > 0.75 * 0.9 and ratios.max() < 4 / 3 * 1.1
  # Square image: a draw (s ~ U(0.08, 1), log r ~ U(log 3/4, log 4/3)) is kept iff the box fits,
  # s * r <= 1 and s / r <= 1, so the kept area's mean is E[s | s <= min(r, 1/r)] (by quadrature).
  s_grid, logr = np.meshgrid(np.linspace(0.08, 1, 2001), np.linspace(np.log(3 / 4), np.log(4 / 3),
                                                                    2001))
  keep = s_grid <= np.minimum(np.exp(logr), np.exp(-logr))
  want = (s_grid * keep).sum() / keep.sum()
  sq = [transforms.random_resized_crop_params(100, 100, rng) for _ in range(3000)]
  assert np.mean([h * w / 1e4 for _, _, h, w in sq]) == pytest.approx(want, abs=0.015)
  # A 10 x 200 image admits no box within the ratio range: torchvision's central fallback.
  assert transforms.random_resized_crop_params(10, 200, rng) == (0, (200 - 13) // 2, 10, 13)
  assert transforms.random_resized_crop_params(200, 10, rng) == ((200 - 13) // 2, 0, 13, 10)


def test_train_transform_resamples_the_box_bilinearly_and_flips():
  img = ramp(60, 90)
  img8 = np.round(img).astype(np.uint8)
  flips = 0
  for seed in range(40):
    out = transforms.train_transform(img8, 48, np.random.default_rng(seed))
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8
    rng = np.random.default_rng(seed)
    top, left, h, w = transforms.random_resized_crop_params(60, 90, rng)
    flip = rng.uniform() < 0.5
    flips += flip
    # Output pixel centre j maps to source coordinate left + (j + 0.5) * w / 48 - 0.5.
    xs = left + (np.arange(48) + 0.5) * w / 48 - 0.5
    ys = top + (np.arange(48) + 0.5) * h / 48 - 0.5
    want = np.stack(np.broadcast_arrays(xs[None, :] * 255 / 89, ys[:, None] * 255 / 59,
                                        np.full((48, 48), 77.0)), -1)
    if flip:
      want = want[:, ::-1]
    inner = (slice(4, -4), slice(4, -4))  # Pillow renormalises its filter at the borders
    np.testing.assert_allclose(out[inner], want[inner], atol=1.6)
  assert 10 < flips < 30


def test_eval_transform_matches_opencv_and_centre():
  assert transforms.eval_resize_size(224) == 256 and transforms.eval_resize_size(32) == 36
  rng = np.random.default_rng(1)
  small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  small = cv2.GaussianBlur(small, (5, 5), 1.5)
  out = transforms.eval_transform(small, 224)
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  ref = cv2.resize(small, (256, 256), interpolation=cv2.INTER_LINEAR)[16:240, 16:240]
  diff = np.abs(out.astype(int) - ref.astype(int))
  assert diff[8:-8, 8:-8].max() <= 2 and diff.mean() < 0.6
  # Downscaling a ramp (non-square) keeps the ramp at the crop's pixel centres.
  img = np.round(ramp(300, 400)).astype(np.uint8)
  out = transforms.eval_transform(img, 64)  # resize to 73 x 73, crop [4:68]
  xs = (np.arange(4, 68) + 0.5) * 400 / 73 - 0.5
  np.testing.assert_allclose(out[10:-10, 10:-10, 0], np.broadcast_to(
      xs[None, 10:-10] * 255 / 399, (44, 44)), atol=1.6)
  gray = transforms.eval_transform(np.full((40, 50), 9, np.uint8), 16)
  assert gray.shape == (16, 16, 3) and np.all(gray == 9)


# ---------------------------------------------------------------- training stream

def test_info_and_batch_contents():
  c = make_config()
  info = pipeline.get_dataset_info(c.data)
  want = [int(30 * 0.1 ** (i / 9)) for i in range(10)]
  assert info.class_counts.tolist() == want and info.class_counts.dtype == np.int64
  assert (info.num_train, info.num_eval, info.num_classes) == (sum(want), 70, 10)
  assert pipeline.steps_per_epoch(c.data, info) == sum(want) // 24
  src = sources.get_sources(c.data).train
  it = pipeline.make_train_iterator(c.data, seed=c.train.seed, process_index=0, process_count=1)
  batch = next(it)
  assert batch['image'].shape == (24, SIZE, SIZE, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].dtype == np.int32 and batch['id'].dtype == np.int64
  assert batch['image'].std() > 10  # real images, not padding
  perm = np.random.default_rng([5, 0x5EED, 0]).permutation(info.num_train)
  np.testing.assert_array_equal(batch['id'], perm[:24])
  np.testing.assert_array_equal(batch['label'], src.labels[batch['id']])
  for q in (0, 13):
    want_img = transforms.train_transform(src[int(perm[q])]['image'], SIZE,
                                          np.random.default_rng([5, 0xA06, 0, q]))
    np.testing.assert_array_equal(batch['image'][q], want_img)


def test_epochs_reshuffle_drop_remainder_and_determinism():
  c = make_config()
  info = pipeline.get_dataset_info(c.data)
  spe = pipeline.steps_per_epoch(c.data, info)
  batches = take(pipeline.make_train_iterator(c.data, seed=c.train.seed, process_index=0, process_count=1), 2 * spe + 1)
  for e in range(2):
    ids = np.concatenate([b['id'] for b in batches[e * spe:(e + 1) * spe]])
    perm = np.random.default_rng([5, 0x5EED, e]).permutation(info.num_train)
    np.testing.assert_array_equal(ids, perm[:spe * 24])  # remainder of each epoch dropped
    assert len(np.unique(ids)) == spe * 24
  assert not np.array_equal(batches[0]['id'], batches[spe]['id'])
  again = take(pipeline.make_train_iterator(c.data, seed=c.train.seed, process_index=0, process_count=1), 3)
  assert_batches_equal(again, batches[:3])
  c2 = make_config()
  c2.train.seed = 6
  other = next(pipeline.make_train_iterator(c2.data, seed=c2.train.seed, process_index=0, process_count=1))
  assert not np.array_equal(other['id'], batches[0]['id'])


def test_host_shards_are_disjoint_slices_of_the_global_batch():
  c = make_config()
  spe = pipeline.steps_per_epoch(c.data, pipeline.get_dataset_info(c.data))
  n = spe + 2  # crosses an epoch boundary
  single = take(pipeline.make_train_iterator(c.data, seed=c.train.seed, process_index=0, process_count=1), n)
  hosts = [take(pipeline.make_train_iterator(c.data, seed=c.train.seed, process_index=h, process_count=3), n)
           for h in range(3)]
  for t in range(n):
    parts = [hosts[h][t] for h in range(3)]
    assert all(p['image'].shape[0] == 8 for p in parts)
    ids = [set(p['id'].tolist()) for p in parts]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for k in single[t]:
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), single[t][k])
  with pytest.raises(ValueError, match='divisible'):
    pipeline.make_train_iterator(c.data, seed=c.train.seed, process_index=0, process_count=5)


def test_resume_from_state_gives_the_same_next_batches():
  c = make_config()
  it = pipeline.make_train_iterator(c.data, seed=c.train.seed, process_index=1, process_count=3)
  take(it, 4)
  state = it.get_state()
  assert state['step'] == 4
  cont = take(it, 3)
  fresh = pipeline.make_train_iterator(c.data, seed=c.train.seed, process_index=1, process_count=3)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 3), cont)
  c2 = make_config()
  c2.train.seed = 9
  with pytest.raises(ValueError, match='same data order'):
    pipeline.make_train_iterator(c2.data, seed=c2.train.seed, process_index=1, process_count=3).set_state(state)


def test_worker_processes_give_the_same_batches_and_resume():
  c = make_config()
  ref = take(pipeline.make_train_iterator(c.data, seed=c.train.seed, process_index=0, process_count=1), 5)
  cw = make_config(num_workers=2)
  it = pipeline.make_train_iterator(cw.data, seed=cw.train.seed, process_index=0, process_count=1)
  try:
    it.set_state({**it.get_state(), 'step': 2})  # a state from any worker count restores
    assert_batches_equal(take(it, 3), ref[2:])
  finally:
    it.close()


def test_orbax_checkpoint_roundtrip(tmp_path):
  import grain  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  c = make_config()
  it = pipeline.make_train_iterator(c.data, seed=c.train.seed, process_index=0, process_count=1)
  take(it, 3)
  assert isinstance(it, grain.DatasetIterator)
  mngr = ocp.CheckpointManager(tmp_path / 'ckpt')
  mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  cont = take(it, 2)
  restored = pipeline.make_train_iterator(c.data, seed=c.train.seed, process_index=0, process_count=1)
  mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  assert restored.step == 3
  assert_batches_equal(take(restored, 2), cont)
  mngr.close()


# ---------------------------------------------------------------- evaluation

@pytest.mark.parametrize('hosts', [1, 3])
def test_eval_counts_every_example_once(hosts):
  c = make_config(eval_batch_size=12 if hosts == 1 else 9)
  info = pipeline.get_dataset_info(c.data)
  src = sources.get_sources(c.data).eval
  per_host = [list(pipeline.make_eval_iterator(c.data, process_index=h, process_count=hosts))
              for h in range(hosts)]
  want_batches = math.ceil(70 / c.data.eval_batch_size)
  assert pipeline.num_eval_batches(c.data, info) == want_batches
  assert all(len(b) == want_batches for b in per_host)
  seen = []
  for batches in per_host:
    for b in batches:
      assert b['image'].shape == (c.data.eval_batch_size // hosts, SIZE, SIZE, 3)
      assert b['mask'].dtype == np.bool_ and b['label'].dtype == np.int32
      seen += b['id'][b['mask']].tolist()
      assert np.all(b['id'][~b['mask']] == -1) and np.all(b['image'][~b['mask']] == 0)
      for r in np.flatnonzero(b['mask'])[:2]:
        ex = src[int(b['id'][r])]
        assert b['label'][r] == ex['label']
        np.testing.assert_array_equal(b['image'][r], transforms.eval_transform(ex['image'], SIZE))
  assert sorted(seen) == list(range(70))
  # Iterating again gives the same batches (an iterable, not a one-shot iterator).
  again = list(pipeline.make_eval_iterator(c.data, process_index=0, process_count=hosts))
  assert_batches_equal(again, per_host[0])


def test_bad_dataset_name():
  c = make_config()
  c.data.dataset = 'cifar10'
  with pytest.raises(ValueError, match="Unknown config.data.dataset 'cifar10'"):
    pipeline.get_dataset_info(c.data)


def test_worker_processes_start_from_a_python_script(tmp_path):
  """The pipeline's worker processes from a plain script (no command parsed absl's flags, which
  grain's workers read): the batches come, the same as with threads."""
  script = tmp_path / 'script.py'
  script.write_text(textwrap.dedent('''
      import numpy as np
      from PIL import Image
      from ltdpt_jax.data import files, pipeline

      def main():
        paths = []
        for k in range(6):
          paths.append(f'{k}.png')
          Image.new('RGB', (20 + k, 16), (40 * k, 10, 200)).save(paths[-1])
        source = files.ImageFiles(paths, np.arange(6) % 2)
        got = [pipeline.eval_batches(source, image_size=8, batch_size=4, workers=w,
                                     process_index=0, process_count=1) for w in (1, 0)]
        a, b = ([batch['image'] for batch in it] for it in got)
        assert len(a) == len(b) == 2 and all((x == y).all() for x, y in zip(a, b))
        print('ok')

      if __name__ == '__main__':
        main()
      '''))
  out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env=train_utils.subprocess_env())
  assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-3000:]
