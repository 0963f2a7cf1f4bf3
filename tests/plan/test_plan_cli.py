"""``python -m kiwi_jax.plan`` end to end on the tiny demo config.

The compiles need libtpu (the ``tpu`` extra); those tests are skipped
where it is not importable. Bad input fails before any compile.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
  not HAS_LIBTPU,
  reason="libtpu is not installed (pip install '.[tpu]'); TPU compiles need it",
)


def _plan(*args, cwd=ROOT):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT)]
    + [
      p
      for p in sys.path
      if p and "libtpu" not in p and pathlib.Path(p, "libtpu").is_dir()
    ]
  )
  env.pop("XLA_FLAGS", None)
  return subprocess.run(
    [sys.executable, "-m", "kiwi_jax.plan", *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_unknown_topology_is_one_line_and_exit_2(tmp_path):
  out = tmp_path / "plan.json"
  result = _plan(
    "--config=configs/demo.py",
    "--topology=v5p-7",
    f"--json={out}",
    f"--cache_dir={tmp_path}",
  )
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert "v5p-7" in lines[0] and "v5p-8" in lines[0] and "v6e-16" in lines[0]
  assert not out.exists()


def test_bad_mesh_is_one_line_and_exit_2(tmp_path):
  result = _plan(
    "--config=configs/demo.py",
    "--topology=v5e-4",
    "--mesh=model=4",
    f"--cache_dir={tmp_path}",
  )
  assert result.returncode == 2
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert "--mesh" in result.stderr


@needs_libtpu
@pytest.mark.slow
def test_tiny_plan_fits_writes_json_and_reuses_its_cache(tmp_path):
  out = tmp_path / "plan.json"
  args = (
    "--config=configs/demo.py",
    "--topology=v5e-4",
    "--config.kiwi.data.batch_size=4",
    "--programs=train,edit/dit_step",
    f"--json={out}",
    f"--cache_dir={tmp_path / 'cache'}",
  )
  first = _plan(*args)
  assert first.returncode == 0, first.stderr[-3000:]
  plan = json.loads(out.read_text())
  assert plan["fits"] and plan["topology"]["chips"] == 4
  assert plan["topology"]["device_kind"] == "TPU v5 lite"
  assert plan["mesh"]["data"] == 4
  assert [r["program"] for r in plan["programs"]] == [
    "train/image",
    "edit/dit_step",
  ]
  for row in plan["programs"]:
    assert row["status"] == "compiled" and row["fits"] is True
    assert not row["cached"]
    memory = row["memory_per_chip"]
    assert 0 < memory["peak"] <= row["hbm_per_chip_bytes"]
    assert memory["argument"] > 0 and memory["temp"] >= 0
    assert set(row["collectives"]) == {
      "all-gather",
      "all-reduce",
      "reduce-scatter",
      "all-to-all",
      "collective-permute",
    }
    assert row["model_flops"] > 0 and row["xla_flops_per_chip"] > 0
    # XLA counts the DiT's scanned blocks once per chip; the corrected
    # count adds the other iterations and is over all chips.
    assert row["xla_flops_scan_corrected"] > 4 * row["xla_flops_per_chip"]
    assert row["step_seconds_lower_bound"] == pytest.approx(
      row["model_flops"] / (4 * 197e12)
    )
  train = plan["programs"][0]
  # Data parallel: the gradients are reduced across the 4 chips.
  assert (
    train["collectives"]["all-reduce"] + train["collectives"]["reduce-scatter"]
  ) > 0
  assert "| train/image | 4 |" in first.stdout
  assert (tmp_path / "cache" / "xla").is_dir()

  out.unlink()
  second = _plan(*args)
  assert second.returncode == 0, second.stderr[-3000:]
  again = json.loads(out.read_text())
  assert all(r["cached"] for r in again["programs"])
  strip = lambda rows: [
    {k: v for k, v in r.items() if k != "cached"}  # noqa
    for r in rows
  ]
  assert strip(again["programs"]) == strip(plan["programs"])
  assert "(cached)" in second.stdout


@pytest.mark.skipif(HAS_LIBTPU, reason="libtpu is installed here")
def test_without_libtpu_the_error_names_the_extra(tmp_path):
  result = _plan(
    "--config=configs/demo.py", "--topology=v5e-4", f"--cache_dir={tmp_path}"
  )
  assert result.returncode == 2
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert "pip install '.[tpu]'" in result.stderr
