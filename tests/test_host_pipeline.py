"""ltdpt_jax/bench/host_pipeline.py: per-worker images/s of the host transforms and the workers needed."""

from __future__ import annotations

import json
import math

from ltdpt_jax.bench import host_pipeline as mod


def test_host_pipeline_reports_the_paths_and_the_workers_for_the_target(tmp_path, capsys):
  out = tmp_path / 'h.json'
  assert mod.main(['--seconds=0.2', '--num_jpegs=2', '--size=64', '--target=1000',
                   '--device_batch=8', '--rounds=2', f'--out={out}']) == 0
  rec = json.loads(out.read_text())
  assert set(rec['paths']) == {'cifar', 'cifar_device_crop'}
  # Shipping the stored image is cheaper for the host than cropping it there, and smaller.
  paths = rec['paths']
  assert (paths['cifar_device_crop']['images_per_s_per_worker']
          > paths['cifar']['images_per_s_per_worker'])
  assert paths['cifar_device_crop']['bytes_to_device_per_image'] == 32 * 32 * 3 + 20
  assert rec['device_crop']['images_per_s'] > 0 and rec['device_crop']['batch'] == 8
  assert rec['device_crop']['flops_per_image'] > 0
  for r in rec['paths'].values():
    assert r['images_per_s_per_worker'] > 0
    assert r['workers_for_target'] == math.ceil(1000 / r['images_per_s_per_worker'])
  printed = capsys.readouterr().out
  assert '| path |' in printed and '| JPEG | transform | way |' in printed
  for name, (width, height) in mod.JPEG_SIZES.items():
    r = rec['jpeg'][name]
    assert r['size'] == [width, height] and r['kb'] > 2 * r['stored_kb'] > 20
    for transform in ('train', 'eval'):
      assert set(r[transform]) == set(mod.JPEG_WAYS)
      assert all(v > 0 for v in r[transform].values())
      row = f'| {name} {width} x {height} ({r["kb"]:.0f} KB; stored {r["stored_kb"]:.0f} KB) | '
      assert printed.count(row + transform) == len(mod.JPEG_WAYS)
