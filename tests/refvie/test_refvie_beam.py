"""The Beam path gives the same records as the single-machine path.

Needs the optional `apache-beam` (2.77 checked, DirectRunner); it pins
protobuf < 7, pyarrow < 26 and pillow < 13, below the core pins, so it runs
from its own environment: a venv made with the project's interpreter plus
`pip install apache-beam`. Without Beam these tests are skipped.
"""

import random

import pytest

from tests.refvie.conftest import pool_rows
from tests.refvie.test_refvie_build import _snapshot

pytest.importorskip("apache_beam")

# pylint: disable=g-import-not-at-top,wrong-import-position
import apache_beam as beam
from apache_beam.testing import util

from kiwi_jax.refvie import dedup
from kiwi_jax.refvie import run_beam as pipeline_beam
from kiwi_jax.refvie.records import Outcome
from tests.refvie.test_refvie_dedup import _random_signatures


@pytest.mark.slow
def test_beam_and_local_give_the_same_records(mini_pool, local_run, tmp_path):
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


def test_beam_deduplicate_equals_the_local_rule():
  candidates = _random_signatures(random.Random(2), 40, 5)
  outcomes = [
    Outcome(
      key=c.key,
      origin="",
      prompt="",
      status="accepted",
      priority=c.priority,
      signature=list(c.signature),
    )
    for c in candidates
  ]
  outcomes.append(
    Outcome(
      key="rejected", origin="", prompt="", stage="quality", reason="no_edit"
    )
  )
  want = dedup.find_duplicates(candidates, dedup.DedupConfig())
  assert want
  expected = sorted((o.key, want.get(o.key)) for o in outcomes)
  with beam.Pipeline() as p:
    got = (
      p
      | beam.Create(outcomes)
      | pipeline_beam.Deduplicate(dedup.DedupConfig())
      | beam.Map(lambda o: (o.key, o.duplicate_of))
    )
    util.assert_that(got, util.equal_to(expected))
