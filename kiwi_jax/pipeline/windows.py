"""Long-video editing: the plan of overlapping temporal windows.

A clip of ``T`` frames has ``t = (T - 1) / f + 1`` latent frames (``f``
the codec's temporal factor, 4 for the Wan VAE). ``EditPipeline.edit(...,
window=F, overlap=K)`` denoises it in windows of ``(F - 1) / f + 1``
latent frames (``F`` = 4k+1 pixel frames, what one pass of the released
model takes), successive windows sharing ``K / f`` latent frames; the last
window is moved back to end with the clip, so it may share more. Every
denoising step updates every window, then merges the windows' latents
frame by frame with the weights of :meth:`WindowPlan.weights` and gives
each window the merged frames back (``window_programs``), so overlapping
windows agree while they are denoised. docs/long_video.md has the design.

This module is the arithmetic (no JAX): the window starts, the blending
weights, the argument checks, and the seam measure of the tests and of
docs/long_video.md.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from kiwi_jax.pipeline import inputs as inputs_lib

BLENDS = ("linear", "none")
MODES = ("auto", "batched", "streamed")
# ``window_mode="auto"`` batches the windows when all of them together hold
# at most this many latent frames: the 21 of one 81-frame pass, the longest
# the released model edits at once, so the batched program's activations
# are at most a plain 81-frame edit's at the same frame size. Otherwise the
# windows are streamed, one at a time per step.
MAX_BATCHED_LATENT_FRAMES = 21
# The seam bound of tests/pipeline/test_windows.py and docs/long_video.md:
# at every window boundary the edit's frame-to-frame difference is at most
# this many times the median one inside the windows (``seam_ratios``).
# Measured on the tiny model (bench/window_seams.py): linear blend at most
# about 1.05, windows stitched without blending up to about 2.6.
SEAM_FACTOR = 1.2
# The Wan VAE's temporal factor: ``kiwi-edit`` checks --window and
# --overlap with it before any model is loaded (the pipeline checks them
# again with the model's own factor).
WAN_TEMPORAL_FACTOR = 4


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_window_args(
  window,
  overlap,
  temporal_factor: int = WAN_TEMPORAL_FACTOR,
  *,
  names: tuple[str, str] = ("window", "overlap"),
) -> None:
  """Checks a window length and overlap, in pixel frames.

  ``window`` must be ``k * temporal_factor + 1`` with k >= 1 (at least two
  latent frames), ``overlap`` a multiple of ``temporal_factor`` in
  ``0..window - 1`` (0: windows side by side, no blending).

  Raises:
    EditInputError: one line naming the argument (``names``).
  """
  wname, oname = names
  f = temporal_factor
  if not _is_int(window) or window < f + 1 or (window - 1) % f:
    raise inputs_lib.EditInputError(
      f"{wname} must be a frame count {f}k+1 of at least {f + 1} "
      f"(e.g. {4 * f + 1}, or 81 as the released model), got {window}."
    )
  if overlap is None:
    raise inputs_lib.EditInputError(f"{wname} needs {oname}.")
  if not _is_int(overlap) or overlap < 0 or overlap % f:
    raise inputs_lib.EditInputError(
      f"{oname} must be a frame count >= 0 that is a multiple of {f}, got "
      f"{overlap}."
    )
  if overlap >= window:
    raise inputs_lib.EditInputError(
      f"{oname} ({overlap}) must be smaller than {wname} ({window})."
    )


def check_window_options(
  window, overlap, mode, blend, temporal_factor: int
) -> None:
  """:func:`check_window_args` plus ``mode`` and ``blend``; ``window=None``
  (one pass, today's edit) refuses a stray ``overlap``."""
  if window is None:
    if overlap is not None:
      raise inputs_lib.EditInputError("overlap needs window.")
  else:
    check_window_args(window, overlap, temporal_factor)
  if mode not in MODES:
    raise inputs_lib.EditInputError(
      f"window_mode must be one of {MODES}, got {mode!r}."
    )
  if blend not in BLENDS:
    raise inputs_lib.EditInputError(
      f"window_blend must be one of {BLENDS}, got {blend!r}."
    )


def window_starts(num_frames: int, length: int, overlap: int) -> tuple:
  """First latent frame of each window (all ``length`` long), in order."""
  if num_frames <= length:
    return (0,)
  stride = length - overlap
  starts = list(range(0, num_frames - length, stride))
  return tuple(starts + [num_frames - length])


@dataclasses.dataclass(frozen=True)
class WindowPlan:
  """Windows over a clip's latent frames (hashable: a static argument).

  Attributes:
    num_frames: latent frames of the clip.
    length: latent frames of each window.
    overlap: the requested shared latent frames of successive windows
      (the last window may share more).
    starts: first latent frame of each window.
    blend: ``"linear"``: merge the windows at every step with linear
      cross-fades; ``"none"``: denoise them apart and cut each overlap at
      its middle afterwards (the baseline the seam test compares with).
  """

  num_frames: int
  length: int
  overlap: int
  starts: tuple[int, ...]
  blend: str = "linear"

  @classmethod
  def build(
    cls,
    num_pixel_frames: int,
    window: int,
    overlap: int,
    temporal_factor: int,
    blend: str = "linear",
  ) -> WindowPlan:
    """The plan of a ``num_pixel_frames`` clip (pixel-frame arguments,
    checked with :func:`check_window_args`)."""
    check_window_args(window, overlap, temporal_factor)
    f = temporal_factor
    num_frames = (num_pixel_frames - 1) // f + 1
    length = (window - 1) // f + 1
    if blend not in BLENDS:
      raise inputs_lib.EditInputError(
        f"window_blend must be one of {BLENDS}, got {blend!r}."
      )
    starts = window_starts(num_frames, length, overlap // f)
    return cls(num_frames, min(length, num_frames), overlap // f, starts, blend)

  @property
  def num_windows(self) -> int:
    return len(self.starts)

  def spans(self) -> list[tuple[int, int]]:
    return [(s, s + self.length) for s in self.starts]

  def _ramps(self) -> np.ndarray:
    """float64[N, length]: each window's trapezoid, ramping linearly
    ``(j + 1) / (n + 1)`` over its ``n`` frames shared with the previous
    window and down the same way over those shared with the next."""
    out = np.ones((self.num_windows, self.length))
    j = np.arange(self.length)
    spans = self.spans()
    for i, (s, e) in enumerate(spans):
      if i > 0:
        n = spans[i - 1][1] - s
        out[i] = np.minimum(out[i], np.where(j < n, (j + 1) / (n + 1), 1.0))
      if i + 1 < len(spans):
        n = e - spans[i + 1][0]
        back = self.length - j  # n..1 over the last n frames
        out[i] = np.minimum(out[i], np.where(back <= n, back / (n + 1), 1.0))
    return out

  def coverage(self, ramps: np.ndarray) -> np.ndarray:
    """float64[num_frames]: the per-frame sum of ``ramps``."""
    total = np.zeros(self.num_frames)
    for (s, e), r in zip(self.spans(), ramps):
      total[s:e] += r
    return total

  def weights(self) -> np.ndarray:
    """float32[N, length]: the linear cross-fade, normalised so that every
    latent frame's weights over the windows holding it sum to 1 (two
    windows sharing n frames: ``(n - j) / (n + 1)`` and ``(j + 1) / (n +
    1)``); a frame held by one window has weight 1."""
    ramps = self._ramps()
    total = self.coverage(ramps)
    return np.stack(
      [r / total[s:e] for (s, e), r in zip(self.spans(), ramps)]
    ).astype(np.float32)

  def cut_weights(self) -> np.ndarray:
    """float32[N, length]: one-hot, each latent frame from the window of
    largest cross-fade weight (the earlier on a tie): the hard cut at the
    middle of each overlap."""
    ramps = self._ramps()
    best = np.full(self.num_frames, -1.0)
    owner = np.zeros(self.num_frames, np.int64)
    for i, (s, e) in enumerate(self.spans()):
      better = ramps[i] > best[s:e]
      best[s:e] = np.where(better, ramps[i], best[s:e])
      owner[s:e] = np.where(better, i, owner[s:e])
    return np.stack(
      [(owner[s:e] == i) for i, (s, e) in enumerate(self.spans())]
    ).astype(np.float32)

  def final_weights(self) -> np.ndarray:
    """The weights of the last merge: :meth:`weights`, or
    :meth:`cut_weights` for ``blend="none"``."""
    return self.weights() if self.blend == "linear" else self.cut_weights()

  def cuts(self) -> list[int]:
    """The first latent frame :meth:`cut_weights` takes from each window
    after the first (where a hard cut would switch windows)."""
    owner = np.argmax(
      [
        np.pad(w, (s, self.num_frames - s - self.length))
        for (s, _), w in zip(self.spans(), self.cut_weights())
      ],
      axis=0,
    )
    return [int(f) for f in np.flatnonzero(np.diff(owner)) + 1]

  def exclusive(self) -> np.ndarray:
    """bool[num_frames]: latent frames held by one window only."""
    return self.coverage(np.ones((self.num_windows, self.length))) == 1


def pixel_span(latent_frame: int, temporal_factor: int) -> tuple[int, int]:
  """The pixel frames ``[first, last]`` latent frame ``k`` decodes to
  (the causal VAE: frame 0 alone, then ``temporal_factor`` per latent)."""
  if latent_frame == 0:
    return 0, 0
  f = temporal_factor
  return f * (latent_frame - 1) + 1, f * latent_frame


def frame_differences(frames: np.ndarray) -> np.ndarray:
  """float64[T - 1]: mean absolute difference of successive frames."""
  x = np.asarray(frames, np.float64)
  return np.abs(np.diff(x, axis=0)).reshape(x.shape[0] - 1, -1).mean(axis=1)


def seam_ratios(
  frames: np.ndarray, plan: WindowPlan, temporal_factor: int
) -> np.ndarray:
  """Each window boundary's frame-to-frame difference over the median one
  inside the windows.

  A boundary is the pixel-frame pair where a hard cut switches windows
  (:meth:`WindowPlan.cuts`: the last pixel frame of latent frame c - 1 and
  the first of latent frame c); "inside" is every pair of pixel frames
  whose latent frames are held by one window only. A seamless edit gives
  ratios near 1; a visible seam, larger.

  Args:
    frames: [T, H, W, 3] edited frames.
    plan: the windows the edit ran.
    temporal_factor: the codec's.

  Returns:
    float64[N - 1], one ratio per boundary.
  """
  diffs = frame_differences(frames)
  exclusive = plan.exclusive()
  latent_of = np.zeros(len(frames), np.int64)
  for k in range(plan.num_frames):
    first, last = pixel_span(k, temporal_factor)
    latent_of[first : last + 1] = k
  inside = exclusive[latent_of[:-1]] & exclusive[latent_of[1:]]
  pairs = [pixel_span(c - 1, temporal_factor)[1] for c in plan.cuts()]
  if not inside.any():  # every frame shared: all pairs but the boundaries
    inside = np.ones_like(inside)
    inside[pairs] = False
  median = float(np.median(diffs[inside]))
  return diffs[pairs] / median


__all__ = [
  "BLENDS",
  "MAX_BATCHED_LATENT_FRAMES",
  "MODES",
  "SEAM_FACTOR",
  "WindowPlan",
  "check_window_args",
  "check_window_options",
  "frame_differences",
  "pixel_span",
  "seam_ratios",
  "window_starts",
]
