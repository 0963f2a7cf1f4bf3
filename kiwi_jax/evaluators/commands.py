"""The steps behind `eval.py judge | aggregate | metrics`.

File names follow the reference: `<save_dir>/openve_<model>_score.jsonl`
and `<save_dir>/refvie_<model>_score.jsonl`; the markdown table goes next
to the jsonl with the `.md` extension. Metrics go to
`<save_dir>/metrics.jsonl` and `<save_dir>/metrics.md`.

OpenVE scores are made under one of two protocols (`protocols.py`): Kiwi's
keeps the reference's file name; the benchmark's official one writes
`<save_dir>/openve-official_<model>_score.jsonl`, so the two never mix.
Every OpenVE record written here names its protocol, and so do the table
and the results JSON (`<jsonl stem>_stats.json`) beside it.
"""

import collections
import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence

from kiwi_jax.evaluators import (
  aggregate,
  benchmarks,
  errors,
  jsonl,
  judges,
  metrics,
  protocols,
)
from kiwi_jax.media import video_io

DEFAULT_DATASETS = {
  # bench: (dataset_file, data_root), the defaults of `test_benchmark.py`.
  "openve": ("./benchmark/OpenVE-Bench/benchmark_videos.csv", "./benchmark/"),
  "refvie": (
    "./benchmark/RefVIE-Bench/refvie_bench.yaml",
    "./benchmark/RefVIE-Bench/",
  ),
}


def score_path(
  save_dir: str, bench: str, model: str, protocol: str | None = None
) -> str:
  """The score jsonl; the official OpenVE protocol's has its own name."""
  if bench == "openve" and protocol == protocols.OFFICIAL:
    return os.path.join(save_dir, f"{bench}-official_{model}_score.jsonl")
  return os.path.join(save_dir, f"{bench}_{model}_score.jsonl")


def table_path(jsonl_path: str) -> str:
  return os.path.splitext(jsonl_path)[0] + ".md"


def stats_path(jsonl_path: str) -> str:
  """The results JSON of an OpenVE score file (protocol, means, counts)."""
  return os.path.splitext(jsonl_path)[0] + "_stats.json"


# The field naming a record's category, and every category of a benchmark.
CATEGORY_FIELD = {"openve": "edited_type", "refvie": "subtask"}
ALL_CATEGORIES = {
  "openve": aggregate.OPENVE_TABLE_ORDER,
  "refvie": aggregate.REFVIE_SUBTASKS,
}


def _check_bench(bench: str) -> None:
  if bench not in CATEGORY_FIELD:
    raise ValueError(f"unknown benchmark {bench!r}")


def all_categories(bench: str, protocol: str | None = None) -> tuple[str, ...]:
  """Every category a benchmark is scored on (OpenVE: per protocol)."""
  _check_bench(bench)
  if bench == "openve":
    return protocols.get(protocol).categories
  return ALL_CATEGORIES[bench]


def scored_counts(
  bench: str, records: Sequence[dict], categories: Sequence[str]
) -> dict[str, int]:
  """Scored samples per category (records with scores), `categories` first."""
  _check_bench(bench)
  counts = dict.fromkeys(categories, 0)
  for record in records:
    category = record.get(CATEGORY_FIELD[bench])
    if category and record.get("scores"):
      counts[category] = counts.get(category, 0) + 1
  return counts


def score_table(
  bench: str,
  records: Sequence[dict],
  title: str,
  expected: Sequence[str] | None = None,
  protocol: str | None = None,
) -> str:
  """The markdown table of score records.

  Args:
    bench: 'openve' or 'refvie'.
    records: parsed score jsonl lines.
    title: the table's heading.
    expected: the categories the benchmark has (None: only the ones scored,
      and both RefVIE subtasks); one without a scored sample shows n=0 and
      makes the overall n/a.
    protocol: OpenVE only: the protocol the records must have been made
      with (None: the one they name).

  Raises:
    errors.InputError: nothing is scored, the records are malformed, or
      they were made under another protocol.
  """
  return score_results(bench, records, title, expected, protocol)[0]


def score_results(
  bench: str,
  records: Sequence[dict],
  title: str,
  expected: Sequence[str] | None = None,
  protocol: str | None = None,
) -> tuple[str, dict | None]:
  """`score_table`'s table and, for OpenVE, the results JSON."""
  _check_bench(bench)
  try:
    if bench == "openve":
      return _openve_results(records, title, expected or (), protocol)
    result = aggregate.aggregate_refvie(records)
    if expected is None:
      return aggregate.refvie_table(result, title), None
    return aggregate.refvie_table(result, title, expected), None
  except errors.InputError:
    raise
  except ValueError as e:
    raise errors.InputError(str(e)) from e


def _openve_results(records, title, expected, protocol):
  made_under = protocols.records_protocol(records)
  if protocol is not None and protocol != made_under:
    raise ValueError(
      f"the records were scored under the {made_under} protocol, not "
      f"{protocol}; pass --protocol {made_under}, or judge again under "
      f"{protocol}"
    )
  title = f"{title} · protocol: {made_under}"
  if made_under == protocols.OFFICIAL:
    result = protocols.aggregate_official(records)
    table = protocols.official_table(result, title, expected)
  else:
    result = aggregate.aggregate_openve(records)
    table = aggregate.openve_table(
      result, title, expected, note=protocols.get(made_under).summary
    )
  return table, protocols.summary_json(made_under, result, expected)


def _write_results(jsonl_path: str, table: str, stats: dict | None) -> None:
  jsonl.write_text_atomic(table_path(jsonl_path), table)
  if stats is not None:
    jsonl.write_text_atomic(
      stats_path(jsonl_path),
      json.dumps(
        {"scores_file": os.path.basename(jsonl_path), **stats}, indent=2
      )
      + "\n",
    )


def read_scores(jsonl_path: str) -> list[dict]:
  """The records of a score jsonl (non-object lines skipped)."""
  return [r for r in jsonl.read(jsonl_path) if isinstance(r, dict)]


def aggregate_scores(
  bench: str,
  jsonl_path: str,
  expected: Sequence[str] | None = None,
  write: bool = True,
  protocol: str | None = None,
) -> str:
  """Aggregates a score jsonl, writes `<jsonl stem>.md`, returns the table.

  Args:
    bench: 'openve' or 'refvie'.
    jsonl_path: the score jsonl.
    expected: see `score_table`.
    write: write the table (and, for OpenVE, the results JSON) next to the
      jsonl.
    protocol: see `score_table`.
  """
  title = f"{bench} · {os.path.basename(jsonl_path)}"
  try:
    table, stats = score_results(
      bench, read_scores(jsonl_path), title, expected, protocol
    )
  except errors.InputError as e:
    if str(e).startswith(jsonl_path):
      raise
    raise errors.InputError(f"{jsonl_path}: {e}") from e
  if write:
    _write_results(jsonl_path, table, stats)
  return table


@dataclasses.dataclass
class JudgeReport:
  """What `judge_outputs` found.

  Attributes:
    table: the markdown table ('' when nothing is scored).
    summary: lines saying how many items were scored out of how many, which
      were not and why, and every recorded reply that was skipped.
    error: why the results are not accepted (None when they are).
  """

  table: str
  summary: list[str]
  error: str | None


def coverage_line(
  counts: Mapping[str, int], totals: Mapping[str, int] | None = None
) -> str:
  """`Scored 3 of 4 items: subject 2 of 2, ...` (no totals: counts only)."""
  if totals is None:
    return (
      "Scored samples: "
      + ", ".join(f"{c} {n}" for c, n in counts.items())
      + "."
    )
  return (
    f"Scored {sum(counts.values())} of {sum(totals.values())} items: "
    + ", ".join(f"{c} {counts.get(c, 0)} of {n}" for c, n in totals.items())
    + "."
  )


def judge_outputs(
  bench: str,
  items: Sequence[benchmarks.BenchmarkItem],
  save_dir: str,
  judge: judges.Judge,
  model: str,
  *,
  workers: int | None = None,
  show_progress: bool = True,
  allow_partial: bool = False,
  protocol: str | None = None,
) -> JudgeReport:
  """Judges the outputs in `save_dir`, writes the jsonl and the table.

  `protocol` (OpenVE only; None: the default, `protocols.DEFAULT`) decides
  the prompts, the retries, how replies are scored and the file names;
  read `items` with that protocol's categories.

  Outputs that do not exist are not judged (the reference's upload fails
  on them and drops them). The score jsonl and its table are written only
  when every category of the benchmark has a scored sample, or with
  `allow_partial`; otherwise the scored samples stay in `<jsonl>.partial`
  and a rerun judges only the others.

  Returns:
    The table, the summary and, when the results are refused, why.
  """
  _check_bench(bench)
  attempts = judges.ATTEMPTS
  if bench == "openve":
    protocol = protocols.get(protocol).name
    tasks = judges.openve_tasks(items, save_dir, protocol)
    default_workers = judges.OPENVE_WORKERS
    attempts = protocols.get(protocol).attempts
  else:
    tasks = judges.refvie_tasks(items, save_dir)
    default_workers = judges.REFVIE_WORKERS
  present = [t for t in tasks if os.path.exists(t.media[-1])]
  out_path = score_path(save_dir, bench, model, protocol)
  totals = collections.Counter(item.edit_type for item in items)
  lines = []
  summary = None
  if os.path.exists(out_path):
    records = read_scores(out_path)
    lines.append(
      f"{out_path} exists: not judged again (delete it to judge again)."
    )
  else:
    summary = judges.judge_pending(
      judge,
      present,
      out_path,
      workers=workers or default_workers,
      attempts=attempts,
      show_progress=show_progress,
    )
    judged = {t.key for t in present}
    for task in tasks:
      if task.key not in judged:
        summary.reasons[task.key] = "output video missing"
    records = summary.records
  counts = scored_counts(bench, records, list(totals))
  lines.insert(0, coverage_line(counts, totals))
  if summary is not None:
    not_scored = [
      (t.key, summary.reasons[t.key]) for t in tasks if t.key in summary.reasons
    ]
    if not_scored:
      lines.append(f"Not scored ({len(not_scored)}):")
      lines += [f"  {key}: {why}" for key, why in not_scored]
    if isinstance(judge, judges.ReplayJudge):
      skipped = judge.skipped_replies([t.key for t in tasks], summary)
      if skipped:
        lines.append(f"Skipped replies ({len(skipped)}):")
        lines += [f"  {line}" for line in skipped]
  empty = [c for c, n in counts.items() if c in totals and not n]
  error = None
  if not records:
    error = f"nothing was scored ({len(tasks)} items); see the reasons above"
  elif empty and not allow_partial:
    kept = (
      f"the scored samples are kept in {judges.partial_path(out_path)}"
      " and a rerun judges only the others"
      if summary is not None
      else f"{out_path} was written by an earlier run; delete it to judge again"
    )
    error = (
      f"no scored sample in {', '.join(empty)}, so the results are "
      f"incomplete; {kept}; pass --allow_partial to accept them"
    )
  title = f"{bench} · {os.path.basename(out_path)}"
  table, stats = (
    score_results(bench, records, title, list(totals), protocol)
    if records
    else ("", None)
  )
  if error is None:
    if summary is not None:
      judges.write_final(out_path, summary)
    _write_results(out_path, table, stats)
  return JudgeReport(table=table, summary=lines, error=error)


def compute_metrics(
  items: Sequence[benchmarks.BenchmarkItem], save_dir: str
) -> str:
  """Metrics of every output that has a target; writes jsonl and table.

  Returns:
    The markdown table.

  Raises:
    ValueError: no item has both a target video and an output.
  """
  clips = []
  without_target = without_output = 0
  for item in items:
    output_path = os.path.join(save_dir, item.output_name)
    if item.target_video is None:
      without_target += 1
      continue
    if not os.path.exists(output_path):
      without_output += 1
      continue
    output = video_io.read_video(output_path)
    target = video_io.read_video(item.target_video, max_frames=len(output))
    clips.append(
      metrics.clip_metrics(item.output_name, item.edit_type, output, target)
    )
  if not clips:
    raise ValueError(
      f"no output in {save_dir} has a ground truth: {without_target} "
      f"items lack `tgt_video`, {without_output} outputs are missing"
    )
  if without_target or without_output:
    logging.warning(
      "metrics: %d items without tgt_video, %d outputs missing",
      without_target,
      without_output,
    )
  jsonl.write_atomic(
    os.path.join(save_dir, "metrics.jsonl"),
    [dataclasses.asdict(c) for c in clips],
  )
  table = metrics.metrics_table(clips, f"metrics · {save_dir}")
  jsonl.write_text_atomic(os.path.join(save_dir, "metrics.md"), table)
  return table
