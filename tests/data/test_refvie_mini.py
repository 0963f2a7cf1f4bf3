"""RefVIE-mini: determinism, exact ground truth, the written layout."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from kiwi_jax.data import refvie_mini, video_io
from tests.data.conftest import CFG, NUM_IMAGES, NUM_VIDEOS


def test_same_seed_same_sample_other_seed_differs():
  a = refvie_mini.make_sample(7, 3, CFG)
  b = refvie_mini.make_sample(7, 3, CFG)
  c = refvie_mini.make_sample(8, 3, CFG)
  np.testing.assert_array_equal(a.source, b.source)
  np.testing.assert_array_equal(a.target, b.target)
  assert a.prompt == b.prompt
  assert not np.array_equal(a.source, c.source)


@pytest.mark.parametrize("edit_type", refvie_mini.EDIT_TYPES)
@pytest.mark.parametrize("index", [0, 1, 2])
def test_mask_is_exactly_the_changed_pixels(edit_type, index):
  cfg = refvie_mini.MiniConfig(height=32, width=48, num_frames=5)
  s = refvie_mini.make_sample(0, index, cfg, edit_type)
  assert s.source.shape == s.target.shape == (5, 32, 48, 3)
  assert s.mask.shape == (5, 32, 48) and s.mask.dtype == bool
  np.testing.assert_array_equal((s.source != s.target).any(-1), s.mask)
  assert s.mask.any(), "every edit changes some pixel"
  assert (s.ref_image is not None) == (edit_type in refvie_mini.REFERENCE_EDITS)
  if s.ref_image is not None:
    assert s.ref_image.shape == (cfg.ref_size, cfg.ref_size, 3)


def test_subject_reference_shows_the_new_object_colour():
  s = refvie_mini.make_sample(0, 0, CFG, "subject_reference")
  # The target's edited region, where it is object-coloured, uses exactly
  # the colour of the object drawn in the reference image.
  ref_colours = {tuple(c) for c in s.ref_image.reshape(-1, 3)} - {(255,) * 3}
  assert len(ref_colours) == 1
  target_colours = {tuple(c) for c in s.target[s.mask]}
  assert ref_colours <= target_colours


def test_frames_move_over_time():
  s = refvie_mini.make_sample(0, 0, CFG, "local_recolor")
  assert not np.array_equal(s.source[0], s.source[-1])


def test_config_rejects_bad_frame_counts():
  with pytest.raises(ValueError, match="4k\\+1"):
    refvie_mini.MiniConfig(num_frames=4)


def test_written_layout_decodes_exactly(mini_dir):
  with open(mini_dir / "refvie_mini_ref.csv") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == [
    "iid",
    "src_video",
    "tgt_video",
    "ref_image",
    "prompt",
  ]
  with open(mini_dir / "refvie_mini_video.csv") as f:
    video_rows = list(csv.DictReader(f))
  with open(mini_dir / "refvie_mini_image.csv") as f:
    image_rows = list(csv.DictReader(f))
  assert len(rows) + len(video_rows) == NUM_VIDEOS
  assert len(image_rows) == NUM_IMAGES
  meta = [
    json.loads(ln)
    for ln in (mini_dir / "metadata.jsonl").read_text().splitlines()
  ]
  assert {m["edit_type"] for m in meta} == set(refvie_mini.EDIT_TYPES)
  row = rows[0]
  index = int(row["iid"][1:])
  sample = refvie_mini.make_sample(0, index, CFG)
  src = video_io.decode_video((mini_dir / row["src_video"]).read_bytes())
  tgt = video_io.decode_video((mini_dir / row["tgt_video"]).read_bytes())
  ref = video_io.decode_image((mini_dir / row["ref_image"]).read_bytes())
  np.testing.assert_array_equal(src, sample.source)
  np.testing.assert_array_equal(tgt, sample.target)
  np.testing.assert_array_equal(ref, sample.ref_image)
  np.testing.assert_array_equal(
    refvie_mini.load_mask(mini_dir, row["iid"]), sample.mask
  )
  image = video_io.decode_image(
    (mini_dir / image_rows[0]["src_video"]).read_bytes()
  )
  assert image.shape == (CFG.height, CFG.width, 3)


def test_command_line_writes_dataset_and_records(tmp_path, capsys):
  rc = refvie_mini.main(
    [
      f"--out_dir={tmp_path / 'mini'}",
      "--num_videos=7",
      "--num_images=2",
      "--height=32",
      "--width=32",
      f"--records_dir={tmp_path / 'rec'}",
    ]
  )
  assert rc == 0
  assert "records in" in capsys.readouterr().out
  for name in ("image", "video", "ref"):
    assert list((tmp_path / "rec" / name).glob("*.array_record"))


def test_command_line_refuses_records_over_the_dataset(tmp_path):
  """--records_dir/video would be the dataset itself: one line, exit 2,
  before anything is generated."""
  root = pathlib.Path(__file__).resolve().parents[2]
  env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(root))
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "kiwi_jax.data.refvie_mini",
      f"--out_dir={tmp_path / 'video'}",
      "--num_videos=1",
      "--num_images=0",
      f"--records_dir={tmp_path}",
    ],
    cwd=root,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 2, result.stderr
  (line,) = result.stderr.strip().splitlines()
  assert line.startswith("python -m kiwi_jax.data.refvie_mini: error: ")
  assert "--records_dir (its video/ folder)" in line
  assert not list(tmp_path.iterdir())
