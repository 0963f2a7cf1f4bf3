"""Encoding and decoding of videos and images with PyAV and Pillow.

Decoding works on bytes in memory, so the same code serves local files,
`gs://` objects read through `etils.epath`, and media stored inside ArrayRecord
records; `read_video` is the file wrapper. Frames are `uint8[T, H, W, 3]` RGB,
channels last. `write_mp4` / `write_video` write files atomically.

Videos for the benchmark are written the way the reference's
`save_video(frames, path, fps=15, quality=5)` writes them: imageio-ffmpeg maps
quality 5 to libx264 with `-crf int((1 - 5/10) * 51)` = 25, yuv420p.

The reference loads media with imageio (`UnifiedDataset.default_video_operator`
in `diffsynth/trainers/unified_dataset.py`, reference §6.3) and routes by file
extension; `media_kind` copies that routing.
"""

import fractions
import io
import os
import pathlib
from typing import Literal

import av
import numpy as np
from PIL import Image

from kiwi_jax.media import pixels
from kiwi_jax.utils.atomic import atomic_path

MediaKind = Literal["image", "video"]

REFERENCE_FPS = 15
REFERENCE_CRF = 25

# Extension routing of `UnifiedDataset` (reference §6.3); gif is decoded as a video.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
VIDEO_EXTENSIONS = (
  ".mp4",
  ".avi",
  ".mov",
  ".wmv",
  ".mkv",
  ".flv",
  ".webm",
  ".gif",
)


class MediaError(ValueError):
  """Raised when bytes cannot be decoded as the expected media."""


def media_kind(path: str) -> MediaKind:
  """Returns "image" or "video" from the file extension of `path`."""
  lower = str(path).lower()
  if lower.endswith(IMAGE_EXTENSIONS):
    return "image"
  if lower.endswith(VIDEO_EXTENSIONS):
    return "video"
  raise MediaError(
    f"{path}: unknown media extension; expected one of "
    f"{IMAGE_EXTENSIONS + VIDEO_EXTENSIONS}"
  )


def decode_video(data: bytes, max_frames: int | None = None) -> np.ndarray:
  """Decodes the first `max_frames` frames of an encoded video.

  Args:
    data: the encoded container (mp4, mkv, ...).
    max_frames: stop after this many frames; None decodes all of them.

  Returns:
    uint8[T, H, W, 3] RGB frames, T >= 1.

  Raises:
    MediaError: the bytes are not a decodable video, or hold no frame.
  """
  frames = []
  out = None  # Preallocated when the frame budget is known: one copy less.
  count = 0
  try:
    with av.open(io.BytesIO(data), mode="r") as container:
      if not container.streams.video:
        raise MediaError("container has no video stream")
      stream = container.streams.video[0]
      # Frame threading decodes several frames at once; it is the fastest
      # mode for the long clips of training and harmless for short ones.
      stream.thread_type = "AUTO"
      for frame in container.decode(stream):
        array = frame.to_ndarray(format="rgb24")
        if max_frames is None:
          frames.append(array)
        else:
          if out is None:
            out = np.empty((max_frames, *array.shape), np.uint8)
          out[count] = array
        count += 1
        if max_frames is not None and count >= max_frames:
          break
  except MediaError:
    raise
  except (av.FFmpegError, ValueError, EOFError) as e:
    raise MediaError(f"cannot decode video: {e}") from e
  if count == 0:
    raise MediaError("video holds no decodable frame")
  return np.stack(frames) if out is None else out[:count]


def count_video_frames(data: bytes, max_frames: int | None = None) -> int:
  """Counts decodable frames (up to `max_frames`) without keeping them.

  Decoding, not the container's frame count, is what proves that the frames
  a training step will read are intact.
  """
  count = 0
  try:
    with av.open(io.BytesIO(data), mode="r") as container:
      if not container.streams.video:
        raise MediaError("container has no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      for _ in container.decode(stream):
        count += 1
        if max_frames is not None and count >= max_frames:
          break
  except MediaError:
    raise
  except (av.FFmpegError, ValueError, EOFError) as e:
    raise MediaError(f"cannot decode video: {e}") from e
  return count


def encode_video(
  frames: np.ndarray,
  *,
  fps: int = 15,
  lossless: bool = False,
  crf: int = 18,
) -> bytes:
  """Encodes RGB frames as an H.264 mp4.

  Args:
    frames: uint8[T, H, W, 3]; H and W must be even unless `lossless`.
    fps: frame rate written in the container (the reference saves at 15).
    lossless: use libx264rgb with qp 0, so decoding gives back the exact
      frames (RefVIE-mini relies on this); otherwise yuv420p at `crf`.
    crf: quality of the lossy mode.

  Returns:
    The mp4 bytes.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(
      f"frames must be uint8[T, H, W, 3], got {frames.dtype}{frames.shape}"
    )
  _, height, width, _ = frames.shape
  if not lossless and (height % 2 or width % 2):
    raise ValueError(f"lossy yuv420p needs even sides, got {height}x{width}")
  buffer = io.BytesIO()
  with av.open(buffer, mode="w", format="mp4") as container:
    if lossless:
      stream = container.add_stream("libx264rgb", rate=fps)
      stream.pix_fmt = "rgb24"
      stream.options = {"qp": "0", "preset": "ultrafast"}
    else:
      stream = container.add_stream("libx264", rate=fps)
      stream.pix_fmt = "yuv420p"
      stream.options = {"crf": str(crf), "preset": "veryfast"}
    stream.width, stream.height = width, height
    for array in frames:
      frame = av.VideoFrame.from_ndarray(array, format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
  """Decodes image bytes to uint8[H, W, 3] RGB.

  Transparent images are composited on white, as `fetch_image` does
  (`diffsynth/models/qwen_vl_utils.py`, reference §2.3).
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, image)
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise MediaError(f"cannot decode image: {e}") from e


def encode_png(image: np.ndarray) -> bytes:
  """Encodes uint8[H, W, 3] as lossless PNG bytes."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def decode_media(
  data: bytes, kind: MediaKind, max_frames: int | None = None
) -> np.ndarray:
  """Decodes an image or a video to uint8[T, H, W, 3] (T = 1 for images)."""
  if kind == "image":
    return decode_image(data)[None]
  if kind == "video":
    return decode_video(data, max_frames)
  raise ValueError(f"unknown media kind {kind!r}")


def media_extension(data: bytes) -> str:
  """The file extension of encoded media, from its leading bytes.

  Used to name files for media that arrive without a path (ArrayRecord
  records); the result is one of IMAGE_EXTENSIONS + VIDEO_EXTENSIONS.

  Raises:
    MediaError: the container is none of those.
  """
  head = bytes(data[:64])
  if head.startswith(b"\x89PNG\r\n\x1a\n"):
    return ".png"
  if head.startswith(b"\xff\xd8\xff"):
    return ".jpg"
  if head.startswith(b"GIF8"):
    return ".gif"
  if head.startswith(b"RIFF") and head[8:12] in (b"WEBP", b"AVI "):
    return ".webp" if head[8:12] == b"WEBP" else ".avi"
  if head[4:8] == b"ftyp":
    # QuickTime files carry the "qt  " major brand; the rest are ISO-BMFF.
    return ".mov" if head[8:12] == b"qt  " else ".mp4"
  if head.startswith(b"\x1a\x45\xdf\xa3"):
    return ".webm" if b"webm" in head else ".mkv"
  if head.startswith(b"FLV"):
    return ".flv"
  if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
    return ".wmv"
  raise MediaError(
    f"unrecognised media container (leading bytes {head[:12]!r})"
  )


def read_video(path: str, max_frames: int | None = None) -> np.ndarray:
  """Decodes a video file (`decode_video` of its bytes).

  Args:
    path: video file path.
    max_frames: keep at most this many leading frames.

  Returns:
    uint8[T, H, W, 3] RGB frames.

  Raises:
    ValueError: the file cannot be read or decoded, or holds no frames
      (the message starts with the path).
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ValueError(f"{path}: cannot decode video: {e}") from e
  try:
    return decode_video(data, max_frames)
  except MediaError as e:
    raise ValueError(f"{path}: {e}") from e


def write_mp4(
  path: str | os.PathLike, frames: np.ndarray, fps: float = 15.0, crf: int = 18
) -> pathlib.Path:
  """Writes uint8 frames [T, H, W, 3] to ``path`` (mp4, libx264, yuv420p).

  Odd sizes are padded by one pixel (yuv420p needs even sides). Written
  atomically: nothing is left at ``path`` if encoding fails.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(
      f"write_mp4 expects uint8 [T, H, W, 3], got "
      f"{frames.dtype} {frames.shape}."
    )
  if frames.shape[0] == 0:
    raise ValueError(f"write_mp4: no frames to write to {path}.")
  _, h, w, _ = frames.shape
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


def write_video(
  path: str,
  frames: np.ndarray,
  fps: int = REFERENCE_FPS,
  crf: int = REFERENCE_CRF,
) -> None:
  """Encodes frames to an mp4 atomically, as the reference's `save_video`.

  Args:
    path: destination; its directory is created if needed.
    frames: uint8[T, H, W, 3], or float in [-1, 1]
      (`pixels.as_uint8_frames`); odd sides are padded by one pixel.
    fps: frame rate.
    crf: libx264 constant rate factor.
  """
  write_mp4(path, pixels.as_uint8_frames(frames, where=path), fps=fps, crf=crf)
