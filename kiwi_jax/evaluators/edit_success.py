"""Edit success: did the output make the edit, and only the edit?

For generated data whose edited region and true target are known exactly
(RefVIE-mini: `EditSample.mask` is bool[T, H, W], the pixels where source
and target differ), an output clip is scored against its source and target.

Definition:

* d(a, b, region) = mean over the region's pixels (over all frames) of the
  per-pixel distance, where the per-pixel distance is the mean absolute
  difference over the 3 channels in [0, 1] units (uint8 / 255).
* In-region test: d(out, target, mask) < d(out, source, mask) (closer to
  the target than to the source; a tie fails).
* Outside test ("nothing else changed"):
  d(out, source, ~mask) <= d(target, source, ~mask)
                           + rho * d(target, source, mask),
  with rho = 0.5 by default (`DEFAULT_RHO`, the `rho` argument): outside
  the region the output may differ from the source by at most half of the
  edit's own size beyond what the target itself differs there. For local
  RefVIE-mini edits target == source outside the mask, so this is "changed
  less than half as much as the edit" (at most half: equality passes).
* Success = both tests pass.

Inputs: source, target and output are [T, H, W, 3] of one shape, each
uint8 (read as value / 255) or floating point with every value in [0, 1].
The mask is bool, [T, H, W] or [H, W] (one mask for every frame, also
[1, H, W]). When all three clips are uint8 the sums are exact integers.

Edge cases: an empty mask is a `ValueError` (there is no edit to score).
An empty outside region (the mask covers every pixel) is defined: nothing
else could change, d over it is taken as 0, and the outside test passes.
So is a target equal to the source inside the mask: the in-region test
then compares two equal distances and fails.

`aggregate` gives the success rate (a fraction in [0, 1]) per edit type
and over all clips, as JSON-serialisable dicts.
"""

import collections
import dataclasses
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

DEFAULT_RHO = 0.5
CHANNELS = 3


@dataclasses.dataclass(frozen=True)
class EditScore:
  """The edit-success test of one clip.

  Attributes:
    in_target: d(out, target, mask).
    in_source: d(out, source, mask).
    out_source: d(out, source, ~mask).
    allowed: d(target, source, ~mask) + rho * d(target, source, mask), the
      most `out_source` may be.
    success: both tests pass.
  """

  in_target: float
  in_source: float
  out_source: float
  allowed: float
  success: bool

  @property
  def in_region_ok(self) -> bool:
    """The output is closer to the target than to the source in the mask."""
    return self.in_target < self.in_source

  @property
  def outside_ok(self) -> bool:
    """The output changed nothing else beyond what is allowed."""
    return self.out_source <= self.allowed

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class _Sample(Protocol):
  source: np.ndarray
  target: np.ndarray
  mask: np.ndarray


def _check_clip(name: str, clip: np.ndarray) -> np.ndarray:
  clip = np.asarray(clip)
  if clip.ndim != 4 or clip.shape[-1] != CHANNELS:
    raise ValueError(f"{name} must be [T, H, W, 3], got shape {clip.shape}")
  if clip.dtype == np.uint8:
    return clip
  if not np.issubdtype(clip.dtype, np.floating):
    raise ValueError(
      f"{name} must be uint8 or float in [0, 1], got {clip.dtype}"
    )
  if clip.size and not (
    np.all(np.isfinite(clip)) and clip.min() >= 0 and clip.max() <= 1
  ):
    raise ValueError(
      f"{name} is float but not in [0, 1] (min {np.nanmin(clip)}, max "
      f"{np.nanmax(clip)}); pass uint8 or values / 255"
    )
  return clip


def _check_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  mask = np.asarray(mask)
  if mask.dtype != np.bool_:
    raise ValueError(f"mask must be bool, got {mask.dtype}")
  frames, height, width = shape[:3]
  if mask.shape == (height, width):
    mask = mask[None]
  if mask.shape not in ((1, height, width), (frames, height, width)):
    raise ValueError(
      f"mask must be [T, H, W] = {(frames, height, width)} or [H, W] = "
      f"{(height, width)} for clips of shape {shape}, got {mask.shape}"
    )
  if not mask.any():
    raise ValueError("mask is empty: no edited pixel, nothing to score")
  return np.broadcast_to(mask, (frames, height, width))


def _region_distances(
  a: np.ndarray, b: np.ndarray, mask: np.ndarray
) -> tuple[float, float]:
  """(d(a, b, mask), d(a, b, ~mask)); 0.0 for an empty region."""
  exact = a.dtype == np.uint8 and b.dtype == np.uint8
  scale = 255 * CHANNELS if exact else CHANNELS
  inside = outside = 0
  for frame_a, frame_b, frame_mask in zip(a, b, mask):  # bounded memory
    if exact:
      diff = np.abs(frame_a.astype(np.int16) - frame_b.astype(np.int16))
      per_pixel = diff.sum(-1, dtype=np.int64)  # sum over channels
    else:
      frame_a = frame_a / 255 if frame_a.dtype == np.uint8 else frame_a
      frame_b = frame_b / 255 if frame_b.dtype == np.uint8 else frame_b
      diff = np.abs(frame_a.astype(np.float64) - frame_b.astype(np.float64))
      per_pixel = diff.sum(-1)
    inside += per_pixel[frame_mask].sum()
    outside += per_pixel[~frame_mask].sum()
  count_in = int(mask.sum())
  count_out = mask.size - count_in
  d_in = float(inside / (scale * count_in))
  d_out = float(outside / (scale * count_out)) if count_out else 0.0
  return d_in, d_out


def score_edit(
  output: np.ndarray,
  source: np.ndarray,
  target: np.ndarray,
  mask: np.ndarray,
  rho: float = DEFAULT_RHO,
) -> EditScore:
  """Scores one output clip against its source, target and edited region."""
  if not (np.isfinite(rho) and rho >= 0):
    raise ValueError(f"rho must be a finite number >= 0, got {rho}")
  output = _check_clip("output", output)
  source = _check_clip("source", source)
  target = _check_clip("target", target)
  if not output.shape == source.shape == target.shape:
    raise ValueError(
      f"output {output.shape}, source {source.shape} and target "
      f"{target.shape} must have one shape"
    )
  mask = _check_mask(mask, source.shape)
  in_target, _ = _region_distances(output, target, mask)
  in_source, out_source = _region_distances(output, source, mask)
  edit_in, edit_out = _region_distances(target, source, mask)
  allowed = edit_out + rho * edit_in
  return EditScore(
    in_target=in_target,
    in_source=in_source,
    out_source=out_source,
    allowed=allowed,
    success=bool(in_target < in_source and out_source <= allowed),
  )


def score_sample(
  output: np.ndarray, sample: _Sample, rho: float = DEFAULT_RHO
) -> EditScore:
  """`score_edit` with the source, target and mask of a sample
  (e.g. `kiwi_jax.data.refvie_mini.EditSample`)."""
  return score_edit(output, sample.source, sample.target, sample.mask, rho)


def _rates(scores: list[EditScore]) -> dict[str, Any]:
  count = len(scores)
  successes = sum(s.success for s in scores)
  return {
    "clips": count,
    "successes": successes,
    "success_rate": successes / count,
    "in_region_rate": sum(s.in_region_ok for s in scores) / count,
    "outside_rate": sum(s.outside_ok for s in scores) / count,
  }


def aggregate(scored: Iterable[tuple[str, EditScore]]) -> dict[str, Any]:
  """Success rates per edit type and over all clips.

  Args:
    scored: `(edit_type, score)` per clip; each clip counts once.

  Returns:
    `{"overall": rates, "by_type": {edit_type: rates}}` (types sorted),
    where rates has `clips`, `successes`, `success_rate` and the pass
    rates of each test alone (`in_region_rate`, `outside_rate`), all
    fractions in [0, 1]. JSON-serialisable.
  """
  groups = collections.defaultdict(list)
  everything = []
  for edit_type, score in scored:
    groups[str(edit_type)].append(score)
    everything.append(score)
  if not everything:
    raise ValueError("no scored clips to aggregate")
  return {
    "overall": _rates(everything),
    "by_type": {name: _rates(groups[name]) for name in sorted(groups)},
  }
