"""``kiwi-edit --window F --overlap K`` (``kiwi_jax/cli/window_flags.py``)."""

import os

import numpy as np
import pytest

from kiwi_jax.cli import edit as cli
from kiwi_jax.media import video_io
from kiwi_jax.utils.video_files import write_mp4

WINDOW_FLAGS = ("--window", "--overlap", "--window-mode", "--window-blend")


def test_every_window_flag_has_help():
  parser = cli.build_parser()
  text = parser.format_help()
  for action in parser._actions:  # pylint: disable=protected-access
    if set(action.option_strings) & set(WINDOW_FLAGS):
      assert action.help and len(action.help) > 40, action.option_strings
  for flag in WINDOW_FLAGS:
    assert flag in text


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
  """85 frames (more than the 81 an edit keeps without --window)."""
  t = np.arange(85)[:, None, None, None]
  x = np.arange(32)[None, None, :, None]
  frames = 127.5 + 100 * np.sin(2 * np.pi * (x + t) / 16)
  frames = np.broadcast_to(frames, (85, 32, 32, 3)).astype(np.uint8)
  path = tmp_path_factory.mktemp("long") / "long.mp4"
  write_mp4(path, frames, fps=12)
  return path


def common(toy_checkpoint, video, out):
  return [
    "--checkpoint",
    toy_checkpoint,
    "--video",
    video,
    "--prompt",
    "Make it blue.",
    "--out",
    out,
    "--steps",
    "1",
    "--no-progress",
  ]


def test_cli_edits_a_long_video_in_windows(
  toy_checkpoint, long_video, tmp_path, capsys
):
  out = tmp_path / "edit.mp4"
  argv = common(toy_checkpoint, long_video, out)
  argv += ["--window", "9", "--overlap", "4", "--window-mode", "streamed"]
  assert cli.main([str(a) for a in argv]) == 0
  assert "85 frames" in capsys.readouterr().out
  frames = video_io.decode_video(out.read_bytes())
  assert frames.shape == (85, 32, 32, 3)


def bad_run(capsys, argv):
  code = cli.main([str(a) for a in argv])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("kiwi-edit: error:"), err
  assert err.count("\n") == 1, err
  return err


@pytest.mark.parametrize(
  "flags,needle",
  [
    (
      ["--window", "8", "--overlap", "4"],
      "--window must be a frame count 4k+1",
    ),
    (["--window", "3", "--overlap", "0"], "at least 5"),
    (["--window", "-9", "--overlap", "0"], "--window must be"),
    (["--window", "9", "--overlap", "9"], "--overlap must be a frame count"),
    (["--window", "9", "--overlap", "12"], "smaller than --window"),
    (["--window", "9", "--overlap", "6"], "multiple of 4"),
    (["--window", "9", "--overlap", "-4"], "multiple of 4"),
    (["--window", "9"], "--window needs --overlap"),
    (["--overlap", "4"], "--overlap needs --window"),
    (["--window-mode", "streamed"], "--window-mode needs --window"),
    (["--window-blend", "none"], "--window-blend needs --window"),
    (["--window", "9", "--overlap", "4", "--seeds", "1,2"], "--seeds"),
    (
      ["--window", "9", "--overlap", "4", "--cache-threshold", "0.1"],
      "--cache-threshold",
    ),
  ],
)
def test_bad_window_flags(
  toy_checkpoint, long_video, tmp_path, capsys, flags, needle
):
  out = tmp_path / "o.mp4"
  err = bad_run(capsys, common(toy_checkpoint, long_video, out) + flags)
  assert needle in err
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
  "flags,needle",
  [
    (["--window", "nine", "--overlap", "4"], "--window: invalid int"),
    (
      ["--window", "9", "--overlap", "4", "--window-mode", "x"],
      "invalid choice",
    ),
  ],
)
def test_unparsable_window_flags(
  toy_checkpoint, long_video, tmp_path, capsys, flags, needle
):
  argv = common(toy_checkpoint, long_video, tmp_path / "o.mp4") + flags
  with pytest.raises(SystemExit) as done:
    cli.main([str(a) for a in argv])
  err = capsys.readouterr().err
  assert done.value.code == 2 and err.count("\n") == 1 and needle in err
