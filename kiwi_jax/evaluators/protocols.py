"""The two OpenVE-Bench scoring protocols: the benchmark's own and Kiwi's.

* `official`: what OpenVE-Bench's scorer does (`OpenVE-Bench/
  gemini_benchmark.py` of OpenVE-Team/OpenVE-3M). All 8 categories; each
  category's own prompt (`openve_official_texts.py`), filled and sent as
  the user turn before the two videos, under the system text "You are a
  helpful assistant."; temperature 0.7, at most 8192 output tokens; up to 5
  calls per sample, repeated only when the call fails (60 s apart), never
  because of what the reply says. A sample's score is the mean of every
  number that follows a colon anywhere in the reply, rounded to two
  decimals; a reply without such a number leaves the sample unscored.
  Samples whose score is outside 1..5 are left out of the means. A
  category's score is the mean of its samples' scores; Overall is the mean
  of all samples' scores, so it weights each category by its sample count.
  Both are rounded to two decimals, as the scorer does.
* `kiwi`: what Kiwi-Edit's `eval_openve_gemini.py` does (`rubrics.py`,
  `aggregate.py`): 5 categories, the same three criteria everywhere,
  replies parsed line by line, unweighted mean of the category means.

docs/openve_protocols.md says which fact came from where, and how the two
scales differ.
"""

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kiwi_jax.evaluators import aggregate, rubrics
from kiwi_jax.evaluators import openve_official_texts as texts

OFFICIAL = "official"
KIWI = "kiwi"
NAMES = (OFFICIAL, KIWI)
# Today's behaviour stays the default: Kiwi's published OpenVE figures (the
# port's parity targets) were made with it. `--protocol official` gives
# figures on the OpenVE paper's scale.
DEFAULT = KIWI

# Category order of the OpenVE-3M abstract (spatially aligned edits, then
# the two that are not); `edited_type` values of `benchmark_videos.csv`.
OFFICIAL_CATEGORIES = (
  "global_style",
  "background_change",
  "local_change",
  "local_remove",
  "local_add",
  "subtitle_edit",
  "camera_edit",
  "creative_edit",
)
OFFICIAL_PROMPTS = {
  "global_style": texts.GLOBAL_STYLE,
  "background_change": texts.BACKGROUND_CHANGE,
  "local_change": texts.LOCAL_CHANGE,
  "local_remove": texts.LOCAL_REMOVE,
  "local_add": texts.LOCAL_ADD,
  "subtitle_edit": texts.SUBTITLE_EDIT,
  "camera_edit": texts.CAMERA_EDIT,
  "creative_edit": texts.CREATIVE_EDIT,
}
OFFICIAL_SYSTEM_TEXT = "You are a helpful assistant."
# The official scorer's request settings, in the Gemini API's names.
OFFICIAL_GENERATION_CONFIG = {"temperature": 0.7, "maxOutputTokens": 8192}


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How one protocol asks the judge and counts its replies.

  Attributes:
    name: 'official' or 'kiwi'.
    categories: the `edited_type` values it edits and scores.
    attempts: judge calls per sample at most.
    retry_unparsable: whether a reply without scores is asked again.
    retry_wait_s: wait after a failed call before the next one.
    generation_config: request settings for the judge (None: its defaults).
    summary: one line for tables: what the protocol is and does.
  """

  name: str
  categories: tuple[str, ...]
  attempts: int
  retry_unparsable: bool
  retry_wait_s: float
  generation_config: Mapping[str, Any] | None
  summary: str

  @property
  def skipped_types(self) -> tuple[str, ...]:
    """CSV categories this protocol neither edits nor scores."""
    return () if self.name == OFFICIAL else rubrics.OPENVE_SKIPPED_TYPES


PROTOCOLS = {
  OFFICIAL: Protocol(
    OFFICIAL,
    OFFICIAL_CATEGORIES,
    attempts=5,
    retry_unparsable=False,
    retry_wait_s=60.0,
    generation_config=OFFICIAL_GENERATION_CONFIG,
    summary="Protocol: official (OpenVE-Bench's own scorer): all 8 "
    "categories, each judged with its own prompt; a sample scores the "
    "mean of every number after a colon in its reply (2 decimals); "
    "samples outside 1..5 are left out; Overall = mean over all "
    "samples (sample-weighted). On the scale of the OpenVE paper's "
    "table.",
  ),
  KIWI: Protocol(
    KIWI,
    aggregate.OPENVE_TABLE_ORDER,
    attempts=3,
    retry_unparsable=True,
    retry_wait_s=0.0,
    generation_config=None,
    summary="Protocol: kiwi (Kiwi-Edit's eval_openve_gemini.py): 5 of "
    "the 8 categories, the same three criteria in each, samples "
    "without three valid score lines dropped; Overall = unweighted "
    "mean of the category means. Not on the scale of the OpenVE "
    "paper's table.",
  ),
}


def get(name: str | None) -> Protocol:
  """The protocol called `name` (None: the default)."""
  name = DEFAULT if name is None else name
  if name not in PROTOCOLS:
    raise ValueError(
      f"unknown OpenVE protocol {name!r}; expected one of {', '.join(NAMES)}"
    )
  return PROTOCOLS[name]


def official_prompt(edit_type: str, instruction: str) -> str:
  """The official user turn: the category's prompt, filled and stripped."""
  if edit_type not in OFFICIAL_PROMPTS:
    raise ValueError(
      f"no official OpenVE-Bench prompt for edited_type "
      f"{edit_type!r}; known: {list(OFFICIAL_CATEGORIES)}"
    )
  return (
    OFFICIAL_PROMPTS[edit_type].replace(texts.PLACEHOLDER, instruction).strip()
  )


# A colon, optional whitespace, then digits with an optional decimal part.
_NUMBER_AFTER_COLON = re.compile(r":\s*(\d+(?:\.\d*)?)")


def parse_official_reply(text: str | None) -> list[float] | None:
  """Every number that follows a colon in the reply, or None if none does.

  The official scorer averages all of them, whatever line they are on: a
  number in the reasoning line ("Brief reasoning: 2 cars ...") or a time
  ("at 0:05") counts as a score too.
  """
  if text is None:
    return None
  scores = [float(m) for m in _NUMBER_AFTER_COLON.findall(text)]
  return scores or None


def sample_score(scores: Sequence[float]) -> float:
  """A sample's official score: the mean of its numbers, 2 decimals."""
  return round(sum(scores) / len(scores), 2)


def _in_range(score: float) -> bool:
  return 1 <= score <= 5


def _mean2(values: Sequence[float]) -> float:
  return round(sum(values) / len(values), 2)


@dataclasses.dataclass(frozen=True)
class OfficialResult:
  """The official aggregate.

  Attributes:
    category_means: per `edited_type` (first-seen order), the mean of its
      in-range sample scores, 2 decimals; None when none is in range.
    sample_counts: in-range samples per category.
    out_of_range: samples per category whose score is outside 1..5.
    overall: mean of all in-range sample scores, 2 decimals.
    not_three_numbers: replies with other than three numbers after colons.
  """

  category_means: dict[str, float | None]
  sample_counts: dict[str, int]
  out_of_range: dict[str, int]
  overall: float
  not_three_numbers: int


def aggregate_official(records: Sequence[Mapping[str, Any]]) -> OfficialResult:
  """Aggregates official-protocol score records, in record order."""
  by_type: dict[str, list[float]] = {}
  not_three = 0
  for record in records:
    edited_type, scores = record.get("edited_type"), record.get("scores")
    if not edited_type or not scores:
      continue
    by_type.setdefault(edited_type, []).append(sample_score(scores))
    not_three += len(scores) != 3
  valid = {t: [s for s in v if _in_range(s)] for t, v in by_type.items()}
  everything = [s for v in by_type.values() for s in v if _in_range(s)]
  if not everything:
    raise ValueError(
      "no scored OpenVE samples (with a score in 1..5) to aggregate"
    )
  return OfficialResult(
    category_means={t: _mean2(v) if v else None for t, v in valid.items()},
    sample_counts={t: len(v) for t, v in valid.items()},
    out_of_range={t: len(by_type[t]) - len(v) for t, v in valid.items()},
    overall=_mean2(everything),
    not_three_numbers=not_three,
  )


def records_protocol(records: Sequence[Mapping[str, Any]]) -> str:
  """The protocol a score file was made with.

  Records without a `protocol` field are Kiwi's (the reference scorer
  writes none).

  Raises:
    ValueError: the records name more than one protocol, or an unknown one.
  """
  found = {
    r.get("protocol", KIWI)
    for r in records
    if r.get("scores") or "protocol" in r
  }
  unknown = found - set(NAMES)
  if unknown:
    raise ValueError(
      f"unknown protocol(s) {sorted(map(str, unknown))} in "
      f"the score records; expected {', '.join(NAMES)}"
    )
  if len(found) > 1:
    raise ValueError(
      "the score records mix the official and kiwi "
      "protocols; score each protocol into its own file"
    )
  return found.pop() if found else KIWI


def _row(cells) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"


def official_table(
  result: OfficialResult, title: str, expected: Sequence[str] = ()
) -> str:
  """Markdown table of the official aggregate, the 8 categories in order.

  Args:
    result: the aggregate.
    title: the table's heading.
    expected: categories the benchmark has; one without an in-range
      sample is shown with n=0 and no score, and Overall is then n/a.
  """
  present = [*result.category_means, *expected]
  types = [t for t in OFFICIAL_CATEGORIES if t in present]
  types += [t for t in dict.fromkeys(present) if t not in types]
  empty = [t for t in types if not result.sample_counts.get(t)]
  means = {
    t: f"{m:.2f}" for t, m in result.category_means.items() if m is not None
  }
  none = aggregate.NO_VALUE
  out_of_range = sum(result.out_of_range.values())
  lines = [
    f"### {title}",
    "",
    _row(["", "Overall"] + [aggregate.title_case(t) for t in types]),
    _row(["---"] * (len(types) + 2)),
    _row(
      ["score", none if empty else f"{result.overall:.2f}"]
      + [means.get(t, none) for t in types]
    ),
    _row(
      ["samples", sum(result.sample_counts.values())]
      + [result.sample_counts.get(t, 0) for t in types]
    ),
    "",
  ]
  if empty:
    lines += [
      f"Incomplete: no scored sample in {', '.join(empty)}, so the "
      "scores there and the overall are n/a.",
      "",
    ]
  lines += [
    PROTOCOLS[OFFICIAL].summary + " Samples left out for a score "
    f"outside 1..5: {out_of_range}; replies with other than three "
    f"numbers after a colon: {result.not_three_numbers}.",
    "",
  ]
  return "\n".join(lines)


def summary_json(
  protocol: str, result, expected: Sequence[str] = ()
) -> dict[str, Any]:
  """The results JSON written beside a score file's table."""
  counts = result.sample_counts
  empty = [t for t in expected if not counts.get(t)]
  summary = {
    "benchmark": "openve",
    "protocol": protocol,
    "overall": None if empty else result.overall,
    "category_means": dict(result.category_means),
    "sample_counts": dict(counts),
    "missing_categories": empty,
  }
  if protocol == OFFICIAL:
    summary["out_of_range"] = dict(result.out_of_range)
    summary["not_three_numbers"] = result.not_three_numbers
  else:
    summary["rule_violations"] = result.rule_violations
  return summary
