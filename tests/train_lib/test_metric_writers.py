"""Metric writers: JSONL content, TensorBoard events, process-0 only."""

import json

import av
import numpy as np
import pytest

from kiwi_jax.train_lib import metric_writers as mw


def test_jsonl_records_scalars_hparams_videos(tmp_path):
  w = mw.JsonlWriter(tmp_path)
  w.write_hparams({"lr": 1e-5, "model": {"variant": "tiny"}})
  w.write_scalars(3, {"training_loss": np.float32(0.5), "bad": float("nan")})
  video = np.zeros((5, 16, 18, 3), np.uint8)
  video[:, 4:8] = 255
  w.write_videos(3, {"edit/side_by_side": video}, fps=8)
  w.write_images(3, {"ref": np.zeros((4, 4, 3), np.float32)})
  w.close()
  lines = [
    json.loads(ln)
    for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()
  ]
  assert lines[0]["hparams"]["model"] == {"variant": "tiny"}
  assert lines[1]["step"] == 3 and lines[1]["training_loss"] == 0.5
  assert lines[1]["bad"] == "nan"
  mp4 = tmp_path / lines[2]["videos"]["edit/side_by_side"]
  with av.open(str(mp4)) as c:
    frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
  assert len(frames) == 5 and frames[0].shape == (16, 18, 3)
  assert lines[3]["images"] == {"ref": [4, 4, 3]}


def test_default_writer_tensorboard_and_non_zero_process(tmp_path):
  pytest.importorskip("tensorboardX")
  w = mw.create_default_writer(tmp_path, just_logging=False)
  w.write_scalars(1, {"loss": 1.0})
  w.write_images(1, {"img": np.ones((2, 4, 4, 3), np.float32)})
  w.write_hparams({"a": 1})
  w.flush()
  w.close()
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  quiet = mw.create_default_writer(tmp_path / "p1", just_logging=True)
  quiet.write_scalars(1, {"loss": 1.0})
  quiet.close()
  assert not (tmp_path / "p1").exists()


def test_write_mp4_rejects_bad_input_and_leaves_nothing(tmp_path):
  from kiwi_jax.utils.video_files import write_mp4

  with pytest.raises(ValueError, match="uint8"):
    write_mp4(tmp_path / "a.mp4", np.zeros((2, 4, 4, 3), np.float32))
  with pytest.raises(ValueError, match="no frames"):
    write_mp4(tmp_path / "a.mp4", np.zeros((0, 4, 4, 3), np.uint8))
  assert not list(tmp_path.iterdir())


def test_jsonl_discard_after_keeps_one_row_per_step(tmp_path):
  w = mw.JsonlWriter(tmp_path)
  w.write_hparams({"lr": 1})
  for step in range(1, 6):
    w.write_scalars(step, {"loss": float(step)})
  w.close()
  path = tmp_path / "metrics.jsonl"
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"step": 6, "lo')  # a run killed in the middle of a line
  # The restart restores step 3 and writes steps 4.. again.
  w = mw.JsonlWriter(tmp_path)
  w.write_hparams({"lr": 1})
  w.discard_after(3)
  w.write_scalars(4, {"loss": 40.0})
  w.close()
  rows = [json.loads(ln) for ln in path.read_text().splitlines()]
  assert [r.get("step", "h") for r in rows] == ["h", 1, 2, 3, "h", 4]
  assert rows[-1]["loss"] == 40.0
