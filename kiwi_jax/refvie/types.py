"""The pair a stage sees, and how a stage rejects it."""

import dataclasses
import functools

import numpy as np

# Stage names, in pipeline order ("input" covers reading and decoding).
STEPS = ("input", "quality", "grounding", "synthesis", "verification", "dedup")

# Every reason a pair can be rejected for, by stage (the report's keys).
REASONS = {
  "input": ("missing_file", "unreadable_media", "empty_prompt"),
  "quality": (
    "too_small",
    "bad_aspect",
    "too_short",
    "size_mismatch",
    "length_mismatch",
    "no_edit",
    "total_change",
    "unstable_target",
    "low_learned_score",
  ),
  "grounding": (
    "style_edit",
    "removal_edit",
    "global_change",
    "kind_mismatch",
    "no_region",
  ),
  "synthesis": (
    "no_subject_in_target",
    "subject_too_small",
    "no_background_visible",
  ),
  "verification": ("scaffold_mismatch", "scaffold_matches_source"),
  "dedup": ("duplicate",),
}


@dataclasses.dataclass(frozen=True)
class Pair:
  """One instruction-edit pair, decoded.

  Attributes:
    key: stable id (the CSV `iid`, the parquet `iid`, or `<csv>:<line>`).
    prompt: the edit instruction.
    source, target: uint8[T, H, W, 3] (T = 1 for image pairs). Stages after
      the quality filter may assume equal shapes.
    origin: where the pair came from, for messages.
    media_shapes: (T, H, W) of the decoded source and target when the arrays
      here were downscaled for analysis; None when they are the media's own.
  """

  key: str
  prompt: str
  source: np.ndarray
  target: np.ndarray
  origin: str = ""
  media_shapes: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None

  @functools.cached_property
  def abs_diff(self) -> np.ndarray:
    """uint8[T, H, W]: max-channel |source - target| (computed once; the
    quality and grounding stages both need it)."""
    diff = np.abs(self.source.astype(np.int16) - self.target.astype(np.int16))
    return diff.max(-1).astype(np.uint8)

  @property
  def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(T, H, W) of the source and target media."""
    if self.media_shapes is not None:
      return self.media_shapes
    return self.source.shape[:3], self.target.shape[:3]


class Rejected(Exception):
  """Raised by a stage to drop a pair; the pipeline records the reason.

  Attributes:
    reason: one of `REASONS[stage]`.
    detail: a human-readable explanation with the numbers that decided.
    scores: the measurements made before the decision (kept as provenance).
    boxes: per-frame boxes of the edited region, when known by then.
  """

  def __init__(
    self,
    reason: str,
    detail: str,
    scores: dict[str, float] | None = None,
    boxes: list | None = None,
  ):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail
    self.scores = dict(scores or {})
    self.boxes = boxes


def prefixed(stage: str, scores: dict[str, float]) -> dict[str, float]:
  """Scores namespaced by stage ("quality.change_fraction") and rounded.

  Rounding to 6 digits keeps provenance files short and identical across
  runs and runners (the values are computed by the same code either way).
  """
  return {f"{stage}.{k}": round(float(v), 6) for k, v in scores.items()}
