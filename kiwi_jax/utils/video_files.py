"""Writing mp4 files with PyAV (H.264, yuv420p), atomically."""

from __future__ import annotations

import fractions
import os
import pathlib

import numpy as np

from kiwi_jax.utils.atomic import atomic_path


def write_mp4(
  path: str | os.PathLike, frames: np.ndarray, fps: float = 15.0, crf: int = 18
) -> pathlib.Path:
  """Writes uint8 frames [T, H, W, 3] to ``path`` (mp4, libx264).

  Odd sizes are padded by one pixel (yuv420p needs even sides). Nothing is
  left at ``path`` if encoding fails.
  """
  import av

  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(
      f"write_mp4 expects uint8 [T, H, W, 3], got "
      f"{frames.dtype} {frames.shape}."
    )
  if frames.shape[0] == 0:
    raise ValueError(f"write_mp4: no frames to write to {path}.")
  t, h, w, _ = frames.shape
  frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  rate = fractions.Fraction(fps).limit_denominator(1001)
  with atomic_path(path) as tmp:
    with av.open(str(tmp), mode="w", format="mp4") as container:
      stream = container.add_stream("libx264", rate=rate)
      stream.width, stream.height = frames.shape[2], frames.shape[1]
      stream.pix_fmt = "yuv420p"
      stream.options = {"crf": str(crf)}
      for frame in frames:
        for packet in stream.encode(
          av.VideoFrame.from_ndarray(frame, format="rgb24")
        ):
          container.mux(packet)
      for packet in stream.encode():
        container.mux(packet)
  return pathlib.Path(path)
