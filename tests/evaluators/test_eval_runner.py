"""Benchmark readers, sharding, and the resumable runner."""

import os

import av
import eval_fakes
import numpy as np
import pytest
import yaml

from kiwi_jax.evaluators import benchmarks, runner, video_io

OPENVE_CSV = """original_video,prompt,edited_type
videos/a.mp4,Make it watercolor,global_style
videos/b.mp4,Add subtitles,subtitle_edit
videos/sub/c.mp4,Remove the dog,local_remove
videos/d.mp4,Zoom out,camera_edit
videos/e.mp4,A dragon appears,creative_edit
videos/f.mp4,Add a hat,local_add
"""


def test_openve_reader_skips_types_and_names_outputs(tmp_path):
  path = tmp_path / "bench.csv"
  path.write_text(OPENVE_CSV)
  items = benchmarks.read_openve(str(path), "./benchmark/")
  assert [i.index for i in items] == [0, 2, 5]
  assert [i.output_name for i in items] == [
    "a_edited.mp4",
    "c_edited.mp4",
    "f_edited.mp4",
  ]
  assert items[1].source_video == "./benchmark/videos/sub/c.mp4"
  assert items[1].edit_type == "local_remove"
  assert items[2].instruction == "Add a hat"
  assert items[0].reference_image is None and items[0].target_video is None


def test_openve_reader_names_a_missing_column(tmp_path):
  path = tmp_path / "bench.csv"
  path.write_text("original_video,prompt\nv.mp4,x\n")
  with pytest.raises(
    ValueError,
    match=r"bench.csv: missing column\(s\) "
    r"\['edited_type'\]",
  ):
    benchmarks.read_openve(str(path))


def test_refvie_reader_names_and_prompt_only(tmp_path):
  path = tmp_path / "bench.yaml"
  path.write_text(
    yaml.safe_dump(
      [
        {
          "src_video": "v/x.mp4",
          "instruction": "Replace the cat with the dog",
          "ref_img": "r/1.jpg",
          "edit_type": "subject",
        },
        {
          "src_video": "v/y.mp4",
          "instruction": "Sky",
          "ref_img": "r/2.jpg",
          "edit_type": "background",
          "tgt_video": "t/y.mp4",
        },
      ]
    )
  )
  items = benchmarks.read_refvie(str(path), "root/")
  assert [i.output_name for i in items] == ["0_Replace th_x.mp4", "1_Sky_y.mp4"]
  assert items[0].reference_image == "root/r/1.jpg"
  assert items[1].target_video == "root/t/y.mp4"
  assert items[0].raw["ref_img"] == "r/1.jpg"
  prompt_only = benchmarks.read_refvie(str(path), "root/", prompt_only=True)
  assert [i.reference_image for i in prompt_only] == [None, None]
  assert [i.output_name for i in prompt_only] == [i.output_name for i in items]


@pytest.mark.parametrize(
  "content, message",
  [
    ('{"a": 1}', "expected a YAML list"),
    ("- [1, 2]", "item 0 is a list"),
    (
      "- {src_video: a.mp4, instruction: x, edit_type: subject}",
      r"item 0 lacks key\(s\) \['ref_img'\]",
    ),
  ],
)
def test_refvie_reader_errors(tmp_path, content, message):
  path = tmp_path / "bench.yaml"
  path.write_text(content)
  with pytest.raises(ValueError, match=message):
    benchmarks.read_refvie(str(path))


def test_shards_split_by_row_index(tmp_path):
  path = tmp_path / "bench.csv"
  path.write_text(OPENVE_CSV)
  items = benchmarks.read_openve(str(path))
  shards = [benchmarks.shard(items, i, 2) for i in range(2)]
  # Row indices 0, 2, 5: even rows to process 0, odd to process 1.
  assert [i.index for i in shards[0]] == [0, 2]
  assert [i.index for i in shards[1]] == [5]
  with pytest.raises(ValueError, match="process_index=2"):
    benchmarks.shard(items, 2, 2)


def _items(tmp_path, count=4):
  yaml_path = eval_fakes.make_refvie_mini(
    str(tmp_path / "bench"), count, with_targets=False
  )
  return benchmarks.read_refvie(yaml_path, str(tmp_path / "bench"))


def test_runner_resumes_without_redoing_finished_items(tmp_path):
  items = _items(tmp_path)
  save_dir = str(tmp_path / "out")
  interrupted = eval_fakes.CountingEditor(fail_on_call=3)
  with pytest.raises(KeyboardInterrupt):
    runner.run_benchmark(items, interrupted, save_dir, show_progress=False)
  finished = sorted(os.listdir(save_dir))
  assert finished == sorted(
    [i.output_name for i in items[:2]]
    + ["concat_" + i.output_name for i in items[:2]]
  )
  stamps = {n: os.stat(os.path.join(save_dir, n)).st_mtime_ns for n in finished}

  resumed = eval_fakes.CountingEditor()
  summary = runner.run_benchmark(items, resumed, save_dir, show_progress=False)
  assert resumed.calls == [i.output_name for i in items[2:]]
  assert summary.skipped == [i.output_name for i in items[:2]]
  assert summary.edited == resumed.calls
  for name, stamp in stamps.items():
    assert os.stat(os.path.join(save_dir, name)).st_mtime_ns == stamp
  for item in items:
    out = video_io.read_video(os.path.join(save_dir, item.output_name))
    assert out.shape == (
      eval_fakes.FRAMES,
      eval_fakes.HEIGHT,
      eval_fakes.WIDTH,
      3,
    )
    concat = video_io.read_video(
      os.path.join(save_dir, runner.side_by_side_name(item.output_name))
    )
    assert concat.shape == out.shape[:2] + (2 * eval_fakes.WIDTH, 3)
  # Nothing half-written anywhere.
  assert not [n for n in os.listdir(save_dir) if n.startswith(".")]
  again = eval_fakes.CountingEditor()
  runner.run_benchmark(items, again, save_dir, show_progress=False)
  assert again.calls == []


def test_runner_processes_cover_the_benchmark_once(tmp_path):
  items = _items(tmp_path, count=3)
  save_dir = str(tmp_path / "out")
  editors = [eval_fakes.CountingEditor() for _ in range(2)]
  for index, editor in enumerate(editors):
    runner.run_benchmark(
      items,
      editor,
      save_dir,
      process_index=index,
      process_count=2,
      write_side_by_side=False,
      show_progress=False,
    )
  assert editors[0].calls == [items[0].output_name, items[2].output_name]
  assert editors[1].calls == [items[1].output_name]
  assert sorted(os.listdir(save_dir)) == sorted(i.output_name for i in items)


def test_runner_accepts_float_frames_with_batch_axis(tmp_path):
  items = _items(tmp_path, count=1)
  clip = eval_fakes.moving_clip(0)
  as_float = (clip.astype(np.float32) / 127.5 - 1.0)[None]
  runner.run_benchmark(
    items,
    lambda item: as_float,
    str(tmp_path / "out"),
    write_side_by_side=False,
    show_progress=False,
  )
  out = video_io.read_video(str(tmp_path / "out" / items[0].output_name))
  # Lossy video coding: close, not equal.
  assert np.abs(out.astype(int) - clip.astype(int)).mean() < 3


def test_bad_editor_output_is_named(tmp_path):
  items = _items(tmp_path, count=1)
  with pytest.raises(
    ValueError,
    match=r"editor output for item 0 .*shape "
    r"\(5, 32, 48\)",
  ):
    runner.run_benchmark(
      items,
      lambda item: np.zeros((5, 32, 48)),
      str(tmp_path / "out"),
      show_progress=False,
    )
  assert os.listdir(tmp_path / "out") == []


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
  calls = []
  original = av.VideoFrame.from_ndarray

  def fail_on_second_frame(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise RuntimeError("disk full")
    return original(*args, **kwargs)

  monkeypatch.setattr(av.VideoFrame, "from_ndarray", fail_on_second_frame)
  with pytest.raises(RuntimeError, match="disk full"):
    video_io.write_video(str(tmp_path / "x.mp4"), eval_fakes.moving_clip(0))
  assert os.listdir(tmp_path) == []
