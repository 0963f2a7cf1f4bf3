"""Offline metrics against a ground-truth edit (numpy).

For benchmarks that ship target videos (RefVIE-mini), outputs are compared
with the targets frame by frame, all on uint8 RGB frames read as float64:

* PSNR over the whole clip: `10 log10(255^2 / MSE)`, MSE over all frames,
  pixels and channels (inf for identical clips).
* SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
  K2 = 0.03, L = 255, 'valid' filtering (no padding), computed per channel
  and frame, averaged over channels, pixels and frames.
* Temporal difference error: mean absolute difference between the frame
  differences of output and target, `mean |(o[t+1] - o[t]) - (g[t+1] -
  g[t])|` / 255, in [0, 2]; 0 when the output changes over time exactly as
  the target does (a constant offset or colour shift costs nothing; flicker
  or frozen motion does). Needs at least two frames.

`align` brings a target to an output's frame count and size first: outputs
keep the first 4k+1 frames of the source at sides that are multiples of 32,
so the target keeps its first frames and is centre-cropped and resized
(bicubic) like the source was.
"""

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np

from kiwi_jax.media import compare, transforms

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 255.0


def _check_pair(output: np.ndarray, target: np.ndarray) -> None:
  if output.shape != target.shape or output.ndim != 4:
    raise ValueError(
      f"output {output.shape} and target {target.shape} must "
      "both be [T, H, W, C] of the same shape"
    )


def psnr(output: np.ndarray, target: np.ndarray) -> float:
  """PSNR in dB of uint8[T, H, W, C] clips (MSE over the whole clip)."""
  _check_pair(output, target)
  return compare.psnr(output, target)


def _gaussian_window() -> np.ndarray:
  offsets = np.arange(SSIM_WINDOW) - (SSIM_WINDOW - 1) / 2
  window = np.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
  return window / window.sum()


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
  """Separable 'valid' Gaussian filter over axes 0 and 1 of [H, W, C]."""
  view = np.lib.stride_tricks.sliding_window_view(image, len(window), axis=0)
  rows = view @ window  # [H - k + 1, W, C]
  view = np.lib.stride_tricks.sliding_window_view(rows, len(window), axis=1)
  return view @ window  # [H - k + 1, W - k + 1, C]


def ssim_frame(output: np.ndarray, target: np.ndarray) -> float:
  """SSIM of one uint8[H, W, C] frame pair (mean over pixels, channels)."""
  height, width = output.shape[:2]
  if min(height, width) < SSIM_WINDOW:
    raise ValueError(
      f"SSIM needs frames of at least {SSIM_WINDOW}x"
      f"{SSIM_WINDOW} pixels, got {height}x{width}"
    )
  x = output.astype(np.float64)
  y = target.astype(np.float64)
  window = _gaussian_window()
  mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
  var_x = _filter_valid(x * x, window) - mu_x**2
  var_y = _filter_valid(y * y, window) - mu_y**2
  cov = _filter_valid(x * y, window) - mu_x * mu_y
  c1 = (SSIM_K1 * DATA_RANGE) ** 2
  c2 = (SSIM_K2 * DATA_RANGE) ** 2
  ssim_map = (
    (2 * mu_x * mu_y + c1)
    * (2 * cov + c2)
    / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
  )
  return float(ssim_map.mean())


def ssim(output: np.ndarray, target: np.ndarray) -> float:
  """Mean SSIM over the frames of uint8[T, H, W, C] clips."""
  _check_pair(output, target)
  return float(np.mean([ssim_frame(o, t) for o, t in zip(output, target)]))


def temporal_difference_error(output: np.ndarray, target: np.ndarray) -> float:
  """`mean |Δoutput - Δtarget| / 255` over consecutive frame pairs."""
  _check_pair(output, target)
  if output.shape[0] < 2:
    raise ValueError(
      f"the temporal measure needs at least two frames, got {output.shape[0]}"
    )
  d_out = np.diff(output.astype(np.float64), axis=0)
  d_tgt = np.diff(target.astype(np.float64), axis=0)
  return float(np.mean(np.abs(d_out - d_tgt)) / DATA_RANGE)


def align(
  output: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Both clips at the shorter frame count, the target at the output size."""
  count = min(len(output), len(target))
  target = transforms.fit_frames(
    target[:count], output.shape[1], output.shape[2]
  )
  return output[:count], target


@dataclasses.dataclass(frozen=True)
class ClipMetrics:
  """Metrics of one output against its target."""

  output_name: str
  edit_type: str
  frames: int
  psnr: float
  ssim: float
  temporal_difference_error: float | None


def clip_metrics(
  output_name: str, edit_type: str, output: np.ndarray, target: np.ndarray
) -> ClipMetrics:
  """All metrics of one clip pair (aligned first)."""
  output, target = align(output, target)
  temporal = (
    temporal_difference_error(output, target) if len(output) > 1 else None
  )
  return ClipMetrics(
    output_name,
    edit_type,
    len(output),
    psnr(output, target),
    ssim(output, target),
    temporal,
  )


def _mean(values: Sequence[float | None]) -> float | None:
  kept = [v for v in values if v is not None]
  return float(np.mean(kept)) if kept else None


def _fmt(value: float | None, digits: int) -> str:
  return "n/a" if value is None else f"{value:.{digits}f}"


def metrics_table(clips: Sequence[ClipMetrics], title: str) -> str:
  """Markdown table of mean metrics per edit type and over all clips.

  Means are over clips (each clip counts once); a clip with identical
  output and target has infinite PSNR and makes its mean infinite.
  """
  groups = collections.defaultdict(list)
  for clip in clips:
    groups[clip.edit_type].append(clip)
  rows = sorted(groups.items()) + [("all", list(clips))]
  lines = [
    f"### {title}",
    "",
    "| edit type | clips | PSNR (dB) | SSIM | temporal diff. error |",
    "| --- | --- | --- | --- | --- |",
  ]
  for name, group in rows:
    lines.append(
      f"| {name} | {len(group)} | "
      f"{_fmt(_mean([c.psnr for c in group]), 2)} | "
      f"{_fmt(_mean([c.ssim for c in group]), 4)} | "
      f"{_fmt(_mean([c.temporal_difference_error for c in group]), 4)} |"
    )
  lines += [
    "",
    "Targets are aligned to outputs (first frames, centre crop, "
    "bicubic resize). Temporal difference error: mean |Δoutput - "
    "Δtarget| / 255 between consecutive frames (lower is better).",
    "",
  ]
  return "\n".join(lines)
