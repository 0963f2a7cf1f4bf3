"""The demo's pretrained tiny base: the kept file and its command agree."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import demo as demo_config
from kiwi_jax.tasks import demo, demo_base
from kiwi_jax.tasks.kiwi_config import DemoConfig


def _manifest():
  return json.loads(demo_base.manifest_path().read_text())


def test_kept_base_matches_its_recorded_digest():
  data = demo_base.default_out().read_bytes()
  manifest = _manifest()
  assert hashlib.sha256(data).hexdigest() == manifest["sha256"]
  assert (
    manifest["steps"]
    == DemoConfig.from_config(demo_config.get_config("").demo).base_steps
  )
  assert len(data) < 8 * 2**20  # a few MB


def _plain_env():
  """A user's shell: one CPU device (the suite's conftest asks JAX for 8)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
  env.pop("JAX_NUM_CPU_DEVICES", None)
  env["PYTHONPATH"] = str(demo_base.repo_root())
  return env


def test_the_command_reproduces_its_run_at_reduced_steps(tmp_path):
  """The documented command at REDUCED_STEPS steps lands on the recorded run
  (assets/demo_base.json): byte for byte on the CPU model it was recorded on,
  and on any CPU within a small fraction of how far one training step moves the
  weights' fingerprint."""
  manifest = _manifest()
  steps = manifest["reduced_steps"]
  out = tmp_path / "base.safetensors"
  run = subprocess.run(
    [sys.executable, "-m", "kiwi_jax.tasks.demo_base", "--steps", str(steps)]
    + ["--out", str(out)],
    env=_plain_env(),
    cwd=str(demo_base.repo_root()),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  digest = hashlib.sha256(out.read_bytes()).hexdigest()
  assert f"sha256 {digest}" in run.stdout
  got = demo_base.fingerprint_file(out)
  distance = demo_base.fingerprint_distance(
    got, manifest[f"fingerprint_steps_{steps}"]
  )
  step = manifest[f"step_distance_steps_{steps}"]
  bitwise = digest == manifest[f"sha256_steps_{steps}"]
  print(
    f"bitwise {bitwise}; {distance:.3e} from the record, one step {step:.3e}"
  )
  assert distance <= demo_base.REPRODUCE_FRACTION * step
  if demo_base.cpu_model() == manifest["recorded_on_cpu"]:
    assert bitwise, "same CPU model as the record, other bytes"


def test_fingerprint_sees_any_change_and_nothing_else():
  rng = np.random.default_rng(0)
  flat = {
    "a/kernel": rng.standard_normal((16, 8)).astype(np.float32),
    "b/bias": rng.standard_normal(8).astype(np.float32),
  }
  base = demo_base.fingerprint(flat)
  assert demo_base.fingerprint_distance(demo_base.fingerprint(flat), base) == 0
  nudged = {**flat, "a/kernel": flat["a/kernel"].copy()}
  nudged["a/kernel"][3, 5] += 1e-3
  moved = demo_base.fingerprint_distance(demo_base.fingerprint(nudged), base)
  assert 0 < moved < 1e-3
  renamed = {"a/kernel": flat["a/kernel"], "c/bias": flat["b/bias"]}
  assert demo_base.fingerprint_distance(
    demo_base.fingerprint(renamed), base
  ) == float("inf")


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--out", "x.npz"], "--out must end in .safetensors"),
  ],
)
def test_bad_flags_get_one_line(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    demo_base.main(argv)
  assert e.value.code == 2
  assert message in capsys.readouterr().err


def test_more_than_one_device_is_refused(capsys):
  """The suite runs on 8 fake CPU devices: the command says how to run."""
  with pytest.raises(SystemExit) as e:
    demo_base.main(["--steps", "1", "--out", "/nonexistent/x.safetensors"])
  assert e.value.code == 2
  assert "one CPU device" in capsys.readouterr().err


def test_an_existing_out_is_never_replaced(tmp_path, capsys):
  out = tmp_path / "mine.safetensors"
  out.write_bytes(b"the user's file")
  with pytest.raises(SystemExit) as e:
    demo_base.main(["--out", str(out), "--steps", "1"])
  assert e.value.code == 2
  assert "exists" in capsys.readouterr().err
  assert out.read_bytes() == b"the user's file"


def test_demo_names_a_missing_base():
  settings = DemoConfig.from_config(demo_config.get_config("runlocal").demo)
  assert demo.base_weights(settings) == ""
  missing = DemoConfig(
    **{**settings.__dict__, "base": "/nonexistent/b.safetensors"}
  )
  with pytest.raises(FileNotFoundError, match="kiwi_jax.tasks.demo_base"):
    demo.base_weights(missing)
