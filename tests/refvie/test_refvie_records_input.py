"""ArrayRecord input: the pipeline run from `build_records` shards (media
inline, no paths) gives the same quadruplets and report as from the CSV."""

import json

import numpy as np
import pytest

from kiwi_jax.data import metadata, record_builder, video_io
from kiwi_jax.refvie import cli, process
from kiwi_jax.refvie import run_local as pipeline_local
from tests.refvie.conftest import pool_rows

# Rows the record builder drops (its own checks), so neither run sees them.
DROPPED_BY_BUILDER = {"p_missing", "p_corrupt", "p_no_prompt"}


@pytest.fixture(scope="module")
def pool_records(mini_pool, tmp_path_factory):
  base, pool_csv, _ = mini_pool
  out = tmp_path_factory.mktemp("pool_records")
  report = record_builder.build_array_records(
    pool_rows(pool_csv),
    base,
    out,
    options=record_builder.CheckOptions(min_frames=1),
    policy="skip",
    num_shards=2,
    prefix="pool",
  )
  assert report.rows_written == report.rows_seen - len(DROPPED_BY_BUILDER)
  return out


def _outputs(out):
  """Media bytes, CSV and report, plus each outcome minus where it came
  from (the origin and the input locators of rejected pairs differ)."""
  files = {
    str(p.relative_to(out)): p.read_bytes()
    for p in sorted(out.rglob("*"))
    if p.is_file() and p.relative_to(out).parts[0] == "media"
  }
  outcomes = {}
  for line in (out / "provenance.jsonl").read_text().splitlines():
    fields = json.loads(line)
    fields.pop("origin")
    if fields["status"] != "accepted":
      fields.pop("src_video"), fields.pop("tgt_video")
    outcomes[fields["key"]] = fields
  return (
    files,
    (out / "refvie.csv").read_text(),
    json.loads((out / "report.json").read_text()),
    outcomes,
  )


def test_records_run_equals_csv_run(mini_pool, pool_records, tmp_path):
  base, pool_csv, _ = mini_pool
  rows = list(metadata.read_record_rows(metadata.record_shards(pool_records)))
  assert all(r.src_bytes and r.tgt_bytes for r in rows)
  keys = {r.key for r in rows}
  csv_rows = [r for r in pool_rows(pool_csv) if r.key in keys]
  assert len(csv_rows) == len(rows)
  pipeline_local.run_local(
    csv_rows, base, tmp_path / "from_csv", chunk_size=7, progress=False
  )
  # Through the CLI flag (a glob over the shards), no --base_dir needed.
  assert (
    cli.main(
      [
        f"--records={pool_records}/pool-*.array_record",
        f"--out_dir={tmp_path / 'from_records'}",
        "--no_progress",
      ]
    )
    == 0
  )
  from_csv = _outputs(tmp_path / "from_csv")
  from_records = _outputs(tmp_path / "from_records")
  assert from_records[2] == from_csv[2]  # report
  assert from_records[2]["accepted"] > 0
  assert from_records[1] == from_csv[1]  # refvie.csv
  assert from_records[0] == from_csv[0]  # media bytes (and extensions)
  assert from_records[3] == from_csv[3]  # outcomes, scores, boxes


def test_media_extension_sniffs_containers():
  frames = np.zeros((5, 16, 16, 3), np.uint8)
  assert video_io.media_extension(video_io.encode_video(frames, fps=8)) == (
    ".mp4"
  )
  assert video_io.media_extension(video_io.encode_png(frames[0])) == ".png"
  with pytest.raises(video_io.MediaError, match="unrecognised"):
    video_io.media_extension(b"not a video")


def test_inline_rows_are_checked(tmp_path):
  with pytest.raises(ValueError, match="src_kind"):
    metadata.Row("k", "here", "p", "a", "b", src_bytes=b"x")
  row = metadata.Row(
    "k",
    "here",
    "p",
    "a",
    "b",
    src_bytes=b"x",
    src_kind="video",
    tgt_bytes=b"not a video",
    tgt_kind="video",
  )
  with pytest.raises(ValueError, match="media='copy'"):
    process.Pipeline(media="reference").process(row, tmp_path, tmp_path)
  outcome = process.Pipeline().process(row, tmp_path, tmp_path)
  assert (outcome.stage, outcome.reason) == ("input", "unreadable_media")
  # The record locator names the culprit.
  assert outcome.detail.startswith("src_video a: "), outcome.detail
