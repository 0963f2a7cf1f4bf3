"""The pipeline as Apache Beam transforms (optional: `apache-beam`).

  rows ─► ProcessPairs (stages 1-4 per pair, a ParDo) ─► Deduplicate
       ─► outcome JSON lines ─► finalize (the CSV, provenance and report)

`Deduplicate` is the global stage 4b at scale: accepted pairs are keyed by
their locality-sensitive buckets (`dedup.band_keys`), each bucket is
compared pairwise, and the dominated keys are joined back onto the outcomes
(CoGroupByKey). The rule is order-free, so the result equals the
single-machine driver's on the same input, whatever the runner's bundling.

Runs locally with the DirectRunner and on any Beam runner (Dataflow, Flink,
Spark) through standard pipeline options; media paths, `base_dir` and
`out_dir` then need to be reachable from the workers (e.g. gs:// through
etils.epath). The final `finalize` step reads the outcome shards on the
launching machine: one JSON line per pair, small next to the media.

Install: `pip install apache-beam` (2.77 checked; it pins protobuf < 7,
pyarrow < 26 and pillow < 13, so it lives in its own environment next to
the core pins).
"""

from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from etils import epath

from kiwi_jax.data import metadata
from kiwi_jax.data.metadata import Row
from kiwi_jax.refvie import dedup, records
from kiwi_jax.refvie import run_local as pipeline_local
from kiwi_jax.refvie.process import Pipeline
from kiwi_jax.refvie.records import Outcome


class _ProcessDoFn(beam.DoFn):
  def __init__(self, pipeline: Pipeline, base_dir: str, out_dir: str):
    super().__init__()
    self._pipeline, self._base_dir, self._out_dir = (
      pipeline,
      base_dir,
      out_dir,
    )

  def process(self, row: Row):
    yield self._pipeline.process(row, self._base_dir, self._out_dir)


class ProcessPairs(beam.PTransform):
  """PCollection[Row] -> PCollection[Outcome]: stages 1-4 on every pair."""

  def __init__(self, pipeline: Pipeline, base_dir: str, out_dir: str):
    super().__init__()
    self._fn = _ProcessDoFn(pipeline, str(base_dir), str(out_dir))

  def expand(self, rows):
    return rows | "Stages1to4" >> beam.ParDo(self._fn)


def _bucket(outcome: Outcome, max_distance: int):
  candidate = dedup.Candidate(
    outcome.key, outcome.priority, tuple(outcome.signature)
  )
  for key in dedup.band_keys(candidate.signature, max_distance):
    yield key, candidate


def _apply(item) -> Outcome:
  _, grouped = item
  (outcome,), winners = grouped["outcome"], list(grouped["winner"])
  if not winners:
    return outcome
  return records.mark_duplicates([outcome], {outcome.key: winners[0]})[0]


class Deduplicate(beam.PTransform):
  """PCollection[Outcome] -> the same with near-duplicates rejected."""

  def __init__(self, config: dedup.DedupConfig):
    super().__init__()
    self._config = config

  def expand(self, outcomes):
    d = self._config.max_distance
    winners = (
      outcomes
      | "Accepted" >> beam.Filter(lambda o: o.status == "accepted")
      | "Buckets" >> beam.FlatMap(_bucket, d)
      | "GroupBuckets" >> beam.GroupByKey()
      | "Compare"
      >> beam.FlatMap(lambda kv: dedup.dominated_in_group(list(kv[1]), d))
      | "GroupLosers" >> beam.GroupByKey()
      | "BestWinner"
      >> beam.MapTuple(lambda key, found: (key, dedup.best_dominator(found)))
    )
    keyed = outcomes | "KeyOutcomes" >> beam.Map(lambda o: (o.key, o))
    return (
      {"outcome": keyed, "winner": winners}
      | "Join" >> beam.CoGroupByKey()
      | "Mark" >> beam.Map(_apply)
    )


class ReadCsvRows(beam.PTransform):
  """CSV paths -> PCollection[Row], read on the workers, then spread out."""

  def __init__(self, csv_paths: Sequence[str]):
    super().__init__()
    self._paths = [str(p) for p in csv_paths]

  def expand(self, begin):
    return (
      begin
      | "CsvPaths" >> beam.Create(self._paths)
      | "ReadCsv" >> beam.FlatMap(metadata.read_csv_rows)
      | "Spread" >> beam.Reshuffle()
    )


def build(rows, base_dir: str, out_dir: str, pipeline: Pipeline):
  """Adds ProcessPairs + Deduplicate + the outcome writer to `rows`."""
  outcomes = (
    rows
    | "ProcessPairs" >> ProcessPairs(pipeline, base_dir, out_dir)
    | "Deduplicate" >> Deduplicate(pipeline.dedup)
  )
  prefix = str(epath.Path(out_dir) / "work" / "beam" / "outcomes")
  return (
    outcomes
    | "ToJson" >> beam.Map(lambda o: o.to_json())
    | "WriteOutcomes" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl")
  )


def run_beam(
  rows: Iterable[Row] | None,
  base_dir: str | epath.Path,
  out_dir: str | epath.Path,
  pipeline: Pipeline = Pipeline(),
  *,
  csv_paths: Sequence[str] | None = None,
  beam_args: Sequence[str] = ("--runner=DirectRunner",),
) -> dict[str, Any]:
  """Runs the Beam pipeline and finalizes the output directory.

  Args:
    rows: input rows (created in the pipeline), or None to read `csv_paths`
      on the workers instead.
    base_dir, out_dir, pipeline: as `pipeline_local.run_local`.
    csv_paths: reference-format CSVs, when `rows` is None.
    beam_args: Beam pipeline options, e.g. ("--runner=DataflowRunner",
      "--project=...", "--region=...", "--temp_location=gs://...").

  Returns:
    The report (also written to out_dir/report.json).
  """
  out_dir = epath.Path(out_dir)
  shards = out_dir / "work" / "beam"
  if shards.exists():  # outputs of an earlier run would be read back
    for old in shards.glob("outcomes*"):
      old.unlink()
  options = PipelineOptions(list(beam_args))
  with beam.Pipeline(options=options) as p:
    if rows is None:
      if not csv_paths:
        raise ValueError("give rows or csv_paths")
      source = p | "Read" >> ReadCsvRows(csv_paths)
    else:
      rows = list(rows)
      pipeline_local.check_unique_keys(rows)
      source = p | "Rows" >> beam.Create(rows)
    build(source, str(base_dir), str(out_dir), pipeline)
  outcomes = [
    Outcome.from_json(line)
    for path in sorted(shards.glob("outcomes*.jsonl"))
    for line in path.read_text().splitlines()
    if line
  ]
  return records.finalize(out_dir, outcomes)
