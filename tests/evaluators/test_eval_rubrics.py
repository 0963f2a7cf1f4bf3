"""Rubric texts (pinned to the reference) and judge-reply parsing."""

import hashlib

import pytest

from kiwi_jax.evaluators import rubric_texts, rubrics

# SHA-256 of the reference's strings (eval_openve_gemini.py,
# eval_refvie_gemini.py at showlab/Kiwi-Edit HEAD), computed from the source.
REFERENCE_SHA256 = {
  "GLOBAL_STYLE": "48c3f1159f213ad36e8dd57d2029042fe0c9ca9b2d7d2bbaa949a81036370618",
  "BACKGROUND_CHANGE": "995e2a008d73fd6d02033da4ef80710379e91de754ebb587c4a5e5f128fc2939",
  "LOCAL_CHANGE": "8a736252e95c92c3966ea1612cb0959832507164fed2040cd9f481b37d507f06",
  "LOCAL_REMOVE": "bfd718795ac2c3b3549625be847f853d4a139b0beb17287ceb33c779ac4ab50c",
  "LOCAL_ADD": "85127ffbf5c83980481d5c274ccb97d116014e6fc284e55c89fe5b772df7692a",
  "SUBJECT_REFERENCE_PROMPT": "c340b7dda9c35cc4f641e504b75e475bf1be4f37186335bf9e0350149f3614a8",
  "BACKGROUND_REFERENCE_PROMPT": "e8c00507823a23e38a98d9110204b7f8370753094b3320484e6f2d91e89050c2",
}


@pytest.mark.parametrize("name", sorted(REFERENCE_SHA256))
def test_rubric_text_is_verbatim(name):
  text = getattr(rubric_texts, name)
  assert hashlib.sha256(text.encode()).hexdigest() == REFERENCE_SHA256[name]


def test_rubric_tables_cover_the_scored_categories():
  assert set(rubrics.OPENVE_RUBRICS) == {
    "global_style",
    "background_change",
    "local_change",
    "local_remove",
    "local_add",
  }
  for rubric in rubrics.OPENVE_RUBRICS.values():
    assert rubric.criteria == (
      "Instruction Compliance",
      "Visual Quality & Stability",
      "Consistency & Detail Fidelity",
    )
    for criterion in rubric.criteria:
      assert f"\n{criterion}" in rubric.template
  assert rubrics.refvie_rubric("subject").criteria == rubrics.SUBJECT_CRITERIA
  assert (
    rubrics.refvie_rubric("background") is rubrics.REFVIE_RUBRICS["background"]
  )
  # Any non-subject type gets the background rubric, as in the reference.
  assert rubrics.refvie_rubric("style") is rubrics.REFVIE_RUBRICS["background"]


def test_system_instruction_fills_the_instruction():
  text = rubrics.OPENVE_RUBRICS["local_add"].system_instruction(
    "Add a {red} hat"
  )
  assert text == rubric_texts.LOCAL_ADD.replace(
    "{edit_prompt}", "Add a {red} hat"
  )
  text = rubrics.REFVIE_RUBRICS["subject"].system_instruction("Swap the cup")
  assert "**editing instruction is : Swap the cup**" in text


OPENVE_REPLY = """Brief reasoning: fine.
Instruction Compliance: 4
Visual Quality & Stability: 3
Consistency & Detail Fidelity: 2
"""


@pytest.mark.parametrize(
  "reply, expected",
  [
    (OPENVE_REPLY, [4, 3, 2]),
    # Stored order is IC, VQ, CDF whatever order the lines come in.
    (
      "Consistency & Detail Fidelity: 5\nInstruction Compliance: 1\n"
      "Visual Quality & Stability: 2",
      [1, 2, 5],
    ),
    # int(float(...)) truncates.
    (
      "Instruction Compliance: 4.9\nVisual Quality & Stability: 1.2\n"
      "Consistency & Detail Fidelity:  3.0 ",
      [4, 1, 3],
    ),
    # A repeated criterion keeps its last value.
    (OPENVE_REPLY + "Instruction Compliance: 1\n", [1, 3, 2]),
    # Windows line ends.
    (OPENVE_REPLY.replace("\n", "\r\n"), [4, 3, 2]),
    # Later scores above the first are kept as written (not capped).
    (
      "Instruction Compliance: 1\nVisual Quality & Stability: 5\n"
      "Consistency & Detail Fidelity: 4",
      [1, 5, 4],
    ),
  ],
)
def test_parse_openve_accepts(reply, expected):
  assert rubrics.parse_openve_reply(reply) == expected


@pytest.mark.parametrize(
  "reply",
  [
    None,
    "",
    # A criterion missing.
    "Instruction Compliance: 4\nVisual Quality & Stability: 3",
    # Out of range, also after truncation.
    OPENVE_REPLY.replace(": 4", ": 6"),
    OPENVE_REPLY.replace(": 4", ": 0.5"),
    OPENVE_REPLY.replace(": 4", ": -1"),
    # Not a number after the last colon.
    OPENVE_REPLY.replace(": 4", ": 4/5"),
    OPENVE_REPLY.replace(": 4", ": 4 (good)"),
    OPENVE_REPLY.replace(": 4", ": nan"),
    OPENVE_REPLY.replace(": 4", ": inf"),
    OPENVE_REPLY.replace(": 4", ": 4: strong"),
    # Lines must start exactly with the criterion: markdown or indentation
    # hide it, so the criterion counts as missing.
    OPENVE_REPLY.replace(
      "Instruction Compliance:", "**Instruction Compliance:**"
    ),
    OPENVE_REPLY.replace(
      "Instruction Compliance:", "  Instruction Compliance:"
    ),
    # A bad value fails the reply even if a valid duplicate follows.
    "Instruction Compliance: x\n" + OPENVE_REPLY,
  ],
)
def test_parse_openve_rejects(reply):
  assert rubrics.parse_openve_reply(reply) is None


SUBJECT_REPLY = """Brief reasoning: ok.
Identity Consistency & Compliance: 3
Temporal Consistency & Texture Fidelity: 2
Physical Integration & Tracking: 4
"""


@pytest.mark.parametrize(
  "reply, expected",
  [
    (SUBJECT_REPLY, [3, 2, 4]),
    # Reply order, not rubric order.
    (
      "Physical Integration & Tracking: 1\n"
      "Identity Consistency & Compliance: 5\n",
      [1, 5],
    ),
    # Background criteria are accepted whichever rubric was asked.
    (
      "Reference Fidelity & Preservation: 2\n"
      "Identity Consistency & Compliance: 3\n"
      "Visual Harmony & Perspective: 2.7",
      [2, 3, 2],
    ),
    # Duplicates are all kept.
    (SUBJECT_REPLY + "Physical Integration & Tracking: 1", [3, 2, 4, 1]),
  ],
)
def test_parse_refvie_accepts(reply, expected):
  assert rubrics.parse_refvie_reply(reply) == expected


@pytest.mark.parametrize(
  "reply",
  [
    None,
    "Brief reasoning: nothing to score",
    SUBJECT_REPLY.replace(": 2", ": 7"),
    SUBJECT_REPLY.replace(": 2", ": two"),
    "**Identity Consistency & Compliance:** 4",
  ],
)
def test_parse_refvie_rejects(reply):
  assert rubrics.parse_refvie_reply(reply) is None


def test_first_score_rule_detection():
  assert rubrics.breaks_first_score_rule([2, 3, 1])
  assert rubrics.breaks_first_score_rule([2, 2, 5])
  assert not rubrics.breaks_first_score_rule([3, 3, 1])
  assert not rubrics.breaks_first_score_rule([5])
