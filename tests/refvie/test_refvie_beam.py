"""The Beam path gives the same records as the single-machine path.

Needs the optional `apache-beam` (2.77 checked, DirectRunner); it pins
protobuf < 7, pyarrow < 26 and pillow < 13, below the core pins, so it runs
from its own environment: a venv made with the project's interpreter plus
`pip install apache-beam`. Without Beam these tests are skipped.
"""

import pytest

from tests.refvie.conftest import pool_rows
from tests.refvie.test_refvie_build import _snapshot

pytest.importorskip("apache_beam")

# pylint: disable-next=g-import-not-at-top,wrong-import-position
from kiwi_jax.refvie import pipeline_beam


@pytest.mark.slow
def test_beam_and_local_give_the_same_records(mini_pool, local_run,
                                              tmp_path):
  base, pool_csv, _ = mini_pool
  local_out, local_report = local_run
  from_rows = tmp_path / "rows"
  report = pipeline_beam.run_beam(pool_rows(pool_csv), base, from_rows)
  assert report == local_report
  assert _snapshot(from_rows) == _snapshot(local_out)
  # Rows read on the workers from the CSV: the same again.
  from_csv = tmp_path / "csv"
  pipeline_beam.run_beam(None, base, from_csv, csv_paths=[str(pool_csv)])
  assert _snapshot(from_csv) == _snapshot(local_out)
  assert report["rejected_by_reason"]["dedup"]["duplicate"] == 2
