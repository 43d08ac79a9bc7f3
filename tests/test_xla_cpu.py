"""The XLA:CPU options the package sets (ltdpt_jax/__init__.py) and the side-by-side script."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ltdpt_jax

import train_utils

YNN = '--xla_cpu_experimental_ynn_fusion_type='


def test_flags_to_add_respects_the_user_the_range_and_the_opt_out():
  assert ltdpt_jax.xla_cpu_flags_to_add('', (0, 10)) == [YNN]
  assert ltdpt_jax.xla_cpu_flags_to_add('--xla_force_host_platform_device_count=8', (0, 12)) == [YNN]
  # the user's own value of the flag wins, whatever it is
  assert ltdpt_jax.xla_cpu_flags_to_add(f'{YNN}individual_dot', (0, 11)) == []
  assert ltdpt_jax.xla_cpu_flags_to_add('', (0, 10), disabled=True) == []
  # outside the jaxlib range whose XLA knows the flag nothing is added (XLA aborts on unknown flags)
  assert ltdpt_jax.xla_cpu_flags_to_add('', (0, 9)) == [] and ltdpt_jax.xla_cpu_flags_to_add('', (0, 13)) == []
  assert ltdpt_jax.xla_cpu_flags_to_add('', None) == []


def _flags_after_import(**env) -> str:
  e = train_utils.subprocess_env()
  e.pop('XLA_FLAGS', None)
  e.pop(ltdpt_jax.XLA_CPU_DISABLE_ENV, None)
  e.update(env)
  code = ('import os, ltdpt_jax, jax; jax.devices(); '
          'print(repr(os.environ.get("XLA_FLAGS", "")))')
  out = subprocess.run([sys.executable, '-c', code], env=e, capture_output=True, text=True,
                       check=True, cwd=train_utils.REPO).stdout
  return eval(out.strip().splitlines()[-1])  # pylint: disable=eval-used


def test_import_sets_the_flag_before_jax_starts_and_keeps_the_users_flags():
  assert YNN in _flags_after_import().split()
  got = _flags_after_import(XLA_FLAGS='--xla_force_host_platform_device_count=2')
  assert got.split() == ['--xla_force_host_platform_device_count=2', YNN]
  assert _flags_after_import(XLA_FLAGS=f'{YNN}individual_dot') == f'{YNN}individual_dot'
  assert _flags_after_import(**{ltdpt_jax.XLA_CPU_DISABLE_ENV: '0'}) == ''


def test_cpu_vs_torch_reports_medians_of_alternating_rounds(tmp_path, monkeypatch):
  from ltdpt_jax.bench import cpu_vs_torch as mod  # pylint: disable=g-import-not-at-top
  calls = []
  torch_ips, ours_ips = iter([10.0, 8.0, 12.0]), iter([11.0, 12.0, 12.0])
  monkeypatch.setattr(mod, '_torch', lambda a: calls.append('torch') or next(torch_ips))
  monkeypatch.setattr(mod, '_ours', lambda a: calls.append('ours') or next(ours_ips))
  out = tmp_path / 'r.json'
  assert mod.main(['--torch_python=python', '--torch_step=step.py', '--rounds=3',
                   f'--out={out}']) == 0
  assert calls == ['torch', 'ours', 'ours', 'torch', 'torch', 'ours']  # the order alternates
  rec = json.loads(out.read_text())
  assert [r['ratio'] for r in rec['rounds']] == pytest.approx([1.1, 1.5, 1.0])
  assert rec['median'] == pytest.approx({'torch': 10.0, 'ours': 12.0, 'ratio': 1.1})
  with pytest.raises(SystemExit):  # --torch_step has no default
    mod.main(['--torch_python=python'])
