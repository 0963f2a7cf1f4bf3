"""Judge rubrics as data, and parsers for the judge's replies.

The rubric texts are the reference's (`rubric_texts.py`). Each rubric names
its criteria in the order the scores are *stored*, which is not always the
order the text lists them in: the OpenVE scorer stores
`[Instruction Compliance, Visual Quality & Stability, Consistency & Detail
Fidelity]` for every category (`check_format` in `eval_openve_gemini.py`),
while the RefVIE scorer stores scores in the order the lines appear in the
reply (`check_format` in `eval_refvie_gemini.py`).

Every rubric tells the judge that the second and third scores must not be
higher than the first. The reference does not enforce that rule when it
parses a reply: a reply that breaks it is scored as written. The parsers
here do the same; `aggregate.count_rule_violations` only reports how often
it happened.
"""

import dataclasses
from collections.abc import Sequence

from kiwi_jax.evaluators import rubric_texts

# Categories that `test_benchmark.py` and `eval_openve_gemini.py` skip.
OPENVE_SKIPPED_TYPES = ("creative_edit", "camera_edit", "subtitle_edit")

INSTRUCTION_COMPLIANCE = "Instruction Compliance"
VISUAL_QUALITY = "Visual Quality & Stability"
CONSISTENCY = "Consistency & Detail Fidelity"
OPENVE_CRITERIA = (INSTRUCTION_COMPLIANCE, VISUAL_QUALITY, CONSISTENCY)

SUBJECT_CRITERIA = (
  "Identity Consistency & Compliance",
  "Temporal Consistency & Texture Fidelity",
  "Physical Integration & Tracking",
)
BACKGROUND_CRITERIA = (
  "Reference Fidelity & Preservation",
  "Matting Quality & Temporal Stability",
  "Visual Harmony & Perspective",
)


@dataclasses.dataclass(frozen=True)
class Rubric:
  """One judge rubric.

  Attributes:
    name: the edit type it grades (`edited_type` or `edit_type` value).
    template: the rubric text with one `str.format` field.
    field: the name of that field (`edit_prompt` or `prompt`).
    criteria: the criteria names in the order their scores are stored.
  """

  name: str
  template: str
  field: str
  criteria: tuple[str, ...]

  def system_instruction(self, instruction: str) -> str:
    """The rubric filled with an edit instruction (the judge's system text)."""
    return self.template.format(**{self.field: instruction})


def _openve(name: str, template: str) -> Rubric:
  return Rubric(name, template, "edit_prompt", OPENVE_CRITERIA)


OPENVE_RUBRICS = {
  "global_style": _openve("global_style", rubric_texts.GLOBAL_STYLE),
  "background_change": _openve(
    "background_change", rubric_texts.BACKGROUND_CHANGE
  ),
  "local_change": _openve("local_change", rubric_texts.LOCAL_CHANGE),
  "local_remove": _openve("local_remove", rubric_texts.LOCAL_REMOVE),
  "local_add": _openve("local_add", rubric_texts.LOCAL_ADD),
}

REFVIE_RUBRICS = {
  "subject": Rubric(
    "subject", rubric_texts.SUBJECT_REFERENCE_PROMPT, "prompt", SUBJECT_CRITERIA
  ),
  "background": Rubric(
    "background",
    rubric_texts.BACKGROUND_REFERENCE_PROMPT,
    "prompt",
    BACKGROUND_CRITERIA,
  ),
}


def refvie_rubric(edit_type: str) -> Rubric:
  """The RefVIE rubric for an edit type.

  As in `eval_refvie_gemini.py`, every type other than `subject` gets the
  background rubric.
  """
  if edit_type == "subject":
    return REFVIE_RUBRICS["subject"]
  return REFVIE_RUBRICS["background"]


def _line_score(line: str) -> int | None:
  """`int(float(line.split(':')[-1].strip()))` in 1..5, else None."""
  try:
    score = int(float(line.split(":")[-1].strip()))
  except (ValueError, OverflowError):
    return None
  return score if 1 <= score <= 5 else None


def parse_openve_reply(text: str | None) -> list[int] | None:
  """Scores of an OpenVE judge reply, or None when the reply is unusable.

  Follows `check_format` of `eval_openve_gemini.py`: only lines that start
  exactly with `<criterion>:` count (no leading spaces or markdown); the
  value after the last colon must parse as a float whose integer part is
  in 1..5; any bad value fails the whole reply; a criterion given twice
  keeps its last value; all three criteria must be present. The result is
  ordered `[IC, VQ, CDF]` whatever order the lines came in.

  Args:
    text: the judge's reply text (None counts as unusable).

  Returns:
    `[instruction_compliance, visual_quality, consistency]` or None.
  """
  if text is None:
    return None
  found = {}
  for line in text.splitlines():
    for criterion in OPENVE_CRITERIA:
      if line.startswith(criterion + ":"):
        score = _line_score(line)
        if score is None:
          return None
        found[criterion] = score
        break
  if len(found) != len(OPENVE_CRITERIA):
    return None
  return [found[criterion] for criterion in OPENVE_CRITERIA]


def parse_refvie_reply(text: str | None) -> list[int] | None:
  """Scores of a RefVIE judge reply, or None when the reply is unusable.

  Follows `check_format` of `eval_refvie_gemini.py`: a line starting with
  any of the six subject or background criteria (whichever rubric was
  asked) adds its score, in the order the lines appear; any bad value fails
  the whole reply; a reply with no score line fails (the reference returns
  an empty list, which its retry loop treats as a failure). A reply with
  fewer or more than three score lines is accepted, as in the reference.

  Args:
    text: the judge's reply text (None counts as unusable).

  Returns:
    The scores in reply order, or None.
  """
  if text is None:
    return None
  prefixes = tuple(c + ":" for c in SUBJECT_CRITERIA + BACKGROUND_CRITERIA)
  scores = []
  for line in text.splitlines():
    if line.startswith(prefixes):
      score = _line_score(line)
      if score is None:
        return None
      scores.append(score)
  return scores or None


def breaks_first_score_rule(scores: Sequence[int]) -> bool:
  """Whether a later score exceeds the first (the rubrics forbid it)."""
  return any(score > scores[0] for score in scores[1:])
