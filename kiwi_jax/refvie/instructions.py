"""What an instruction asks for: a subject, the background, a style, a removal.

The model-free default is a small set of word rules, enough for the
templated instructions of Ditto-1M / OpenVE-3M / ReCo style pools; an MLLM
can replace it (any `Callable[[str], EditKind]` is accepted by the grounder).
RefVIE keeps only edits a reference image can describe (reference §6.2: "reference
image synthesis for local and background edits"): a style change or a
removal has no such image, so those pairs are rejected by the grounding
stage.
"""

import re
from typing import Literal

EditKind = Literal["subject", "background", "style", "removal", "unknown"]

_BACKGROUND = re.compile(
  r"\b(background|backdrop|scenery|surroundings|behind (him|her|it|them))\b"
)
_STYLE = re.compile(
  r"\b(style|styled|stylize|stylise|painting|cartoon|anime|sketch|"
  r"watercolou?r|oil paint|pixel art|claymation|filter|colou?r grad\w*|"
  r"the whole (video|image|frame|scene)|entire (video|image|frame|scene)|"
  r"lighting|weather|season|daytime|nighttime|at night|sunset|winter|"
  r"summer|autumn|spring)\b"
)
_REMOVAL = re.compile(
  r"^\s*(please\s+)?(remove|delete|erase|eliminate|get rid of|take out|"
  r"take away)\b"
)
_SUBJECT = re.compile(
  r"\b(change|turn|make|replace|swap|substitute|add|insert|put|place|"
  r"transform|convert|recolou?r|paint|give|dress|wear|swap)\b"
)


def edit_kind(instruction: str) -> EditKind:
  """Classifies an instruction (case-insensitive word rules, in order).

  A background mention wins over style words ("replace the background with a
  winter forest" is a background edit); style words win over subject verbs
  ("make it look like an oil painting"); removals are recognised by their
  leading verb.
  """
  text = instruction.lower()
  if _BACKGROUND.search(text):
    return "background"
  if _REMOVAL.search(text):
    return "removal"
  if _STYLE.search(text):
    return "style"
  if _SUBJECT.search(text):
    return "subject"
  return "unknown"
