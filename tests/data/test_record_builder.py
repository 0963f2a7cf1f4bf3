"""Record building: per-row checks, the problem report, parquet, tfds, CLI."""

import csv
import json

import numpy as np
import pytest

from kiwi_jax.data import (
  build_records,
  metadata,
  record_builder,
  records,
  refvie_mini,
  video_io,
)


def _clip(t, seed=0):
  return refvie_mini.make_sample(
    seed,
    0,
    refvie_mini.MiniConfig(
      height=32, width=32, num_frames=t if t % 4 == 1 else 5
    ),
  ).source[:t]


@pytest.fixture
def bad_csv(tmp_path):
  """Six rows: two good, then missing file, corrupt mp4, 3 frames, no prompt."""
  good = video_io.encode_video(_clip(5), lossless=True)
  (tmp_path / "good.mp4").write_bytes(good)
  (tmp_path / "corrupt.mp4").write_bytes(good[: len(good) // 3])
  short = np.concatenate([_clip(5)[:3]])
  (tmp_path / "short.mp4").write_bytes(
    video_io.encode_video(short, lossless=True)
  )
  rows = [
    ("good.mp4", "good.mp4", "make it red"),
    ("good.mp4", "good.mp4", "make it blue"),
    ("missing.mp4", "good.mp4", "a"),
    ("corrupt.mp4", "good.mp4", "b"),
    ("good.mp4", "short.mp4", "c"),
    ("good.mp4", "good.mp4", "  "),
  ]
  path = tmp_path / "train.csv"
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    # The reference's image CSV puts tgt_video first: column order is free.
    writer.writerow(["tgt_video", "src_video", "prompt"])
    writer.writerows((t, s, p) for s, t, p in rows)
  return path


WANT_COUNTS = {
  "missing_file": 1,
  "unreadable_video": 1,
  "too_few_frames": 1,
  "unreadable_image": 0,
  "empty_prompt": 1,
  "size_mismatch": 0,
}


def test_skip_policy_counts_each_problem_and_writes_good_rows(
  bad_csv, tmp_path
):
  out = tmp_path / "out"
  report = record_builder.build_array_records(
    metadata.read_csv_rows(bad_csv), bad_csv.parent, out, policy="skip"
  )
  assert report.counts == WANT_COUNTS
  assert (report.rows_seen, report.rows_written) == (6, 2)
  assert "train.csv:4" in report.examples["missing_file"][0]
  saved = json.loads((out / "refvie.report.json").read_text())
  assert saved["counts"] == WANT_COUNTS
  from array_record.python import array_record_module

  (shard,) = records.shard_paths(out)
  reader = array_record_module.ArrayRecordReader(shard)
  got = [records.deserialize(r) for r in reader.read_all()]
  assert [r["prompt"] for r in got] == ["make it red", "make it blue"]
  assert got[0]["num_frames"] == 5 and got[0]["src_kind"] == "video"


def test_fail_policy_counts_everything_and_writes_no_shard(bad_csv, tmp_path):
  out = tmp_path / "out"
  with pytest.raises(record_builder.RecordBuildError) as e:
    record_builder.build_array_records(
      metadata.read_csv_rows(bad_csv), bad_csv.parent, out, policy="fail"
    )
  assert e.value.report.counts == WANT_COUNTS
  assert "too_few_frames: 1" in str(e.value)
  assert not list(out.glob("*.array_record*"))
  assert json.loads((out / "refvie.report.json").read_text())["counts"] == (
    WANT_COUNTS
  )


def test_command_line_exit_status_follows_policy(bad_csv, tmp_path, capsys):
  args = [
    f"--csv={bad_csv}",
    f"--base_dir={bad_csv.parent}",
    f"--out_dir={tmp_path / 'o'}",
    "--num_workers=2",
  ]
  assert build_records.main(args + ["--policy=skip"]) == 0
  assert json.loads(capsys.readouterr().out.splitlines()[-1]) == WANT_COUNTS
  assert build_records.main(args + ["--policy=fail"]) == 1


def test_missing_column_is_named(tmp_path):
  path = tmp_path / "x.csv"
  path.write_text("src_video,prompt\na.mp4,b\n")
  with pytest.raises(ValueError, match=r"missing column\(s\) \['tgt_video'\]"):
    metadata.read_csv_rows(path)


def test_images_and_bad_reference_image(tmp_path):
  frame = _clip(1)[0]
  (tmp_path / "a.png").write_bytes(video_io.encode_png(frame))
  (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
  (tmp_path / "other.png").write_bytes(video_io.encode_png(frame[:16]))
  path = tmp_path / "ref.csv"
  path.write_text(
    "src_video,tgt_video,ref_image,prompt\n"
    "a.png,a.png,a.png,ok\n"
    "a.png,a.png,bad.jpg,bad ref\n"
    "a.png,other.png,a.png,sizes differ\n"
  )
  report = record_builder.ProblemReport()
  got = list(
    record_builder.checked_records(
      metadata.read_csv_rows(path),
      tmp_path,
      report,
      options=record_builder.CheckOptions(min_frames=1),
    )
  )
  assert [r["prompt"] for r in got] == ["ok"]
  assert got[0]["has_ref"] and got[0]["src_kind"] == "image"
  assert report.counts["unreadable_image"] == 1
  assert report.counts["size_mismatch"] == 1


def test_parquet_rows_carry_inline_reference_bytes(mini_dir, tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq

  with open(mini_dir / "refvie_mini_ref.csv") as f:
    rows = list(csv.DictReader(f))
  table = pa.table(
    {
      "iid": [r["iid"] for r in rows],
      "prompt": [r["prompt"] for r in rows],
      "src_video": [r["src_video"] for r in rows],
      "tgt_video": [r["tgt_video"] for r in rows],
      "ref_image_bytes": [
        (mini_dir / r["ref_image"]).read_bytes() for r in rows
      ],
    }
  )
  pq.write_table(table.slice(0, 2), tmp_path / "chunk_000.parquet")
  pq.write_table(table.slice(2), tmp_path / "chunk_001.parquet")
  out = tmp_path / "out"
  assert (
    build_records.main(
      [
        f"--parquet={tmp_path}/chunk_*.parquet",
        f"--base_dir={mini_dir}",
        f"--out_dir={out}",
        "--num_shards=2",
        "--policy=fail",
      ]
    )
    == 0
  )
  from array_record.python import array_record_module

  got = {}
  for shard in records.shard_paths(out):
    for raw in array_record_module.ArrayRecordReader(shard).read_all():
      record = records.deserialize(raw)
      got[record["key"]] = record
  assert sorted(got) == sorted(r["iid"] for r in rows)
  first = rows[0]
  np.testing.assert_array_equal(
    video_io.decode_image(got[first["iid"]]["ref_image"]),
    video_io.decode_image((mini_dir / first["ref_image"]).read_bytes()),
  )


def test_tfds_builder_is_readable_from_directory(mini_dir, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from kiwi_jax.data import tfds_builder

  rows = metadata.read_csv_rows(mini_dir / "refvie_mini_ref.csv")
  path, reports = tfds_builder.build_tfds(
    {"train": rows}, mini_dir, tmp_path / "tfds", policy="fail"
  )
  assert reports["train"].rows_written == len(rows)
  source = tfds.builder_from_directory(str(path)).as_data_source("train")
  assert len(source) == len(rows)
  example = source[0]
  key = example["key"].decode()
  sample = refvie_mini.make_sample(0, int(key[1:]), refvie_mini.MiniConfig())
  np.testing.assert_array_equal(
    video_io.decode_video(example["src"]), sample.source
  )
  assert example["has_ref"]


def test_clip_length_mismatch_and_empty_inline_reference(tmp_path):
  cfg = refvie_mini.MiniConfig(height=32, width=32, num_frames=9)
  nine = refvie_mini.make_sample(0, 0, cfg).source
  (tmp_path / "nine.mp4").write_bytes(
    video_io.encode_video(nine, lossless=True)
  )
  (tmp_path / "five.mp4").write_bytes(
    video_io.encode_video(nine[:5], lossless=True)
  )
  (tmp_path / "seven.mp4").write_bytes(
    video_io.encode_video(nine[:7], lossless=True)
  )
  rows = [
    metadata.Row("a", "a", "x", "nine.mp4", "five.mp4"),
    # 7 frames load as 5 (4k+1), like the 5-frame clip: no mismatch.
    metadata.Row("b", "b", "x", "seven.mp4", "five.mp4"),
    metadata.Row("c", "c", "x", "five.mp4", "five.mp4", ref_image_bytes=b""),
  ]
  report = record_builder.ProblemReport()
  got = list(record_builder.checked_records(rows, tmp_path, report))
  assert [r["key"] for r in got] == ["b"]
  assert got[0]["num_frames"] == 5
  assert report.counts["size_mismatch"] == 1
  assert "9x32x32 vs target 5x32x32" in report.examples["size_mismatch"][0]
  assert report.counts["unreadable_image"] == 1
