"""`kiwi-edit`: outputs never over inputs, one line per bad flag, output
modes from the umask, phases and a summary that accounts for the time."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from kiwi_jax.cli import edit as cli
from kiwi_jax.pipeline import edit_pipeline

REPO = pathlib.Path(__file__).resolve().parents[2]
QUIET = ["--steps", "2", "--no-progress"]


@pytest.fixture
def no_model(monkeypatch):
  """Fails the test if the command gets as far as loading the model."""

  def refuse(*args, **kwargs):
    raise AssertionError("the model was loaded before the check")

  monkeypatch.setattr(
    edit_pipeline.EditPipeline, "from_pretrained", classmethod(refuse)
  )


def one_error_line(capsys, *argv) -> str:
  try:
    code = cli.main([str(a) for a in argv])
  except SystemExit as e:  # argparse's own errors
    code = e.code
  captured = capsys.readouterr()
  lines = captured.err.splitlines()
  assert code == 2 and len(lines) == 1, captured.err
  assert lines[0].startswith("kiwi-edit: error: ") and not captured.out
  return lines[0]


def cli_subprocess(*argv, umask=0o022):
  """Runs ``python -m kiwi_jax.cli.edit`` (it inherits ``umask``)."""
  env = dict(
    os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)
  )
  previous = os.umask(umask)
  try:
    return subprocess.run(
      [sys.executable, "-m", "kiwi_jax.cli.edit", *argv],
      cwd=REPO,
      env=env,
      capture_output=True,
      check=False,
    )
  finally:
    os.umask(previous)


@pytest.mark.parametrize(
  "how", ["same", "dot", "symlink", "hardlink", "concat_over_video"]
)
def test_output_resolving_to_the_source_is_refused(
  toy_checkpoint, media, tmp_path, capsys, no_model, how
):
  video = tmp_path / "v.mp4"
  video.write_bytes((media / "video.mp4").read_bytes())
  before = video.read_bytes()
  out, extra = video, []
  if how == "dot":
    out = tmp_path / "." / "v.mp4"
  elif how == "symlink":
    out = tmp_path / "link.mp4"
    out.symlink_to(video)
  elif how == "hardlink":
    out = tmp_path / "hard.mp4"
    os.link(video, out)
  elif how == "concat_over_video":
    video = video.rename(tmp_path / "e_concat.mp4")
    out, extra = tmp_path / "e.mp4", ["--side-by-side"]
  line = one_error_line(
    capsys,
    "--checkpoint",
    toy_checkpoint,
    "--video",
    video,
    "--prompt",
    "x",
    "--out",
    out,
    *extra,
    *QUIET,
  )
  assert "same file as --video" in line and "another output" in line
  assert video.read_bytes() == before


@pytest.mark.parametrize(
  "target", ["ref", "checkpoint_file", "inside_checkpoint"]
)
def test_output_over_reference_or_checkpoint_is_refused(
  toy_checkpoint, media, tmp_path, capsys, no_model, target
):
  ckpt = tmp_path / "ckpt"
  shutil.copytree(toy_checkpoint, ckpt)
  ref = tmp_path / "ref.png"
  ref.write_bytes((media / "ref.png").read_bytes())
  video, out = media / "video.mp4", None
  if target == "ref":  # an image edit whose output is its reference
    video, out = media / "image.png", ref
  elif target == "checkpoint_file":
    out = tmp_path / "weights.mp4"
    os.link(ckpt / "kiwi_config.json", out)
  else:
    out = ckpt / "edit.mp4"
  files = lambda: [ref, *(p for p in ckpt.rglob("*") if p.is_file())]  # noqa: E731
  snapshot = {str(p): p.read_bytes() for p in files()}
  line = one_error_line(
    capsys,
    "--checkpoint",
    ckpt,
    "--video",
    video,
    "--ref",
    ref,
    "--prompt",
    "x",
    "--out",
    out,
    *QUIET,
  )
  assert {
    "ref": "--ref",
    "checkpoint_file": "--checkpoint file",
    "inside_checkpoint": "inside --checkpoint",
  }[target] in line
  assert snapshot == {str(p): p.read_bytes() for p in files()}


@pytest.mark.parametrize(
  "flag,value,needle",
  [
    ("--steps", "100000000000", "1..1000"),
    ("--steps", "0", "1..1000"),
    ("--fps", "0", "frame rate"),
    ("--fps", "-2", "frame rate"),
    ("--fps", "nan", "frame rate"),
    ("--fps", "inf", "frame rate"),
    ("--seed", "-1", "0..4294967295"),
    ("--seed", str(2**32), "0..4294967295"),
    ("--max-frames", "0", "1..1001"),
    ("--max-frames", "100000000000", "1..1001"),
    ("--max-pixels", "100", "at least 1024"),
    ("--guidance-scale", "nan", "finite"),
    ("--ref-guidance-scale", "inf", "finite"),
    ("--negative-prompt", "bad \udcff", "UTF-8"),
    ("--stepz", "3", "did you mean --steps"),
    ("--steps", "many", "invalid int"),
    ("--denoising-strength", "0", "(0, 1]"),
    ("--denoising-strength", "1.5", "(0, 1]"),
    ("--denoising-strength", "nan", "(0, 1]"),
    ("--shift", "0", "--shift must be a number above 0"),
    ("--shift", "inf", "--shift must be a number above 0"),
  ],
)
def test_bad_flag_values_get_one_line_before_loading(
  toy_checkpoint, media, tmp_path, capsys, no_model, flag, value, needle
):
  out = tmp_path / "o.mp4"
  line = one_error_line(
    capsys,
    "--checkpoint",
    toy_checkpoint,
    "--video",
    media / "video.mp4",
    "--ref",
    media / "ref.png",
    "--prompt",
    "x",
    "--out",
    out,
    "--no-progress",
    flag,
    value,
  )
  assert needle in line and flag.split("=")[0] in line
  assert not out.exists()


def test_invalid_utf8_prompt_through_the_command_line(
  toy_checkpoint, media, tmp_path
):
  out = tmp_path / "o.mp4"
  done = cli_subprocess(
    "--checkpoint",
    str(toy_checkpoint),
    "--video",
    str(media / "video.mp4"),
    "--out",
    str(out),
    "--prompt",
    b"caf\xe9 \xff\xfe",
    "--no-progress",
  )
  err = done.stderr.decode("utf-8", "replace").splitlines()
  assert done.returncode == 2 and len(err) == 1, done.stderr
  assert err[0].startswith("kiwi-edit: error: --prompt is not valid UTF-8")
  assert "0xe9" in err[0] and not out.exists()


def test_help_explains_every_option():
  for action in cli.build_parser()._actions:  # pylint: disable=protected-access
    assert action.help and len(action.help) > 10, action.option_strings


def test_phases_summary_and_output_modes(toy_checkpoint, media, tmp_path):
  """Through the command line under umask 022: files are 0o644, each phase
  is announced once as it begins, the bar covers the denoising steps only,
  and the summary's phase times add up to its total."""
  out = tmp_path / "edit.mp4"
  done = cli_subprocess(
    "--checkpoint",
    str(toy_checkpoint),
    "--video",
    str(media / "video.mp4"),
    "--ref",
    str(media / "ref.png"),
    "--prompt",
    "Use the cat.",
    "--out",
    str(out),
    "--steps",
    "3",
    "--side-by-side",
    umask=0o022,
  )
  assert done.returncode == 0, done.stderr
  written = sorted(tmp_path.iterdir())
  assert [p.name for p in written] == [
    "edit.mp4",
    "edit_concat.gif",
    "edit_concat.mp4",
  ]
  assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}

  err = done.stderr.decode()
  marks = [
    "inputs decoded",
    "load model...",
    "mllm encode...",
    "vae encode...",
    "compile denoise...",
    "denoise:",
    "3/3",
    "vae decode...",
    "write...",
  ]
  where = [err.find(m) for m in marks]
  assert -1 not in where and where == sorted(where), err
  for line in ("load model...", "mllm encode...", "vae encode..."):
    assert err.count(line) == 1
  before_bar = err[: err.find("denoise:")]
  assert "step/s" not in before_bar and "s/step" not in before_bar

  summary = done.stdout.decode().strip()
  total, phases = re.search(r", ([\d.]+) s \((.*)\) -> ", summary).groups()
  times = dict(re.findall(r"([a-z ]+) ([\d.]+) s", phases))
  assert [n.strip() for n in times] == [
    "decode inputs",
    "load model",
    "mllm encode",
    "vae encode",
    "compile denoise",
    "denoise",
    "vae decode",
    "write",
  ]
  # Rounding to 0.1 s is the only difference between the sum and the total.
  assert abs(sum(map(float, times.values())) - float(total)) <= 0.5
