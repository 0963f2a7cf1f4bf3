"""Aggregating judge scores exactly as the reference, plus markdown tables.

OpenVE (`avg_score_by_edited_type` in `eval_openve_gemini.py`): records
without an `edited_type` or with empty `scores` are ignored (dropped samples
never reach the jsonl); a category's mean is over all its individual scores
(three per sample); Overall is the unweighted mean of the category means.

RefVIE (`avg_score_by_edited_type` in `eval_refvie_gemini.py`), per subtask
(`subject`, `background`) and for all records together:
* per-criterion mean = sum of the i-th scores / number of records (a record
  with fewer scores than the first still counts in every denominator, as in
  the reference; one with more makes the reference fail with IndexError, so
  it is rejected here with a clear error);
* subtask mean = mean of all individual scores of the subtask;
* with no subtask, the script's overall = mean of all individual scores of
  both subtasks, which weights each subtask by its sample count.

Caveat: the project website's RefVIE "Overall" is the mean of the six
per-criterion means, e.g. (3.98 + 3.40 + 3.34 + 3.72 + 2.90 + 2.51) / 6 =
3.31. It equals the script's sample-weighted overall only when both subtasks
have the same number of scored samples. Both are reported here, labelled.

Every rubric forbids later scores above the first, but the reference never
enforces it; the scores are aggregated as written and the tables only count
the samples that break the rule.
"""

import collections
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kiwi_jax.evaluators import rubrics

# Column order of the OpenVE table on the project website (`index.html`).
OPENVE_TABLE_ORDER = (
  "global_style",
  "background_change",
  "local_change",
  "local_remove",
  "local_add",
)
REFVIE_SUBTASKS = ("subject", "background")


def count_rule_violations(records: Iterable[Mapping[str, Any]]) -> int:
  """Records whose second or third score exceeds the first."""
  return sum(
    1
    for r in records
    if r.get("scores") and rubrics.breaks_first_score_rule(r["scores"])
  )


@dataclasses.dataclass(frozen=True)
class OpenVEResult:
  """OpenVE aggregate.

  Attributes:
    category_means: mean score per `edited_type`, in first-seen order.
    sample_counts: scored samples per `edited_type`.
    overall: unweighted mean of `category_means`.
    rule_violations: samples with a later score above the first.
  """

  category_means: dict[str, float]
  sample_counts: dict[str, int]
  overall: float
  rule_violations: int


def aggregate_openve(records: Sequence[Mapping[str, Any]]) -> OpenVEResult:
  """Aggregates OpenVE score records (parsed jsonl lines)."""
  score_sum = collections.defaultdict(int)
  score_count = collections.defaultdict(int)
  samples = collections.defaultdict(int)
  for record in records:
    edited_type = record.get("edited_type")
    scores = record.get("scores", [])
    if edited_type and scores:
      score_sum[edited_type] += sum(scores)
      score_count[edited_type] += len(scores)
      samples[edited_type] += 1
  means = {t: score_sum[t] / score_count[t] for t in score_sum}
  if not means:
    raise ValueError("no scored OpenVE samples to aggregate")
  return OpenVEResult(
    category_means=means,
    sample_counts=dict(samples),
    overall=sum(means.values()) / len(means),
    rule_violations=count_rule_violations(records),
  )


@dataclasses.dataclass(frozen=True)
class RefVIESubtaskResult:
  """One line of the reference's RefVIE report.

  Attributes:
    criterion_means: mean of the i-th score (empty if no records).
    mean: mean of all individual scores (0 if none, as the reference).
    samples: records counted.
  """

  criterion_means: list[float]
  mean: float
  samples: int


def aggregate_refvie_subtask(
  records: Sequence[Mapping[str, Any]], subtask: str | None
) -> RefVIESubtaskResult:
  """The reference's `avg_score_by_edited_type(path, subtask)`."""
  sums: list[float] = []
  count = total_sum = total_count = 0
  for line_index, record in enumerate(records):
    scores = record.get("scores", [])
    if subtask and record.get("subtask") != subtask:
      continue
    if not scores:
      continue
    if not sums:
      sums = [0] * len(scores)
    if len(scores) > len(sums):
      raise ValueError(
        f"record {line_index} has {len(scores)} scores but the first "
        f"{subtask or 'RefVIE'} record has {len(sums)}; the reference "
        "fails on this (IndexError) and reports nothing"
      )
    for i, score in enumerate(scores):
      sums[i] += score
      total_sum += score
      total_count += 1
    count += 1
  return RefVIESubtaskResult(
    criterion_means=[s / count for s in sums],
    mean=total_sum / total_count if total_count else 0,
    samples=count,
  )


@dataclasses.dataclass(frozen=True)
class RefVIEResult:
  """RefVIE aggregate.

  Attributes:
    subtasks: per subtask (`subject`, `background`) result.
    overall_weighted: the script's overall (mean of all scores, sample
      weighted across subtasks).
    overall_website: mean of the six per-criterion means (the website's
      Overall); None unless both subtasks have three criterion means.
    rule_violations: samples with a later score above the first.
  """

  subtasks: dict[str, RefVIESubtaskResult]
  overall_weighted: float
  overall_website: float | None
  rule_violations: int


def aggregate_refvie(records: Sequence[Mapping[str, Any]]) -> RefVIEResult:
  """Aggregates RefVIE score records (parsed jsonl lines)."""
  subtasks = {s: aggregate_refvie_subtask(records, s) for s in REFVIE_SUBTASKS}
  everything = aggregate_refvie_subtask(records, None)
  if everything.samples == 0:
    raise ValueError("no scored RefVIE samples to aggregate")
  criterion_means = [m for s in subtasks.values() for m in s.criterion_means]
  website = (
    sum(criterion_means) / len(criterion_means)
    if all(len(s.criterion_means) == 3 for s in subtasks.values())
    else None
  )
  return RefVIEResult(
    subtasks=subtasks,
    overall_weighted=everything.mean,
    overall_website=website,
    rule_violations=count_rule_violations(records),
  )


def _row(cells: Iterable[Any]) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"


def _title(name: str) -> str:
  return name.replace("_", " ").title()


title_case = _title  # `global_style` -> `Global Style`, for other tables


NO_VALUE = "n/a"


def _empty_note(empty: Sequence[str]) -> list[str]:
  if not empty:
    return []
  return [
    f"Incomplete: no scored sample in {', '.join(empty)}, so the "
    "means there and the overall are n/a.",
    "",
  ]


def openve_table(
  result: OpenVEResult, title: str, expected: Sequence[str] = (), note: str = ""
) -> str:
  """Markdown table in the website's column order (extra types appended).

  Args:
    result: the aggregate.
    title: the table's heading.
    expected: categories the benchmark has; one without a scored sample
      is shown with n=0 and no mean, and the overall is then n/a.
    note: a line put before the footer (the protocol's summary).
  """
  present = [*result.category_means, *expected]
  types = [t for t in OPENVE_TABLE_ORDER if t in present]
  types += [t for t in dict.fromkeys(present) if t not in types]
  empty = [t for t in types if t not in result.category_means]
  means = {t: f"{m:.2f}" for t, m in result.category_means.items()}
  lines = [
    f"### {title}",
    "",
    _row(["", "Overall"] + [_title(t) for t in types]),
    _row(["---"] * (len(types) + 2)),
    _row(
      ["score", NO_VALUE if empty else f"{result.overall:.2f}"]
      + [means.get(t, NO_VALUE) for t in types]
    ),
    _row(
      ["samples", sum(result.sample_counts.values())]
      + [result.sample_counts.get(t, 0) for t in types]
    ),
    "",
    *_empty_note(empty),
    *([note, ""] if note else []),
    "Overall = unweighted mean of the category means (reference). "
    f'Samples breaking the "later scores may not exceed the first" '
    f"rule (scored as written): {result.rule_violations}.",
    "",
  ]
  return "\n".join(lines)


def refvie_table(
  result: RefVIEResult, title: str, expected: Sequence[str] = REFVIE_SUBTASKS
) -> str:
  """Markdown table: per-criterion means, subtask means and both overalls.

  Args:
    result: the aggregate.
    title: the table's heading.
    expected: subtasks the benchmark has; one without a scored sample makes
      both overalls n/a. A subtask without samples always shows n=0 and no
      means.
  """
  header = [""]
  cells = ["score"]
  for subtask, criteria in (
    ("subject", rubrics.SUBJECT_CRITERIA),
    ("background", rubrics.BACKGROUND_CRITERIA),
  ):
    sub = result.subtasks[subtask]
    means = [f"{m:.2f}" for m in sub.criterion_means] or [NO_VALUE] * len(
      criteria
    )
    for i, mean in enumerate(means):
      name = criteria[i] if i < len(criteria) else f"score {i + 1}"
      header.append(f"{_title(subtask)}: {name}")
      cells.append(mean)
    header.append(f"{_title(subtask)} mean (n={sub.samples})")
    cells.append(f"{sub.mean:.2f}" if sub.samples else NO_VALUE)
  empty = [
    s
    for s in expected
    if s in result.subtasks and not result.subtasks[s].samples
  ]
  header += [
    "Overall (mean of criterion means)",
    "Overall (sample-weighted, script)",
  ]
  website = result.overall_website
  cells += [
    NO_VALUE if website is None or empty else f"{website:.2f}",
    NO_VALUE if empty else f"{result.overall_weighted:.2f}",
  ]
  lines = [
    f"### {title}",
    "",
    _row(header),
    _row(["---"] * len(header)),
    _row(cells),
    "",
    *_empty_note(empty),
    "The website reports the mean of the six criterion means; the "
    "reference script's overall weights each subtask by its sample "
    "count; they agree only with equal sample counts. Samples "
    'breaking the "later scores may not exceed the first" rule '
    f"(scored as written): {result.rule_violations}.",
    "",
  ]
  return "\n".join(lines)
