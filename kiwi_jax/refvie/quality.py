"""Stage 1: quality filtering of edit pairs.

The released pool was filtered with EditScore (reference §6.2), a learned
editing-quality model; its weights are not part of this project, so the
default here is a set of measurable rules, and a learned scorer plugs in as
`learned_scorer(pair) -> float` with its own threshold. The rules:

* resolution and length: minimum side, maximum aspect ratio, minimum frame
  count, source and target of the same size and length;
* edit magnitude, neither negligible nor total: the fraction of pixels that
  changed (max-channel difference >= `pixel_threshold`) must reach
  `min_change_fraction` in some frame; a target that changed everywhere AND
  lost the source's structure (correlation of luminance gradients below
  `min_structure_correlation`) is an unrelated clip, not an edit. A change
  everywhere that keeps the structure (a colour grade, a restyle) passes
  here: whether it is what the instruction asked for is the grounding
  stage's question;
* temporal stability of the target: per-frame changed fractions must not
  jump by more than `max_change_jump` between consecutive frames, and the
  target's frame-mean luminance must not oscillate (mean absolute second
  difference) more than the source's by over `max_flicker_excess` levels.
  Moving, appearing or scrolling content changes both slowly; flicker and
  frame drops do not.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from kiwi_jax.refvie import grounding
from kiwi_jax.refvie.types import Pair, Rejected

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True)
class QualityConfig:
  """Thresholds of the quality rules (pixel values on the 0-255 scale).

  The defaults suit exactly decoded pairs; `LOSSY` suits pairs whose source
  and target went through lossy codecs separately (blurring before the
  difference removes most codec noise at sharp edges).
  """

  min_side: int = 64
  max_aspect: float = 3.0
  min_frames: int = 1
  pixel_threshold: float = 12.0
  blur_sigma: float = 0.0
  min_change_fraction: float = 0.002
  total_change_fraction: float = 0.995
  min_structure_correlation: float = 0.3
  max_change_jump: float = 0.35
  max_flicker_excess: float = 3.0
  min_learned_score: float = 0.5


# For separately lossy-encoded sources and targets (H.264 yuv420p at CRF
# 18-23 on RefVIE-mini: re-encoding alone changes at most 0.5% of the pixels
# under this rule, the smallest real edit 4%).
LOSSY = QualityConfig(
  pixel_threshold=24.0, blur_sigma=1.0, min_change_fraction=0.01
)


def luminance(frames: np.ndarray) -> np.ndarray:
  """float32[T, H, W] luma (BT.601) of uint8[T, H, W, 3] frames."""
  return frames.astype(np.float32) @ _LUMA


def changed_fraction_per_frame(
  pair: Pair, threshold: float, blur_sigma: float = 0.0
) -> np.ndarray:
  """float[T]: fraction of pixels whose max-channel difference (after an
  optional Gaussian blur) is >= threshold."""
  diff = grounding.difference(pair, blur_sigma)
  return (diff >= threshold).mean(axis=(1, 2))


def structure_correlation(source: np.ndarray, target: np.ndarray) -> float:
  """Correlation of luminance gradient magnitudes (1 = same structure)."""

  def grad(frames):
    y = luminance(frames)
    gy, gx = np.gradient(y, axis=(1, 2))
    return np.hypot(gy, gx).ravel()

  a, b = grad(source), grad(target)
  a, b = a - a.mean(), b - b.mean()
  denom = np.sqrt((a * a).sum() * (b * b).sum())
  return float((a * b).sum() / denom) if denom > 0 else 1.0


def luminance_flicker(frames: np.ndarray) -> float:
  """Mean |second difference| of frame-mean luma (0 for < 3 frames)."""
  # Luma is linear: the mean of the luma is the luma of the mean colour.
  means = frames.mean(axis=(1, 2), dtype=np.float64) @ _LUMA
  if means.size < 3:
    return 0.0
  return float(np.abs(np.diff(means, n=2)).mean())


@dataclasses.dataclass(frozen=True)
class QualityFilter:
  """Scores a pair; raises `Rejected` with a stage-1 reason or returns scores.

  Attributes:
    config: thresholds.
    learned_scorer: optional learned editing-quality model (EditScore-like),
      `pair -> score`; pairs scoring below `config.min_learned_score` are
      rejected after the rules pass.
  """

  config: QualityConfig = QualityConfig()
  learned_scorer: Callable[[Pair], float] | None = None

  def __call__(self, pair: Pair) -> dict[str, float]:
    cfg = self.config
    # Format rules look at the media's own size, not the analysis copy.
    (t, h, w), (tgt_t, tgt_h, tgt_w) = pair.shapes
    if (h, w) != (tgt_h, tgt_w):
      raise Rejected(
        "size_mismatch", f"source {h}x{w} vs target {tgt_h}x{tgt_w}"
      )
    if t != tgt_t:
      raise Rejected("length_mismatch", f"source {t} frames vs target {tgt_t}")
    if min(h, w) < cfg.min_side:
      raise Rejected("too_small", f"{h}x{w} < min side {cfg.min_side}")
    if max(h, w) / min(h, w) > cfg.max_aspect:
      raise Rejected("bad_aspect", f"{h}x{w} aspect > {cfg.max_aspect}")
    if t < cfg.min_frames:
      raise Rejected("too_short", f"{t} frames < {cfg.min_frames}")
    src, tgt = pair.source, pair.target
    fractions = changed_fraction_per_frame(
      pair, cfg.pixel_threshold, cfg.blur_sigma
    )
    scores = {
      "change_fraction": fractions.mean(),
      "max_change_fraction": fractions.max(),
    }
    if fractions.max() < cfg.min_change_fraction:
      raise Rejected(
        "no_edit",
        f"at most {fractions.max():.4f} of the pixels changed "
        f"(< {cfg.min_change_fraction})",
        scores,
      )
    if fractions.min() >= cfg.total_change_fraction:
      scores["structure_correlation"] = structure_correlation(src, tgt)
      if scores["structure_correlation"] < cfg.min_structure_correlation:
        raise Rejected(
          "total_change",
          "every pixel changed and the structure did not "
          f"survive (gradient correlation "
          f"{scores['structure_correlation']:.3f})",
          scores,
        )
    jump = float(np.abs(np.diff(fractions)).max()) if t > 1 else 0.0
    excess = luminance_flicker(tgt) - luminance_flicker(src)
    scores.update(change_jump=jump, flicker_excess=excess)
    if jump > cfg.max_change_jump or excess > cfg.max_flicker_excess:
      raise Rejected(
        "unstable_target",
        f"changed fraction jumps by {jump:.3f} between "
        f"frames (max {cfg.max_change_jump}); luminance flicker exceeds the "
        f"source's by {excess:.2f} (max {cfg.max_flicker_excess})",
        scores,
      )
    if self.learned_scorer is not None:
      scores["learned_score"] = float(self.learned_scorer(pair))
      if scores["learned_score"] < cfg.min_learned_score:
        raise Rejected(
          "low_learned_score",
          f"learned score {scores['learned_score']:.3f}"
          f" < {cfg.min_learned_score}",
          scores,
        )
    return scores
