"""End to end on one machine: RefVIE-mini pairs with planted problems in,
RefVIE-format quadruplets, provenance and a report out; resumable."""

import csv
import json
import shutil
import sys

import numpy as np
import pytest

from kiwi_jax.data import metadata, record_builder, video_io
from kiwi_jax.refvie import cli, grounding, process
from kiwi_jax.refvie import run_local as pipeline_local
from kiwi_jax.refvie.records import Outcome
from tests.refvie.conftest import (
  EXPECTED_BY_TYPE,
  NUM_IMAGES,
  NUM_VIDEOS,
  PLANTED,
  pool_rows,
)

OUTPUT_FILES = ("refvie.csv", "provenance.jsonl", "report.json")


def _outcomes(out):
  return {
    o.key: o
    for o in map(
      Outcome.from_json, (out / "provenance.jsonl").read_text().splitlines()
    )
  }


def _snapshot(out):
  """Every output file's bytes (work/ excluded), by relative path."""
  return {
    str(p.relative_to(out)): p.read_bytes()
    for p in sorted(out.rglob("*"))
    if p.is_file() and p.relative_to(out).parts[0] != "work"
  }


def test_every_pair_gets_the_right_outcome(mini_pool, local_run):
  _, _, types = mini_pool
  out, report = local_run
  outcomes = _outcomes(out)
  assert len(outcomes) == NUM_VIDEOS + NUM_IMAGES + len(PLANTED)
  for key, edit_type in types.items():
    want = EXPECTED_BY_TYPE[edit_type]
    o = outcomes[key]
    if want[0] == "accepted":
      assert (o.status, o.edit_kind) == want, (key, o.detail)
      assert o.ref_image and o.best_frame is not None
      frames = 1 if key.startswith("i") else 5
      assert len(o.boxes) == frames and all(b is not None for b in o.boxes)
      assert o.scores["verification.margin"] >= 0.15
    else:
      assert (o.stage, o.reason) == want, (key, o.detail)
  for key, (stage, reason) in PLANTED.items():
    o = outcomes[key]
    assert (o.status, o.stage, o.reason) == ("rejected", stage, reason), (
      key,
      o.detail,
    )
    assert o.detail
  # Both planted copies of v000000 go; the original stays.
  assert outcomes["x_dup_exact"].duplicate_of == "v000000"
  assert outcomes["x_dup_brighter"].duplicate_of == "v000000"
  assert outcomes["v000000"].status == "accepted"


def test_report_counts_add_up(local_run):
  out, report = local_run
  assert json.loads((out / "report.json").read_text()) == report
  by_reason = report["rejected_by_reason"]
  assert report["input"] == report["accepted"] + report["rejected"]
  assert report["rejected"] == sum(report["rejected_by_stage"].values())
  for stage, reasons in by_reason.items():
    assert report["rejected_by_stage"][stage] == sum(reasons.values())
  outcomes = _outcomes(out).values()
  assert report["accepted"] == sum(o.status == "accepted" for o in outcomes)
  assert by_reason["dedup"]["duplicate"] == 2
  assert by_reason["quality"]["no_edit"] == 2
  assert by_reason["grounding"]["global_change"] == 1


def test_output_is_refvie_format_and_loads(local_run):
  out, report = local_run
  with open(out / "refvie.csv") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == [
    "iid",
    "src_video",
    "tgt_video",
    "ref_image",
    "prompt",
  ]
  assert len(rows) == report["accepted"]
  assert [r["iid"] for r in rows] == sorted(r["iid"] for r in rows)
  # Media of duplicates is gone, the rest is present.
  assert not (out / "media/ref/x_dup_exact.png").exists()
  assert len(list((out / "media/ref").iterdir())) == len(rows)
  for row in metadata.read_csv_rows(out / "refvie.csv"):
    frames = 1 if row.key.startswith("i") else 5
    fields, problems = record_builder.check_row(
      row, out, record_builder.CheckOptions(min_frames=frames)
    )
    assert not problems and fields["has_ref"]
  ref = video_io.decode_image((out / rows[0]["ref_image"]).read_bytes())
  assert ref.ndim == 3 and (ref[0] == 255).all()  # white canvas border


def test_resume_skips_done_chunks_and_gives_the_same_output(
  mini_pool, local_run, tmp_path
):
  base, pool_csv, _ = mini_pool
  first, _ = local_run
  out = tmp_path / "resumed"
  shutil.copytree(first, out)
  chunks = sorted((out / "work").glob("chunk-*.jsonl"))
  assert len(chunks) == 4  # 28 pairs in chunks of 7
  kept = chunks[0].stat().st_mtime_ns
  # A run that died after its first chunk: later chunks and outputs missing.
  for path in chunks[1:]:
    path.unlink()
  for name in OUTPUT_FILES:
    (out / name).unlink()
  pipeline_local.run_local(
    pool_rows(pool_csv), base, out, chunk_size=7, progress=False
  )
  assert chunks[0].stat().st_mtime_ns == kept
  assert _snapshot(out) == _snapshot(first)


def test_resume_with_other_settings_is_refused(mini_pool, local_run, tmp_path):
  base, pool_csv, _ = mini_pool
  out = tmp_path / "other"
  shutil.copytree(local_run[0], out)
  other = process.Pipeline(
    grounder=grounding.DiffGrounder(
      grounding.GroundingConfig(low_threshold=20.0)
    )
  )
  rows = pool_rows(pool_csv)
  with pytest.raises(ValueError, match="different pipeline"):
    pipeline_local.run_local(
      rows, base, out, other, chunk_size=7, progress=False
    )
  with pytest.raises(ValueError, match="different num_rows, rows_sha256"):
    pipeline_local.run_local(rows[:-1], base, out, chunk_size=7, progress=False)
  report = pipeline_local.run_local(
    rows, base, out, other, chunk_size=7, progress=False, overwrite=True
  )
  assert report["input"] == len(rows)


def test_duplicate_keys_are_refused(mini_pool, tmp_path):
  base, pool_csv, _ = mini_pool
  rows = pool_rows(pool_csv)
  with pytest.raises(ValueError, match="key 'v000000' appears twice"):
    pipeline_local.run_local(rows + rows[:1], base, tmp_path, progress=False)


@pytest.mark.slow
def test_process_pool_gives_the_same_output(mini_pool, local_run, tmp_path):
  base, pool_csv, _ = mini_pool
  pipeline_local.run_local(
    pool_rows(pool_csv),
    base,
    tmp_path,
    chunk_size=7,
    num_workers=2,
    progress=False,
  )
  assert _snapshot(tmp_path) == _snapshot(local_run[0])


def test_command_line(mini_pool, local_run, tmp_path, capsys):
  base, pool_csv, _ = mini_pool
  out, records_dir = tmp_path / "out", tmp_path / "records"
  rc = cli.main(
    [
      f"--csv={pool_csv}",
      f"--base_dir={base}",
      f"--out_dir={out}",
      "--chunk_size=7",
      "--no_progress",
      f"--records_dir={records_dir}",
    ]
  )
  assert rc == 0
  printed = capsys.readouterr().out
  report = json.loads(printed[: printed.index("ArrayRecord shards")])
  assert report == local_run[1]
  assert _snapshot(out) == _snapshot(local_run[0])
  built = json.loads((records_dir / "refvie.report.json").read_text())
  assert built["rows_written"] == report["accepted"]
  assert list(records_dir.glob("refvie-*.array_record"))


def test_reference_media_mode_lists_original_paths(mini_pool, tmp_path):
  base, pool_csv, _ = mini_pool
  rows = [r for r in pool_rows(pool_csv) if r.key == "v000000"]
  pipeline_local.run_local(
    rows, base, tmp_path, process.Pipeline(media="reference"), progress=False
  )
  (row,) = metadata.read_csv_rows(tmp_path / "refvie.csv")
  assert row.src_video == str(base / "media/src/v000000.mp4")
  assert not (tmp_path / "media/src").exists()
  frames = video_io.decode_video((tmp_path / row.src_video).read_bytes())
  assert frames.shape == (5, 64, 64, 3) and frames.dtype == np.uint8


def test_rejections_keep_their_provenance(local_run):
  outcomes = _outcomes(local_run[0])
  removal = outcomes["v000001"]  # "Remove the red square."
  assert (removal.stage, removal.reason) == ("grounding", "removal_edit")
  assert len(removal.boxes) == 5 and any(removal.boxes)
  assert removal.scores["grounding.area_fraction"] > 0
  assert "quality.change_fraction" in removal.scores
  flicker = outcomes["p_flicker"]
  assert flicker.scores["quality.change_jump"] > 0.35


def test_beam_runner_without_beam_says_what_to_install(
  mini_pool, tmp_path, monkeypatch, capsys
):
  base, pool_csv, _ = mini_pool
  monkeypatch.setitem(sys.modules, "apache_beam", None)
  monkeypatch.delitem(sys.modules, "kiwi_jax.refvie.run_beam", raising=False)
  rc = cli.main(
    [
      f"--csv={pool_csv}",
      f"--base_dir={base}",
      f"--out_dir={tmp_path}",
      "--runner=beam",
    ]
  )
  assert rc == 2
  assert "pip install apache-beam" in capsys.readouterr().err
