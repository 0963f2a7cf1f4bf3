"""The pixel-range rule: uint8 [0, 255] <-> float [-1, 1].

Two output conversions exist and both are kept, each named after what it
follows:

  to_uint8_truncate  the reference's save path (`vae_output_to_video`,
                     docs/reference.md §5.1): `((x + 1) * 127.5)` clipped to
                     [0, 255] and cast, which truncates. Not an identity on
                     the 256 levels (63 of them come back one lower).
  to_uint8_round     round to nearest, the exact inverse of `to_unit_*` on
                     the 256 levels; used for training samples and the demo.

Two input conversions, equal up to one float32 ulp on 111 of the 256
levels, each kept bit-exact for its callers:

  to_unit_training          `x / 127.5 - 1`, the training loader's rule
                            (also valid on jax arrays).
  to_unit_preprocess_image  `x * (2 / 255) - 1` in float32, the reference
                            pipeline's `preprocess_image` (inference).
"""

from __future__ import annotations

import numpy as np


def to_uint8_truncate(video) -> np.ndarray:
  """float in [-1, 1] -> uint8, the reference's truncating save path."""
  video = np.asarray(video, np.float32)
  return ((video + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def to_uint8_round(video) -> np.ndarray:
  """float in [-1, 1] -> uint8, rounded to nearest."""
  return np.clip(
    np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255
  ).astype(np.uint8)


def to_unit_training(frames):
  """uint8 -> float32 in [-1, 1] as `x / 127.5 - 1` (numpy or jax)."""
  return frames.astype(np.float32) / 127.5 - 1.0


def to_unit_preprocess_image(frames: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1] as `preprocess_image`: `x * (2/255) - 1`."""
  return frames.astype(np.float32) * np.float32(2 / 255) - np.float32(1)


def as_uint8_frames(frames, where: str = "frames") -> np.ndarray:
  """Editor output as uint8[T, H, W, 3].

  Accepts uint8 frames, or float frames in [-1, 1] converted with
  `to_uint8_truncate` (the reference's save path). A leading batch axis of
  size 1 is dropped.

  Args:
    frames: uint8 or float array `[T, H, W, 3]` or `[1, T, H, W, 3]`.
    where: what to name in error messages.

  Returns:
    uint8[T, H, W, 3].
  """
  array = np.asarray(frames)
  if array.ndim == 5 and array.shape[0] == 1:
    array = array[0]
  if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] < 1:
    raise ValueError(
      f"{where}: expected [T, H, W, 3] frames, got shape {array.shape}"
    )
  if array.dtype == np.uint8:
    return array
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(
      f"{where}: expected uint8 or float frames, got {array.dtype}"
    )
  return to_uint8_truncate(array)
