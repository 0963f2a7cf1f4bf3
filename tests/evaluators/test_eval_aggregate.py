"""Aggregation against hand-computed fixtures."""

import json

import pytest

from kiwi_jax.evaluators import aggregate, commands, jsonl

OPENVE_LINES = [
  {
    "scores": [4, 3, 2],
    "prompt": "a",
    "edited_type": "global_style",
    "result": "...",
  },
  {
    "scores": [5, 5, 1],
    "prompt": "b",
    "edited_type": "global_style",
    "result": "...",
  },
  # Breaks the first-score rule (4 > 2, 3 > 2); scored as written.
  {
    "scores": [2, 4, 3],
    "prompt": "c",
    "edited_type": "local_add",
    "result": "...",
  },
  # Ignored by the reference: empty scores, missing edited_type.
  {"scores": [], "prompt": "d", "edited_type": "local_add", "result": ""},
  {"scores": [1, 1, 1], "prompt": "e", "result": "..."},
  {
    "scores": [3, 3, 3],
    "prompt": "f",
    "edited_type": "background_change",
    "result": "...",
  },
]


def _write_jsonl(path, records, extra_lines=()):
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
    for line in extra_lines:
      f.write(line + "\n")


def test_openve_hand_computed(tmp_path):
  path = tmp_path / "openve_m_score.jsonl"
  # A broken line (skipped, as the reference does) and a blank line.
  _write_jsonl(path, OPENVE_LINES, extra_lines=['{"scores": [5, 5', ""])
  result = aggregate.aggregate_openve(jsonl.read(str(path)))
  # global_style: (4+3+2+5+5+1) / 6; local_add: (2+4+3) / 3;
  # background_change: 9 / 3.
  assert result.category_means == pytest.approx(
    {"global_style": 20 / 6, "local_add": 3.0, "background_change": 3.0}
  )
  assert list(result.category_means) == [
    "global_style",
    "local_add",
    "background_change",
  ]
  assert result.sample_counts == {
    "global_style": 2,
    "local_add": 1,
    "background_change": 1,
  }
  # Unweighted mean of category means, not the sample-weighted 38 / 12.
  assert result.overall == pytest.approx((20 / 6 + 3 + 3) / 3)
  assert result.overall != pytest.approx(38 / 12)
  assert result.rule_violations == 1


def test_openve_table(tmp_path):
  path = tmp_path / "openve_gemini-2.5-pro_score.jsonl"
  _write_jsonl(path, OPENVE_LINES)
  table = commands.aggregate_scores("openve", str(path))
  assert (tmp_path / "openve_gemini-2.5-pro_score.md").read_text() == table
  # Website column order, categories without samples left out.
  header = "|  | Overall | Global Style | Background Change | Local Add |"
  assert header in table
  assert "| score | 3.11 | 3.33 | 3.00 | 3.00 |" in table
  assert "| samples | 4 | 2 | 1 | 1 |" in table
  assert "(scored as written): 1." in table


def test_openve_with_nothing_scored_is_a_clear_error():
  with pytest.raises(ValueError, match="no scored OpenVE samples"):
    aggregate.aggregate_openve([{"scores": [], "edited_type": "local_add"}])


REFVIE_LINES = [
  # Breaks the rule (4 > 3); scored as written.
  {"scores": [3, 2, 4], "subtask": "subject"},
  {"scores": [4, 3, 2], "subtask": "background"},
  {"scores": [5, 4, 4], "subtask": "subject"},
  # Breaks the rule (3 > 2); scored as written.
  {"scores": [2, 3, 1], "subtask": "subject"},
  # A reply with two score lines: counted in every criterion denominator.
  {"scores": [2, 2], "subtask": "background"},
  {"scores": [], "subtask": "background"},
]


def test_refvie_hand_computed():
  result = aggregate.aggregate_refvie(REFVIE_LINES)
  subject = result.subtasks["subject"]
  assert subject.samples == 3
  assert subject.criterion_means == pytest.approx([10 / 3, 3.0, 3.0])
  assert subject.mean == pytest.approx(28 / 9)
  background = result.subtasks["background"]
  assert background.samples == 2
  # (4+2)/2, (3+2)/2, 2/2: the short record still counts in the third.
  assert background.criterion_means == pytest.approx([3.0, 2.5, 1.0])
  assert background.mean == pytest.approx(13 / 5)
  # Script overall: all 14 individual scores, sample weighted.
  assert result.overall_weighted == pytest.approx(41 / 14)
  # Website overall: mean of the six criterion means.
  assert result.overall_website == pytest.approx(
    (10 / 3 + 3 + 3 + 3 + 2.5 + 1) / 6
  )
  assert result.rule_violations == 2


def test_refvie_overalls_agree_only_with_equal_sample_counts():
  balanced = aggregate.aggregate_refvie(
    [
      {"scores": [4, 3, 3], "subtask": "subject"},
      {"scores": [2, 2, 1], "subtask": "background"},
    ]
  )
  assert balanced.overall_weighted == pytest.approx(balanced.overall_website)
  unbalanced = aggregate.aggregate_refvie(
    [
      {"scores": [4, 3, 3], "subtask": "subject"},
      {"scores": [4, 3, 3], "subtask": "subject"},
      {"scores": [2, 2, 1], "subtask": "background"},
    ]
  )
  assert unbalanced.overall_weighted == pytest.approx(25 / 9)
  assert unbalanced.overall_website == pytest.approx(15 / 6)


def test_refvie_record_without_subtask_counts_only_in_overall():
  result = aggregate.aggregate_refvie(
    [{"scores": [5, 5, 5]}, {"scores": [1, 1, 1], "subtask": "subject"}]
  )
  assert result.subtasks["subject"].mean == 1
  assert result.subtasks["background"].samples == 0
  assert result.overall_weighted == 3
  assert result.overall_website is None


def test_refvie_longer_record_than_first_is_a_clear_error():
  with pytest.raises(ValueError, match="has 4 scores but the first"):
    aggregate.aggregate_refvie(
      [
        {"scores": [3, 2, 4], "subtask": "subject"},
        {"scores": [3, 2, 4, 1], "subtask": "subject"},
      ]
    )


def test_refvie_table(tmp_path):
  path = tmp_path / "refvie_m_score.jsonl"
  _write_jsonl(path, REFVIE_LINES)
  table = commands.aggregate_scores("refvie", str(path))
  assert "Subject: Identity Consistency & Compliance" in table
  assert "Background: Visual Harmony & Perspective" in table
  assert "Subject mean (n=3)" in table and "Background mean (n=2)" in table
  assert (
    "| score | 3.33 | 3.00 | 3.00 | 3.11 | 3.00 | 2.50 | 1.00 | 2.60 |"
    " 2.64 | 2.93 |" in table
  )


def test_openve_table_shows_expected_empty_categories_without_means():
  result = aggregate.aggregate_openve(OPENVE_LINES)
  table = aggregate.openve_table(
    result,
    "t",
    expected=("global_style", "local_remove", "local_add", "background_change"),
  )
  assert (
    "| Overall | Global Style | Background Change | Local Remove | "
    "Local Add |" in table
  )
  # local_remove has no scored sample: n=0, no mean, so no overall.
  assert "| score | n/a | 3.33 | 3.00 | n/a | 3.00 |" in table
  assert "| samples | 4 | 2 | 1 | 0 | 1 |" in table
  assert "no scored sample in local_remove" in table
