"""`kiwi-edit` end to end with the toy checkpoint, and its bad inputs."""

import os

import numpy as np
import pytest
from PIL import Image

from kiwi_jax.cli import edit as cli
from kiwi_jax.data import video_io

STEPS = ["--steps", "3", "--no-progress"]


def run(*argv):
  return cli.main([str(a) for a in argv])


def decode(path):
  return video_io.decode_video(path.read_bytes())


def test_video_edit_writes_playable_mp4(
  toy_checkpoint, media, tmp_path, capsys
):
  out = tmp_path / "out" / "edit.mp4"
  assert (
    run(
      "--checkpoint",
      toy_checkpoint,
      "--video",
      media / "video.mp4",
      "--prompt",
      "Make it blue.",
      "--out",
      out,
      *STEPS,
    )
    == 0
  )
  frames = decode(out)
  assert frames.shape == (9, 64, 96, 3)
  line = capsys.readouterr().out.strip()
  assert (
    line.startswith("kiwi-edit: 96x64, 9 frames, 3 steps") and str(out) in line
  )
  assert sorted(os.listdir(out.parent)) == ["edit.mp4"]


def test_reference_edit_with_side_by_side(toy_checkpoint, media, tmp_path):
  out = tmp_path / "ref_edit.mp4"
  assert (
    run(
      "--checkpoint",
      toy_checkpoint,
      "--video",
      media / "video.mp4",
      "--ref",
      media / "ref.png",
      "--prompt",
      "Use the cat.",
      "--out",
      out,
      "--side-by-side",
      *STEPS,
    )
    == 0
  )
  assert decode(out).shape == (9, 64, 96, 3)
  concat = decode(tmp_path / "ref_edit_concat.mp4")
  assert concat.shape == (9, 64, 3 * 96, 3)
  gif = Image.open(tmp_path / "ref_edit_concat.gif")
  assert gif.n_frames == 9 and gif.size == (3 * 96, 64)


def test_reference_changes_the_edit(toy_checkpoint, media, tmp_path):
  a, b = tmp_path / "a.gif", tmp_path / "b.gif"
  common = (
    "--checkpoint",
    toy_checkpoint,
    "--video",
    media / "video.mp4",
    "--prompt",
    "Use the cat.",
    *STEPS,
  )
  assert run(*common, "--out", a) == 0
  assert run(*common, "--ref", media / "ref.png", "--out", b) == 0
  assert not np.array_equal(
    np.asarray(Image.open(a)), np.asarray(Image.open(b))
  )


def test_image_edit(toy_checkpoint, media, tmp_path):
  out = tmp_path / "edit.png"
  assert (
    run(
      "--checkpoint",
      toy_checkpoint,
      "--video",
      media / "image.png",
      "--prompt",
      "Make it red.",
      "--out",
      out,
      "--side-by-side",
      *STEPS,
    )
    == 0
  )
  assert np.asarray(Image.open(out)).shape == (64, 96, 3)
  assert Image.open(tmp_path / "edit_concat.png").size == (2 * 96, 64)


def bad_run(capsys, *argv):
  code = run(*argv)
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("kiwi-edit: error:")
  return err


@pytest.mark.parametrize(
  "video,content,needle",
  [
    ("missing.mp4", None, "file not found"),
    ("empty.mp4", b"", "empty"),
    ("broken.mp4", b"\x00\x01 definitely not mp4" * 20, "cannot read video"),
    ("clip.txt", b"hello", "unsupported extension"),
  ],
)
def test_bad_video(toy_checkpoint, tmp_path, capsys, video, content, needle):
  path = tmp_path / video
  if content is not None:
    path.write_bytes(content)
  out = tmp_path / "out.mp4"
  err = bad_run(
    capsys,
    "--checkpoint",
    toy_checkpoint,
    "--video",
    path,
    "--prompt",
    "x",
    "--out",
    out,
    *STEPS,
  )
  assert needle in err and video in err
  assert not out.exists()


def test_video_without_frames(toy_checkpoint, tmp_path, capsys):
  import av

  path = tmp_path / "noframes.mp4"
  with av.open(str(path), "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=8)
    stream.width = stream.height = 64
  err = bad_run(
    capsys,
    "--checkpoint",
    toy_checkpoint,
    "--video",
    path,
    "--prompt",
    "x",
    "--out",
    tmp_path / "o.mp4",
    *STEPS,
  )
  assert "noframes.mp4" in err


@pytest.mark.parametrize("kind", ["missing", "file", "wrong"])
def test_bad_checkpoint(media, tmp_path, capsys, kind):
  ckpt = tmp_path / "ckpt"
  if kind == "file":
    ckpt.write_text("x")
  elif kind == "wrong":
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"")
  out = tmp_path / "out.mp4"
  err = bad_run(
    capsys,
    "--checkpoint",
    ckpt,
    "--video",
    media / "video.mp4",
    "--prompt",
    "x",
    "--out",
    out,
    *STEPS,
  )
  assert str(ckpt) in err
  assert not out.exists() and not list(tmp_path.glob(".out.mp4*"))


@pytest.mark.parametrize(
  "out_name,needle",
  [
    ("out.avi", "unsupported extension"),
    ("out.png", "unsupported extension"),  # an image for a video edit
    ("blocker/out.mp4", "cannot write"),
    ("adir", "unsupported extension"),
  ],
)
def test_bad_output_path(
  toy_checkpoint, media, tmp_path, capsys, out_name, needle
):
  (tmp_path / "blocker").write_text("a file where a folder should be")
  err = bad_run(
    capsys,
    "--checkpoint",
    toy_checkpoint,
    "--video",
    media / "video.mp4",
    "--prompt",
    "x",
    "--out",
    tmp_path / out_name,
    *STEPS,
  )
  assert needle in err


def test_unwritable_directory(toy_checkpoint, media, tmp_path, capsys):
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  try:
    if os.access(locked, os.W_OK):
      pytest.skip("running as root: permissions are not enforced")
    err = bad_run(
      capsys,
      "--checkpoint",
      toy_checkpoint,
      "--video",
      media / "video.mp4",
      "--prompt",
      "x",
      "--out",
      locked / "out.mp4",
      *STEPS,
    )
    assert "cannot write" in err
  finally:
    locked.chmod(0o700)


def test_failed_write_leaves_nothing(
  toy_checkpoint, media, tmp_path, monkeypatch
):
  from kiwi_jax.pipeline import outputs

  def fail(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(outputs, "write_gif", fail)
  with pytest.raises(RuntimeError, match="disk full"):
    run(
      "--checkpoint",
      toy_checkpoint,
      "--video",
      media / "video.mp4",
      "--prompt",
      "x",
      "--out",
      tmp_path / "o.mp4",
      "--side-by-side",
      *STEPS,
    )
  assert os.listdir(tmp_path) == []


def test_bad_reference_and_args(toy_checkpoint, media, tmp_path, capsys):
  common = (
    "--checkpoint",
    toy_checkpoint,
    "--video",
    media / "video.mp4",
    "--out",
    tmp_path / "o.mp4",
    *STEPS,
  )
  assert "nope.png" in bad_run(
    capsys, *common, "--prompt", "x", "--ref", tmp_path / "nope.png"
  )
  assert "prompt" in bad_run(capsys, *common, "--prompt", "  ")
  assert "--mesh" in bad_run(capsys, *common, "--prompt", "x", "--mesh", "fsdp")
  assert "reference image" in bad_run(
    capsys, *common, "--prompt", "x", "--ref-guidance-scale", "2"
  )


def test_progress_bar_and_module_entry_point(
  toy_checkpoint, media, tmp_path, capsys
):
  assert (
    run(
      "--checkpoint",
      toy_checkpoint,
      "--video",
      media / "image.png",
      "--prompt",
      "x",
      "--out",
      tmp_path / "o.png",
      "--steps",
      "3",
    )
    == 0
  )
  err = capsys.readouterr().err
  assert "denoise" in err and "3/3" in err
  import subprocess
  import sys

  done = subprocess.run(
    [sys.executable, "-m", "kiwi_jax.cli.edit", "--help"],
    capture_output=True,
    text=True,
    check=True,
    cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
  )
  assert "--checkpoint" in done.stdout and "kiwi-edit" in done.stdout


def test_eval_load_editor_runs_the_pipeline(toy_checkpoint, media):
  import eval as eval_cli
  from kiwi_jax.evaluators import benchmarks

  edit = eval_cli.load_editor(
    str(toy_checkpoint), max_frames=5, max_pixels=96 * 64, seed=0
  )
  item = benchmarks.BenchmarkItem(
    index=0,
    output_name="0.mp4",
    source_video=str(media / "video.mp4"),
    instruction="Use the cat.",
    edit_type="subject",
    reference_image=str(media / "ref.png"),
  )
  frames = edit(item)  # 72x100 source over 6144 px -> 64x64
  assert frames.dtype == np.uint8 and frames.shape == (5, 64, 64, 3)
