"""Both OpenVE-Bench protocols on recorded replies, against hand arithmetic.

The fixtures (`fixtures/openve_mini.csv`, `fixtures/openve_replies_*.jsonl`)
hold five rows in two categories that both protocols score (a, b, e:
global_style; c, d: local_add) and one that only the official protocol
scores (f: subtitle_edit). The replies are the ones each protocol's prompt
asks for; their scores are chosen so that every rule of the two protocols
changes the figures.
"""

import hashlib
import os
import pathlib

import pytest

from kiwi_jax.evaluators import aggregate, benchmarks, jsonl, judges, protocols
from kiwi_jax.evaluators import openve_official_texts as texts

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
CSV = str(FIXTURES / "openve_mini.csv")

# SHA-256 of the strings of OpenVE-Bench/gemini_benchmark.py
# (OpenVE-Team/OpenVE-3M, commit af330a1), computed from the source.
OFFICIAL_SHA256 = {
  "GLOBAL_STYLE": "478ac19a847a7064c203e2a2c94ee22a6428c1c3c64fb22d47bd1c245ed69a7d",
  "BACKGROUND_CHANGE": "7deaa4925ee969b13cc3c49613edf721abef6d50e0ec2ae5f52b9e3e25dc6ae7",
  "LOCAL_CHANGE": "7355ed4dadfd2110dbe939a8809ff8bd564047b44b74ac8530ab2c663af41518",
  "LOCAL_REMOVE": "e1d716d17c7ca8f75fc1200fbd9cc73cc55a9d60249277bd3de17e52e448ab16",
  "LOCAL_ADD": "7ff265eb1698713a46813454fb4e68d177f19d00a1d5e0574386fb9fd903a1c4",
  "SUBTITLE_EDIT": "d5bb9c6ed8eb80162eaded8f343a5072a1b48886d1336bf87340380f4f97aada",
  "CAMERA_EDIT": "111f30f762048926f3ef53db174cdb5ac22cc2669ac52448daec72fc5917dbc0",
  "CREATIVE_EDIT": "ec68b57b62bac9689f38ca84a32b43ac1bf3e9ab9fe760013ee69949e00ed616",
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_SHA256))
def test_official_prompt_is_verbatim(name):
  text = getattr(texts, name)
  assert hashlib.sha256(text.encode()).hexdigest() == OFFICIAL_SHA256[name]
  assert text.count(texts.PLACEHOLDER) == 1


def test_official_prompts_cover_all_eight_categories():
  assert set(protocols.OFFICIAL_PROMPTS) == set(protocols.OFFICIAL_CATEGORIES)
  assert len(protocols.OFFICIAL_CATEGORIES) == 8
  assert set(protocols.get("kiwi").categories) == set(
    protocols.OFFICIAL_CATEGORIES
  ) - {"subtitle_edit", "camera_edit", "creative_edit"}
  # Each category names its own criteria (Kiwi's use one set everywhere).
  assert "Style Fidelity: A number" in texts.GLOBAL_STYLE
  assert "Physical Consistency: A number" in texts.BACKGROUND_CHANGE
  text = protocols.official_prompt("subtitle_edit", "Say {hi}")
  # Filled with str.replace (braces kept) and stripped; the subtitle
  # prompt's stray leading quote stays, as the judge sees it.
  assert text.startswith('"\nYou are a data rater')
  assert "editing instruction is : Say {hi}." in text
  assert text.endswith("before and after editing:")
  with pytest.raises(ValueError, match="edited_type 'zoom'"):
    protocols.official_prompt("zoom", "x")
  with pytest.raises(ValueError, match="unknown OpenVE protocol"):
    protocols.get("paper")


@pytest.mark.parametrize(
  "reply, expected",
  [
    (
      "Style Fidelity: 4\nContent Preservation: 3\nTemporal Stability: 3",
      [4.0, 3.0, 3.0],
    ),
    # Every number after a colon counts, on any line, as in the official.
    (
      "Brief reasoning: 2 cars vanish at 0:05.\nPrompt Compliance: 4.5",
      [2.0, 5.0, 4.5],
    ),
    ("Score:3.\nOther:  10", [3.0, 10.0]),
  ],
)
def test_official_parser_takes_every_number_after_a_colon(reply, expected):
  assert protocols.parse_official_reply(reply) == expected


@pytest.mark.parametrize(
  "reply", [None, "", "No scores: none given.", "Prompt Compliance: -3"]
)
def test_official_parser_without_numbers(reply):
  assert protocols.parse_official_reply(reply) is None


def _judge(protocol, tmp_path):
  """Replays the protocol's recorded replies over the fixture benchmark."""
  skipped = protocols.get(protocol).skipped_types
  items = benchmarks.read_openve(CSV, "root/", skipped)
  save_dir = str(tmp_path / protocol)
  tasks = judges.openve_tasks(items, save_dir, protocol)
  judge = judges.ReplayJudge.from_jsonl(
    str(FIXTURES / f"openve_replies_{protocol}.jsonl"), save_dir, protocol
  )
  out = os.path.join(save_dir, "scores.jsonl")
  summary = judges.judge_benchmark(
    judge,
    tasks,
    out,
    workers=2,
    show_progress=False,
    attempts=protocols.get(protocol).attempts,
  )
  return summary, jsonl.read(out)


def test_kiwi_protocol_by_hand(tmp_path):
  summary, records = _judge("kiwi", tmp_path)
  # f (subtitle_edit) is not even read; d fails its three replies (no
  # score lines, one of three lines, markdown); e's 10 is outside 1..5 on
  # every attempt. Both are dropped, not scored 0.
  assert sorted(summary.dropped) == ["d_edited.mp4", "e_edited.mp4"]
  # Scores are stored [IC, VQ, CDF] whatever order the lines came in.
  assert [r["scores"] for r in records] == [[4, 3, 4], [5, 4, 4], [2, 2, 1]]
  assert {r["protocol"] for r in records} == {"kiwi"}
  result = aggregate.aggregate_openve(records)
  # global_style: (4+3+4 + 5+4+4) / 6 = 24/6 = 4.0; local_add: 5/3.
  assert result.category_means == pytest.approx(
    {"global_style": 4.0, "local_add": 5 / 3}
  )
  # Unweighted mean of the category means: (4 + 5/3) / 2 = 17/6 = 2.83,
  # not the sample-weighted (24 + 5) / 9 = 3.22.
  assert result.overall == pytest.approx(17 / 6)
  assert f"{result.overall:.2f}" == "2.83"


def test_official_protocol_by_hand(tmp_path):
  summary, records = _judge("official", tmp_path)
  # d's first reply has no number: dropped, its second reply never asked
  # for (the official scorer only repeats failed calls).
  assert summary.dropped == ["d_edited.mp4"]
  assert [r["edited_type"] for r in records] == [
    "global_style",
    "global_style",
    "local_add",
    "global_style",
    "subtitle_edit",
  ]
  assert [r["scores"] for r in records] == [
    [5, 4, 4],
    [2, 5, 4, 4],
    [2, 2, 1],
    [10, 9, 8],
    [3, 3, 3],
  ]
  assert {r["protocol"] for r in records} == {"official"}
  # Sample scores, 2 decimals: a 13/3 = 4.33; b 15/4 = 3.75 (the "2" of
  # its reasoning line counts); c 5/3 = 1.67; e 27/3 = 9.0, outside 1..5
  # so left out; f 3.0.
  assert [protocols.sample_score(r["scores"]) for r in records] == [
    4.33,
    3.75,
    1.67,
    9.0,
    3.0,
  ]
  result = protocols.aggregate_official(records)
  # global_style: (4.33 + 3.75) / 2 = 4.04; local_add 1.67; subtitle 3.0.
  assert result.category_means == {
    "global_style": 4.04,
    "local_add": 1.67,
    "subtitle_edit": 3.0,
  }
  assert result.sample_counts == {
    "global_style": 2,
    "local_add": 1,
    "subtitle_edit": 1,
  }
  assert result.out_of_range == {
    "global_style": 1,
    "local_add": 0,
    "subtitle_edit": 0,
  }
  # Sample-weighted: (4.33 + 3.75 + 1.67 + 3.0) / 4 = 12.75 / 4 = 3.1875
  # -> 3.19; the unweighted mean of category means would be
  # (4.04 + 1.67 + 3.0) / 3 = 2.90.
  assert result.overall == 3.19
  assert result.not_three_numbers == 1  # b


def test_official_overall_weights_by_samples_without_subtitles():
  records = [
    {"edited_type": "global_style", "scores": [5, 4, 4]},
    {"edited_type": "global_style", "scores": [2, 5, 4, 4]},
    {"edited_type": "local_add", "scores": [2, 2, 1]},
    {"edited_type": "local_add", "scores": []},  # unscored: ignored
    {"scores": [5, 5, 5]},  # no category: ignored
  ]
  result = protocols.aggregate_official(records)
  # (4.33 + 3.75 + 1.67) / 3 = 9.75 / 3 = 3.25, against the unweighted
  # (4.04 + 1.67) / 2 = 2.855.
  assert result.overall == 3.25
  assert result.category_means == {"global_style": 4.04, "local_add": 1.67}
  with pytest.raises(ValueError, match="no scored OpenVE samples"):
    protocols.aggregate_official(
      [{"edited_type": "local_add", "scores": [9, 9, 9]}]
    )


def test_same_two_replies_retry_rules_differ(tmp_path):
  """d's two recorded replies: Kiwi's scores the second, the official not."""
  items = [
    i
    for i in benchmarks.read_openve(CSV, "root/", ())
    if i.output_name == "d_edited.mp4"
  ]
  first = "I cannot rate these videos."
  second = (
    "Instruction Compliance: 5\nConsistency & Detail Fidelity: 5\n"
    "Visual Quality & Stability: 5\n"
  )
  save_dir = str(tmp_path)
  for protocol, expected in (("kiwi", [5, 5, 5]), ("official", None)):
    (task,) = judges.openve_tasks(items, save_dir, protocol)
    judge = judges.ReplayJudge({"d_edited.mp4": [first, second]}, save_dir)
    result = judges.judge_sample(judge, task, protocols.get(protocol).attempts)
    assert (result and result[0]) == expected


def test_records_protocol_and_mixtures():
  assert protocols.records_protocol([{"scores": [1, 2, 3]}]) == "kiwi"
  assert (
    protocols.records_protocol([{"scores": [1], "protocol": "official"}])
    == "official"
  )
  with pytest.raises(ValueError, match="mix the official and kiwi"):
    protocols.records_protocol(
      [{"scores": [1, 2, 3]}, {"scores": [1], "protocol": "official"}]
    )
  with pytest.raises(ValueError, match="unknown protocol"):
    protocols.records_protocol([{"scores": [1], "protocol": "paper"}])
