"""A record build owns its output folder; bad input gets one line, exit 2.

Through the real command line (`python -m kiwi_jax.data.build_records`),
on 1-frame PNG rows so each run takes a moment.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from kiwi_jax.data import build_folder, metadata, record_builder, video_io

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_cli(*args, module="kiwi_jax.data.build_records"):
  env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
  return subprocess.run(
    [sys.executable, "-m", module, *map(str, args)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )


def assert_one_line_error(result, *fragments):
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("python -m kiwi_jax.data.build_records: error: ")
  assert "Traceback" not in result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.fixture
def png_csv(tmp_path):
  """A 4-row CSV of 8x8 PNG edits in `tmp_path/media`."""
  media = tmp_path / "media"
  media.mkdir()
  image = np.full((8, 8, 3), 100, np.uint8)
  (media / "a.png").write_bytes(video_io.encode_png(image))
  path = media / "train.csv"
  path.write_text(
    "src_video,tgt_video,prompt\n"
    + "".join(f"a.png,a.png,edit {i}\n" for i in range(4))
  )
  return path


def build_args(csv_path, out, *extra):
  return (
    f"--csv={csv_path}",
    f"--base_dir={csv_path.parent}",
    f"--out_dir={out}",
    "--min_frames=1",
    "--num_workers=1",
    *extra,
  )


def stored_prompts(out):
  rows = metadata.read_record_rows(metadata.record_shards(out))
  return sorted(r.prompt for r in rows)


def test_rebuild_with_fewer_shards_replaces_the_previous_build(
  png_csv, tmp_path
):
  out = tmp_path / "records"
  first = run_cli(*build_args(png_csv, out, "--num_shards=2"))
  assert first.returncode == 0, first.stderr
  second = run_cli(*build_args(png_csv, out, "--num_shards=1"))
  assert second.returncode == 0, second.stderr
  assert sorted(p.name for p in out.iterdir()) == [
    "refvie-00000-of-00001.array_record",
    "refvie.report.json",
  ]
  assert stored_prompts(out) == [f"edit {i}" for i in range(4)]
  assert json.loads((out / "refvie.report.json").read_text())["status"] == (
    "complete"
  )
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_folder_with_other_files_is_refused(png_csv, tmp_path):
  out = tmp_path / "mine"
  out.mkdir()
  (out / "notes.txt").write_text("keep me")
  result = run_cli(*build_args(png_csv, out))
  assert_one_line_error(result, "notes.txt", "new or empty folder")
  assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_staging_leftovers_of_a_killed_build_are_removed(png_csv, tmp_path):
  out = tmp_path / "records"
  left = tmp_path / ".records.tmp-killed"
  left.mkdir()
  (left / "refvie-00000-of-00001.array_record.tmp").write_bytes(b"x")
  result = run_cli(*build_args(png_csv, out))
  assert result.returncode == 0, result.stderr
  assert not left.exists()


def _rows_then_interrupt(rows, after):
  for i, row in enumerate(rows):
    if i == after:
      raise KeyboardInterrupt
    yield row


def test_interrupted_build_says_so_and_keeps_the_previous_build(
  png_csv, tmp_path
):
  out = tmp_path / "records"
  rows = metadata.read_csv_rows(png_csv)
  record_builder.build_array_records(
    rows,
    png_csv.parent,
    out,
    options=record_builder.CheckOptions(min_frames=1),
    num_shards=2,
  )
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  with pytest.raises(KeyboardInterrupt):
    record_builder.build_array_records(
      _rows_then_interrupt(rows, after=2),
      png_csv.parent,
      out,
      options=record_builder.CheckOptions(min_frames=1),
    )
  unfinished = out / f"refvie{build_folder.UNFINISHED_REPORT_SUFFIX}"
  report = json.loads(unfinished.read_text())
  assert report["status"] == "interrupted"
  assert report["rows_written"] == 0 and report["rows_seen"] <= 2
  assert {
    p.name: p.read_bytes() for p in out.iterdir() if p != unfinished
  } == before

  fresh = tmp_path / "fresh"
  with pytest.raises(KeyboardInterrupt):
    record_builder.build_array_records(
      _rows_then_interrupt(rows, after=1),
      png_csv.parent,
      fresh,
      options=record_builder.CheckOptions(min_frames=1),
    )
  assert [p.name for p in fresh.iterdir()] == ["refvie.report.json"]
  report = json.loads((fresh / "refvie.report.json").read_text())
  assert report["status"] == "interrupted"
  assert (
    "no shard written"
    in record_builder.ProblemReport(rows_seen=1, status="interrupted").summary()
  )


def test_duplicate_ids_are_reported_and_written_once(png_csv, tmp_path):
  path = png_csv.parent / "ids.csv"
  path.write_text(
    "iid,src_video,tgt_video,prompt\n"
    "x1,a.png,a.png,first\nx2,a.png,a.png,other\n"
    "x1,a.png,a.png,again\n"
  )
  out = tmp_path / "records"
  result = run_cli(*build_args(path, out))
  assert result.returncode == 0, result.stderr
  assert "duplicate_key: 1" in result.stdout
  assert stored_prompts(out) == ["first", "other"]
  report = json.loads((out / "refvie.report.json").read_text())
  assert report["duplicate_keys"] == 1
  assert "x1 already used by" in report["examples"]["duplicate_key"][0]
  assert (
    run_cli(*build_args(path, tmp_path / "f", "--policy=fail")).returncode == 1
  )


def test_tfds_rebuild_replaces_the_prepared_dataset(png_csv, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from kiwi_jax.data import tfds_builder

  rows = metadata.read_csv_rows(png_csv)
  options = record_builder.CheckOptions(min_frames=1)
  tfds_builder.build_tfds(
    {"train": rows}, png_csv.parent, tmp_path / "t", options=options
  )
  path, reports = tfds_builder.build_tfds(
    {"train": rows[:1]}, png_csv.parent, tmp_path / "t", options=options
  )
  assert reports["train"].rows_written == 1
  source = tfds.builder_from_directory(str(path)).as_data_source("train")
  assert len(source) == 1
  assert not [p for p in (tmp_path / "t").iterdir() if p.name.startswith(".")]


# Item 7: every input mistake is one line naming it, exit 2, no output.


def test_csv_with_wrong_columns(png_csv, tmp_path):
  path = png_csv.parent / "wrong.csv"
  path.write_text("source,target,prompt\na.png,a.png,x\n")
  result = run_cli(*build_args(path, tmp_path / "out"))
  assert_one_line_error(
    result,
    str(path),
    "['src_video', 'tgt_video']",
    "header needs src_video, tgt_video, prompt",
  )
  assert not (tmp_path / "out").exists()


def test_missing_csv(png_csv, tmp_path):
  result = run_cli(*build_args(png_csv.parent / "nope.csv", tmp_path / "o"))
  assert_one_line_error(result, "nope.csv: no such CSV file")
  assert not (tmp_path / "o").exists()


def test_parquet_without_the_expected_column(png_csv, tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq

  good = {
    "iid": ["a"],
    "prompt": ["x"],
    "src_video": ["a.png"],
    "tgt_video": ["a.png"],
    "ref_image_bytes": [(png_csv.parent / "a.png").read_bytes()],
  }
  pq.write_table(pa.table(good), tmp_path / "chunk_000.parquet")
  del good["ref_image_bytes"]
  pq.write_table(pa.table(good), tmp_path / "chunk_001.parquet")
  result = run_cli(
    f"--parquet={tmp_path}/chunk_*.parquet",
    f"--base_dir={png_csv.parent}",
    f"--out_dir={tmp_path / 'out'}",
  )
  assert_one_line_error(
    result, "chunk_001.parquet", "missing column(s) ['ref_image_bytes']"
  )
  assert not (tmp_path / "out").exists()


def test_empty_glob(png_csv, tmp_path):
  result = run_cli(
    f"--parquet={tmp_path}/none_*.parquet",
    f"--base_dir={png_csv.parent}",
    f"--out_dir={tmp_path / 'out'}",
  )
  assert_one_line_error(result, "none_*.parquet: no file matches")


def test_corrupt_inline_reference_names_the_row_id(png_csv):
  row = metadata.Row(
    "iid-7",
    "chunk_000.parquet[row 3, iid iid-7]",
    "x",
    "a.png",
    "a.png",
    ref_image_bytes=b"not an image",
  )
  fields, problems = record_builder.check_row(
    row, png_csv.parent, record_builder.CheckOptions(min_frames=1)
  )
  assert fields is None
  (problem,) = problems
  assert problem.kind == "unreadable_image"
  assert "ref_image_bytes of row iid-7 (12 bytes)" in problem.detail
  assert "BytesIO" not in problem.detail


# Item 2: an output that resolves to an input is refused before any work.


@pytest.mark.parametrize("where", ["media", "parent"])
def test_output_folder_holding_the_inputs_is_refused(png_csv, where):
  media = png_csv.parent
  out = media if where == "media" else media.parent
  before = sorted(p.name for p in out.iterdir())
  result = run_cli(*build_args(png_csv, f"{out}/."))
  assert_one_line_error(result, "Choose an")
  assert sorted(p.name for p in out.iterdir()) == before


def test_remote_folder_publishing_replaces_the_previous_build(
  png_csv, tmp_path, monkeypatch
):
  """gs:// has no rename: the remote path stages, deletes, renames. Run on
  a local folder treated as remote."""
  monkeypatch.setattr(build_folder, "_is_remote", lambda path: True)
  out = tmp_path / "bucket"
  rows = metadata.read_csv_rows(png_csv)
  options = record_builder.CheckOptions(min_frames=1)
  record_builder.build_array_records(
    rows, png_csv.parent, out, options=options, num_shards=2
  )
  with pytest.raises(KeyboardInterrupt):
    record_builder.build_array_records(
      _rows_then_interrupt(rows, after=1), png_csv.parent, out, options=options
    )
  record_builder.build_array_records(
    rows, png_csv.parent, out, options=options, num_shards=1
  )
  assert sorted(p.name for p in out.iterdir()) == [
    "refvie-00000-of-00001.array_record",
    "refvie.report.json",
  ]
  assert stored_prompts(out) == [f"edit {i}" for i in range(4)]


def test_previous_build_moved_aside_by_a_killed_build_is_restored(
  png_csv, tmp_path
):
  out = tmp_path / "records"
  rows = metadata.read_csv_rows(png_csv)
  options = record_builder.CheckOptions(min_frames=1)
  record_builder.build_array_records(rows, png_csv.parent, out, options=options)
  aside = tmp_path / ".records.old-killed"
  aside.mkdir()
  out.rename(aside / "x")
  build_folder.remove_leftovers(out)
  assert stored_prompts(out) == [f"edit {i}" for i in range(4)]
  assert not aside.exists()
