"""Comparing clips: side-by-side panels and PSNR.

Frames are uint8 `[T, H, W, 3]`.
"""

from __future__ import annotations

import numpy as np

from kiwi_jax.media import transforms

DATA_RANGE = 255.0


def side_by_side(*videos: np.ndarray) -> np.ndarray:
  """Clips of the same length and height -> one clip, left to right."""
  if not videos:
    raise ValueError("side_by_side: no clip given.")
  first = videos[0].shape[:2]
  if any(v.shape[:2] != first for v in videos):
    raise ValueError(
      "side_by_side: clips must share [T, H], got "
      f"{[tuple(v.shape) for v in videos]}."
    )
  return np.concatenate(videos, axis=2)


def side_by_side_fitted(source: np.ndarray, edited: np.ndarray) -> np.ndarray:
  """`[source | edited]` per frame, as the reference's `concat_video`.

  Frames beyond the shorter video are dropped (`zip` in the reference); the
  source is brought to the edited video's size first (`transforms.fit_frames`).
  """
  count = min(len(source), len(edited))
  source = transforms.fit_frames(
    source[:count], edited.shape[1], edited.shape[2]
  )
  return side_by_side(source, edited[:count])


def psnr(output: np.ndarray, target: np.ndarray) -> float:
  """PSNR in dB of uint8 arrays of one shape (MSE over all of it); inf
  when they are equal."""
  if output.shape != target.shape:
    raise ValueError(
      f"psnr: output {output.shape} and target {target.shape} differ."
    )
  mse = np.mean((output.astype(np.float64) - target.astype(np.float64)) ** 2)
  if mse == 0:
    return float("inf")
  return float(10.0 * np.log10(DATA_RANGE**2 / mse))
