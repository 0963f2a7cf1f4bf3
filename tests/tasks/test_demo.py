"""The CPU demo end to end in ``runlocal`` mode (a few steps per stage)."""

import json

import pytest

from configs import demo as demo_config
from kiwi_jax.tasks import demo


@pytest.mark.slow
def test_demo_runlocal_end_to_end(tmp_path, capsys):
  table = demo.run(demo_config.get_config("runlocal"), tmp_path)
  # Two tables: edit success, then PSNR; one clip per edit type.
  assert table.count("| **mean** | 6 |") == 2
  assert "| edit type | clips | success | inside ok | outside ok |" in table
  for edit_type in ("local_recolor", "subject_reference"):
    assert table.count(f"| {edit_type} | 1 |") == 2
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["outside_tolerance"] == 0.5
  assert len(results["clips"]) == 6
  overall = results["summary"]["overall"]
  assert overall["clips"] == 6
  assert overall["success_rate"] == (
    sum(c["success"] for c in results["clips"]) / 6
  )
  assert (tmp_path / "edits" / "grid.png").read_bytes()[:8] == (
    b"\x89PNG\r\n\x1a\n"
  )
  out = capsys.readouterr().out
  assert table in out
  # Each stage shows that it is alive: a note, then a line per log step.
  for stage in (1, 2, 3):
    assert out.count(f"NOTE: Demo stage {stage} of 3") == 1
    assert f"[stage {stage}/3] step 2/2 | loss " in out
  assert (tmp_path / "results.md").read_text().strip() == table
  # Six source | edit | target clips and the six held-out sources.
  assert len(list((tmp_path / "edits").glob("*.mp4"))) == 12
  _check_kiwi_edit_reproduces_a_demo_edit(tmp_path, results)
  # Stage handoff through model_init: each stage starts from the previous.
  for stage in (2, 3):
    config = json.loads(
      (tmp_path / f"stage{stage}" / "config.json").read_text()
    )
    assert config["model_init"] == str(
      tmp_path / f"stage{stage - 1}" / "checkpoints"
    )
    assert config["kiwi"]["stage"] == stage
  # A restart finds every stage finished and only re-evaluates.
  assert demo.run(demo_config.get_config("runlocal"), tmp_path) == table


def _check_kiwi_edit_reproduces_a_demo_edit(workdir, results):
  """The README's kiwi-edit command on a held-out clip: the same model and
  path as the demo's own edit (exactly, through the API from the written
  source file; and the command line runs it)."""
  # pylint: disable-next=g-import-not-at-top
  from kiwi_jax.cli import edit as cli
  from kiwi_jax.media import video_io
  from kiwi_jax.pipeline.edit_pipeline import EditPipeline
  from kiwi_jax.tasks.kiwi_config import DemoConfig

  settings = DemoConfig.from_config(demo_config.get_config("runlocal").demo)
  clip = next(c for c in results["clips"] if c["edit_type"] == "local_recolor")
  source = workdir / clip["source_video"]
  shown = video_io.read_video(
    str(workdir / "edits" / f"{clip['key']}_local_recolor.mp4")
  )
  width = shown.shape[2] // 3
  demo_edit = shown[:, :, width : 2 * width]
  pipe = EditPipeline.from_pretrained(str(workdir / "stage3"))
  again = pipe.edit(
    str(source),
    clip["prompt"],
    steps=settings.sample_steps,
    seed=0,
    denoising_strength=settings.denoising_strength,
  ).frames
  assert (again == demo_edit).all()
  out = workdir / "cli_edit.mp4"
  code = cli.main(
    [
      "--checkpoint",
      str(workdir / "stage3"),
      "--video",
      str(source),
      "--prompt",
      clip["prompt"],
      "--steps",
      str(settings.sample_steps),
      "--denoising-strength",
      str(settings.denoising_strength),
      "--out",
      str(out),
      "--no-progress",
    ]
  )
  assert code == 0 and out.exists()
