"""Video reading and atomic writing for the benchmark runner and metrics.

Frames are uint8 `[T, H, W, 3]` RGB arrays here. Videos are written the way
the reference's `save_video(frames, path, fps=15, quality=5)` writes them:
imageio-ffmpeg maps quality 5 to libx264 with `-crf int((1 - 5/10) * 51)`
= 25, yuv420p, so the judge sees files of the same kind.
"""

import av
import numpy as np
from PIL import Image

from kiwi_jax.utils import video_files

REFERENCE_FPS = 15
REFERENCE_CRF = 25


def read_video(path: str, max_frames: int | None = None) -> np.ndarray:
  """Decodes a video file.

  Args:
    path: video file path.
    max_frames: keep at most this many leading frames.

  Returns:
    uint8[T, H, W, 3] RGB frames.

  Raises:
    ValueError: the file cannot be decoded or holds no frames.
  """
  frames = []
  try:
    with av.open(path) as container:
      for frame in container.decode(video=0):
        frames.append(frame.to_ndarray(format="rgb24"))
        if max_frames is not None and len(frames) >= max_frames:
          break
  except (av.error.FFmpegError, IndexError) as e:
    raise ValueError(f"{path}: cannot decode video: {e}") from e
  if not frames:
    raise ValueError(f"{path}: video holds no frames")
  return np.stack(frames)


def as_uint8_frames(frames, where: str = "frames") -> np.ndarray:
  """Editor output as uint8[T, H, W, 3].

  Accepts uint8 frames, or float frames in [-1, 1] (the project's video
  convention) converted as the reference does: `((x + 1) * 127.5)`, clipped
  to [0, 255], truncated to uint8. A leading batch axis of size 1 is
  dropped.

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
  return (
    ((array.astype(np.float32) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
  )


def write_video(
  path: str,
  frames: np.ndarray,
  fps: int = REFERENCE_FPS,
  crf: int = REFERENCE_CRF,
) -> None:
  """Encodes frames to an mp4 atomically (`kiwi_jax.utils.video_files`).

  Args:
    path: destination; its directory is created if needed.
    frames: uint8[T, H, W, 3], or float in [-1, 1] (`as_uint8_frames`); odd
      sides are padded by one pixel (yuv420p).
    fps: frame rate.
    crf: libx264 constant rate factor.
  """
  video_files.write_mp4(
    path, as_uint8_frames(frames, where=path), fps=fps, crf=crf
  )


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """Centre-crops frames to the aspect of (height, width), then resizes.

  The crop-to-aspect then bicubic resize mirrors the reference's
  `VideoData` preprocessing; it is used to put source frames next to an
  output and to bring a ground truth to an output's size.

  Args:
    frames: uint8[T, H, W, 3].
    height: output height.
    width: output width.

  Returns:
    uint8[T, height, width, 3].
  """
  _, src_h, src_w, _ = frames.shape
  if (src_h, src_w) == (height, width):
    return frames
  scale = max(height / src_h, width / src_w)
  crop_h = min(src_h, round(height / scale))
  crop_w = min(src_w, round(width / scale))
  top, left = (src_h - crop_h) // 2, (src_w - crop_w) // 2
  out = []
  for frame in frames:
    crop = Image.fromarray(frame[top : top + crop_h, left : left + crop_w])
    out.append(np.asarray(crop.resize((width, height), Image.BICUBIC)))
  return np.stack(out)


def side_by_side(source: np.ndarray, edited: np.ndarray) -> np.ndarray:
  """`[source | edited]` per frame, as the reference's `concat_video`.

  Frames beyond the shorter video are dropped (`zip` in the reference); the
  source is brought to the edited video's size first.
  """
  count = min(len(source), len(edited))
  source = fit_frames(source[:count], edited.shape[1], edited.shape[2])
  return np.concatenate([source, edited[:count]], axis=2)
