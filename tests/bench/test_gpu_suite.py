"""bench/gpu_suite.py at toy sizes on the CPU (``--scale_run_on_cpu``):
every section's code path runs in its own process, and the JSON and the
markdown carry each section's numbers and every target's verdict."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SUITE = REPO / "bench" / "gpu_suite.py"


def _run(*args, timeout=900):
  env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
  return subprocess.run(
    [sys.executable, str(SUITE), *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.mark.torch
@pytest.mark.slow
def test_toy_suite_writes_every_section_and_target(tmp_path):
  out = tmp_path / "results"
  proc = _run(
    "--scale_run_on_cpu",
    "--out",
    str(out),
    "--train_remat",
    "full",
    "--commit",
    "abc1234",
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  results = json.loads((out / "gpu_results.json").read_text())
  assert results["scale"] == "toy" and results["commit"] == "abc1234"
  assert results["device"]["backend"] == "cpu"
  sections = results["sections"]
  assert list(sections) == ["train", "infer", "vae", "edit"]
  for name, section in sections.items():
    assert section["status"] == "ok", (name, section)

  train = sections["train"]
  full = train["policies"]["full"]
  assert train["best_policy"] == "full" and full["median_s"] > 0
  assert full["tflops"] > 0 and full["model_tflop"] > 0
  assert train["mfu"] is None  # no peak FLOP/s for a CPU
  assert train["tokens"] == 3 * 2 * 3

  infer = sections["infer"]
  assert infer["kiwi_jax"]["median_s"] > 0
  assert infer["diffusers"]["best_backend"] == "native"
  assert infer["speedup"] == pytest.approx(
    infer["diffusers_step_s"] / infer["step_s"]
  )

  vae = sections["vae"]
  assert set(vae["variants"]) == {"tiled", "one_program", "untiled"}
  for entry in vae["variants"].values():
    assert entry["seconds"] > 0, entry
  assert vae["decode_s"] == vae["variants"]["tiled"]["seconds"]
  assert vae["video"] == [1, 9, 64, 96, 3]

  edit = sections["edit"]
  assert edit["steps"] == 2 and edit["finite"]
  assert edit["progress"]["steps_done"] == 2
  stages = ("mllm_encode", "vae_encode", "compile", "denoise", "vae_decode")
  for seconds in edit["edits"]:
    assert all(seconds[s] >= 0 for s in stages)
  assert edit["denoise_s"] == edit["edits"][-1]["denoise"]

  verdicts = {t["key"]: t for t in results["targets"]}
  assert list(verdicts) == [
    "train_mfu",
    "infer_speedup",
    "edit_denoise",
    "vae_decode_time",
    "vae_decode_memory",
  ]
  assert verdicts["train_mfu"]["verdict"] == "N/A"
  assert verdicts["vae_decode_memory"]["verdict"] == "N/A"  # CPU: no stats
  for key in ("infer_speedup", "edit_denoise", "vae_decode_time"):
    target = verdicts[key]
    assert target["value"] is not None and target["verdict"] in ("PASS", "FAIL")

  markdown = (out / "gpu_results.md").read_text()
  for text in (
    "# GPU suite results",
    "## Targets",
    "## DiT train step",
    "## DiT inference step",
    "## VAE decode",
    "## Full edit",
    "Toy sizes on the CPU",
    "| full |",
    "`native`",
    "| tiled |",
  ):
    assert text in markdown, text
  for target in results["targets"]:
    assert target["target"] in markdown
  assert "PASS" in proc.stdout or "FAIL" in proc.stdout
  assert not list(out.glob(".*"))  # no temporary files left


def test_bad_section_is_one_line_and_writes_nothing(tmp_path):
  out = tmp_path / "results"
  proc = _run("--sections", "train,bogus", "--out", str(out), timeout=120)
  assert proc.returncode == 2
  assert "--sections: unknown ['bogus']" in proc.stderr
  assert not out.exists()
