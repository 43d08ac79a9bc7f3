"""The training crop on the accelerator (config.data.crop_on_device) against Pillow itself."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image

from ltdpt_jax.bench import memory as bench_memory
from ltdpt_jax.bench import parts as bench_parts
from ltdpt_jax import config_lib
from ltdpt_jax import data as data_lib
from ltdpt_jax import run_dir as run_dir_lib
from ltdpt_jax.data import device_transforms
from ltdpt_jax.data import pipeline
from ltdpt_jax.data import transforms

import image_folders
import train_utils

_crop = jax.jit(device_transforms.resized_crop, static_argnums=2)


def _host(images, crops, size):
  """The host path: Pillow's resize of each box, then the flip (`transforms.apply_crop`)."""
  return np.stack([transforms.apply_crop(im, size, c) for im, c in zip(images, crops)])


def _pillow_order_matters(height, width, size):
  return device_transforms.vertical_pass_first(height, width, size)


@pytest.mark.parametrize('height,width,size', [
    (32, 32, 224),   # CIFAR to the paper's 224 px: upsampling only
    (32, 32, 32),    # boxes smaller than the output and the full image (identity)
    (40, 28, 64),    # non-square, mixed up- and downsampling
    (375, 500, 64),  # an ImageNet-sized photo shrunk 6x: Pillow's antialiasing support
    (578, 251, 32),  # tall and shrunk: Pillow >= 13 runs the vertical pass first
    (9, 700, 16),    # wide strip
])
def test_resized_crop_equals_pillow_exactly(height, width, size):
  rng = np.random.default_rng(height * 1000 + width)
  n = 12
  images = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
  crops = np.stack([transforms.train_crop(height, width, np.random.default_rng([size, i]),
                                          min_scale=(0.08, 0.5, 1.0)[i % 3])
                    for i in range(n)])
  assert crops[:, 4].min() == 0 and crops[:, 4].max() == 1  # both flips occur
  got = np.asarray(_crop(images, crops, size))
  assert got.dtype == np.uint8 and got.shape == (n, size, size, 3)
  np.testing.assert_array_equal(got, _host(images, crops, size))


def test_pass_order_follows_pillow():
  """Which pass rounds to 8 bits first changes pixels; the order is Pillow's for its version."""
  assert not device_transforms.vertical_pass_first(578, 251, 32, pillow_version=(12, 1))
  assert device_transforms.vertical_pass_first(578, 251, 32, pillow_version=(13, 0))
  assert not device_transforms.vertical_pass_first(32, 32, 224, pillow_version=(13, 0))
  assert not device_transforms.vertical_pass_first(300, 200, 64, pillow_version=(13, 0))
  # The order matters for this image (so the test above checks it): the other order differs.
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (578, 251), dtype=np.uint8)
  box = (0, 121, 251, 456)  # left, top, right, bottom
  pil = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR, box=box), np.int64)
  kx = np.asarray(device_transforms.pillow_bilinear_weights(251, 32, 0, 251), np.int64)
  ky = np.asarray(device_transforms.pillow_bilinear_weights(578, 32, 121, 335), np.int64)
  r = lambda a: np.clip((a + (1 << 21)) >> 22, 0, 255)
  horizontal_first = r(ky.T @ r(image.astype(np.int64) @ kx))
  vertical_first = r(r(ky.T @ image.astype(np.int64)) @ kx)
  assert (horizontal_first != vertical_first).any()
  expect = vertical_first if _pillow_order_matters(578, 251, 32) else horizontal_first
  np.testing.assert_array_equal(pil, expect)


def _float64_pillow_coefficients(in_size, start, length, out_size):
  """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter, in float64
  as Resample.c computes them."""
  scale = length / out_size
  support = max(scale, 1.0)
  kk = np.zeros((in_size, out_size), np.int64)
  for i in range(out_size):
    centre = start + (i + 0.5) * scale
    lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_size)
    w = np.array([max(0.0, 1.0 - abs((j - centre + 0.5) / support)) for j in range(lo, hi)])
    kk[lo:hi, i] = (0.5 + w / w.sum() * (1 << 22)).astype(np.int64)
  return kk


@pytest.mark.parametrize('in_size,start,length,out_size', [
    (32, 0, 32, 224), (32, 5, 11, 224), (500, 37, 401, 224), (251, 3, 240, 32),
    (4000, 100, 3800, 224), (7, 0, 7, 7)])
def test_coefficients_equal_pillows_float64_computation(in_size, start, length, out_size):
  got = np.asarray(device_transforms.pillow_bilinear_weights(in_size, out_size, start, length))
  np.testing.assert_array_equal(got, _float64_pillow_coefficients(in_size, start, length,
                                                                  out_size))


def test_resized_crop_rejects_mismatched_crops():
  with pytest.raises(ValueError, match=r'crops \(B, 5\)'):
    device_transforms.resized_crop(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((3, 5), np.int32),
                                   8)


def _synthetic_data(crop_on_device, stored=12, size=16, workers=0):
  c = train_utils.tiny_config(image_size=size, batch_size=8)
  c.data.synthetic_image_size = stored
  c.data.crop_on_device = crop_on_device
  c.data.num_workers = workers
  return c


def test_pipeline_ships_stored_images_and_the_host_pipelines_crop():
  """The same epochs, records and augmentation numbers: cropped on the device, each batch is
  the host pipeline's batch, bit for bit."""
  host_cfg, dev_cfg = _synthetic_data(False), _synthetic_data(True)
  assert data_lib.train_batch_shapes(dev_cfg.data)['image'][0] == (12, 12, 3)
  assert data_lib.train_batch_shapes(host_cfg.data)['image'][0] == (16, 16, 3)
  host_it = data_lib.make_train_iterator(host_cfg.data, seed=3, process_index=0, process_count=1)
  dev_it = data_lib.make_train_iterator(dev_cfg.data, seed=3, process_index=0, process_count=1)
  steps = data_lib.steps_per_epoch(host_cfg.data, data_lib.get_dataset_info(host_cfg.data))
  try:
    for _ in range(steps + 1):  # into the second epoch
      h, d = next(host_it), next(dev_it)
      assert sorted(d) == ['crop', 'id', 'image', 'label']
      assert d['image'].shape == (8, 12, 12, 3) and d['crop'].dtype == np.int32
      np.testing.assert_array_equal(d['id'], h['id'])
      np.testing.assert_array_equal(d['label'], h['label'])
      np.testing.assert_array_equal(np.asarray(_crop(d['image'], d['crop'], 16)), h['image'])
  finally:
    host_it.close()
    dev_it.close()


def test_crop_on_device_refuses_images_of_several_sizes(tmp_path):
  image_folders.write_folder(tmp_path / 'train', [3, 3])  # saved at several sizes
  image_folders.write_folder(tmp_path / 'eval', [1, 1])
  c = train_utils.tiny_config(batch_size=2)
  c.data.dataset = 'folder'
  c.data.train_dir, c.data.eval_dir = str(tmp_path / 'train'), str(tmp_path / 'eval')
  c.data.crop_on_device = True
  it = data_lib.make_train_iterator(c.data, seed=0, process_index=0, process_count=1)
  try:
    with pytest.raises(ValueError, match='crop_on_device=True needs training images of one '
                                         'size.*crop_on_device=False'):
      for _ in range(4):
        next(it)
  finally:
    it.close()


def test_bench_batch_is_the_pipelines():
  """The benchmark compiles the step for what the pipeline yields, crop numbers included."""
  c = _synthetic_data(True)
  shapes = data_lib.train_batch_shapes(c.data)
  batch = bench_parts.random_batch(4, 16, 6, 0, eval_batch=False,
                                   stored_shape=shapes['image'][0])
  for key, (shape, dtype) in shapes.items():
    assert batch[key].shape == (4, *shape) and batch[key].dtype == dtype, key
  # CIFAR-100-LT's stand-in generates CIFAR's stored size.
  stand_in, _ = bench_parts.synthetic_stand_in(config_lib.base_config(), 100)
  assert stand_in.data.synthetic_image_size == 32


def test_runs_written_before_the_keys_resume_and_the_crop_may_move():
  current = config_lib.base_config().to_dict()
  stored = config_lib.base_config().to_dict()
  del stored['data']['crop_on_device'], stored['data']['synthetic_image_size']
  assert run_dir_lib.config_changes(stored, current) == ({}, {})
  # Where the crop runs does not change the numbers (bit-identical), so a resume may move it.
  current['data']['crop_on_device'] = True
  assert run_dir_lib.config_changes(stored, current) == ({'data.crop_on_device': [None, True]},
                                                         {})
  current['data']['synthetic_image_size'] = 8
  assert run_dir_lib.config_changes(stored, current)[1] == {
      'data.synthetic_image_size': [0, 8]}


def test_auto_crops_on_the_device_for_one_size_datasets_on_accelerators(monkeypatch):
  c = config_lib.base_config()
  assert c.data.crop_on_device is None  # auto
  assert not data_lib.crop_on_device(c.data)  # on this CPU
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert data_lib.crop_on_device(c.data)  # CIFAR-100-LT on a GPU
  for dataset, want in (('synthetic', True), ('imagenet_lt', False), ('folder', False)):
    c.data.dataset = dataset
    assert data_lib.crop_on_device(c.data) is want, dataset
  c.data.crop_on_device = False
  assert not data_lib.crop_on_device(c.data)
  c.data.dataset = 'folder'
  c.data.crop_on_device = True
  assert data_lib.crop_on_device(c.data)
  with pytest.raises(TypeError):
    c.data.crop_on_device = 'yes'


def test_train_example_reads_the_stored_shape_up_front():
  """TrainExample reads one record up front for the stored shape only with the crop on."""
  src = data_lib.get_sources(_synthetic_data(True).data).train
  ex = pipeline.TrainExample(src, image_size=16, seed=0, global_batch=8, process_index=0,
                             process_count=1, crop_on_device=True)
  assert ex.stored_shape == (12, 12, 3)
  out = ex(0)
  assert out['image'].shape == (12, 12, 3) and out['crop'].shape == (5,)


def test_benchmark_runs_the_device_crop_step_end_to_end():
  """The step the benchmark compiles takes the pipeline's batches (stored 12 px images + crop
  numbers, fed end to end) and crops them to 16 px inside: its arguments are the state, the
  frozen backbone and that batch, byte for byte, and its integer matmuls are the crop's two
  passes per image (`crop_flops`), counted here from the traced step."""
  from ltdpt_jax import train  # pylint: disable=g-import-not-at-top
  from ltdpt_jax.bench import __main__ as bench  # pylint: disable=g-import-not-at-top
  from test_bench import matmul_flops, nbytes  # pylint: disable=g-import-not-at-top
  c = _synthetic_data(True)
  record = bench.run_benchmark(c, steps=2, warmup=1, repeats=1,
                               parts=('train', 'pipeline', 'end_to_end'),
                               compiler_options=train_utils.QUICK)
  assert record['config']['crop_on_device'] is True
  assert record['input_pipeline']['source'] == 'synthetic images generated on the fly'
  setup = train.Setup(c)
  it = data_lib.make_train_iterator(c.data, seed=c.train.seed, process_index=0, process_count=1)
  try:
    batch = next(it)
  finally:
    it.close()
  assert batch['image'].shape == (8, 12, 12, 3) and batch['crop'].shape == (8, 5)
  # The ids are not used by the step (jit drops them): state, frozen, images, crops, labels.
  used = {k: batch[k] for k in ('image', 'crop', 'label')}
  assert record['memory']['train_step_compiled']['argument_size_in_bytes'] == (
      nbytes(setup.state, setup.frozen) + 8 * (12 * 12 * 3 + 5 * 4 + 4))
  assert nbytes(used) == 8 * (12 * 12 * 3 + 5 * 4 + 4)
  # 12 px -> 16 px: upsampling, so the horizontal pass first: (C, 12, 12) x (12, 16), then the
  # vertical pass (C, 12, 16) x (12, 16); 2 FLOPs per multiply-add.
  one = 2 * 3 * (12 * 12 * 16 + 12 * 16 * 16)
  assert device_transforms.crop_flops(12, 12, 16) == one
  jaxpr = jax.make_jaxpr(setup.train_step)(setup.state, setup.frozen, batch).jaxpr
  assert matmul_flops(jaxpr, dtypes=(np.dtype(np.int32),)) == 8 * one


def test_memory_report_step_takes_the_pipelines_batch():
  """The memory report's abstract step crops on the device where the run would: auto resolves
  for the chip compiled for (a TPU/GPU mesh: on; this CPU: off)."""
  c = _synthetic_data(None)
  info = data_lib.get_dataset_info(c.data)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ('data',))
  _, (_, _, batch) = bench_memory.abstract_train_step(c, info, mesh)
  assert sorted(batch) == ['image', 'label'] and batch['image'].shape == (8, 16, 16, 3)
  c.data.crop_on_device = True
  step, args = bench_memory.abstract_train_step(c, info, mesh)
  assert sorted(args[2]) == ['crop', 'image', 'label']
  assert args[2]['image'].shape == (8, 12, 12, 3) and args[2]['crop'].shape == (8, 5)
  assert step.lower(*args).compile(train_utils.QUICK).memory_analysis() is not None
  assert data_lib.crop_on_device(_synthetic_data(None).data, 'tpu')


def test_crop_flops_count_the_two_matmuls():
  assert device_transforms.crop_flops(32, 32, 224) == 2 * 3 * 224 * 32 * (32 + 224)
  tall = device_transforms.crop_flops(578, 251, 32)
  assert tall == 2 * 3 * (578 * 251 * 32 + (32 * 251 * 32 if _pillow_order_matters(578, 251, 32)
                                            else 578 * 32 * 32))
  # XLA's own count of the unchunked crop (dots plus the coefficients' integer arithmetic).
  images = jax.ShapeDtypeStruct((4, 32, 32, 3), np.uint8)
  crops = jax.ShapeDtypeStruct((4, 5), np.int32)
  one = jax.vmap(lambda im, c: device_transforms.resized_crop_one(im, c, 224))
  cost = jax.jit(one).lower(images, crops).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert device_transforms.crop_flops(32, 32, 224) <= cost['flops'] / 4 < 1.5 * (
      device_transforms.crop_flops(32, 32, 224))
