"""Reading and shaping the editing pipeline's inputs (source, reference).

The rules are the reference's inference path (reference §5.1, quirk 14):

* ``VideoData(path, length=max_frames, max_pixels=...)``
  (``diffsynth/data/video.py``): the clip keeps its first frames, cut to the
  largest 4k+1 count <= ``max_frames``; the size comes from the first frame,
  scaled down (int truncation) to at most ``max_pixels`` keeping the aspect,
  each side then floored to a multiple of 32; every frame is centre-cropped
  to that aspect (int crop size, ``(in - crop) // 2`` offset) and resized
  with PIL bicubic (``crop_and_resize``); frames already at the size are
  left untouched.
* Image mode (``VideoData(image_file=...)``): one frame, same size rule.
* Images are opened with PIL and ``convert("RGB")`` as ``demo.py`` and
  ``LowMemoryImage`` do (an alpha channel is dropped, not composited).
* The reference image reaches the VAE fitted inside the video's W x H and
  padded with white (``ImageOps.pad``, ``WanVideoUnit_InputVideoEmbedder``);
  the MLLM gets it un-padded.

Deviation: for a ``max_frames`` that is not 4k+1 the reference's shape
checker rounds the frame count *up* and then has fewer source frames than
latent frames; here the count is floored to 4k+1, which is the same for
every 4k+1 ``max_frames`` (the default 81 included).
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib

import numpy as np
from PIL import Image

from kiwi_jax.media import pixels, transforms, video_io

VIDEO_EXTENSIONS = video_io.VIDEO_EXTENSIONS
IMAGE_EXTENSIONS = video_io.IMAGE_EXTENSIONS
# Frame rate used when a container does not state one (the reference writes
# every output at 15 fps).
DEFAULT_FPS = 15.0
SIZE_MULTIPLE = 32  # VAE stride 16 x DiT patch 2 (5B model).
# Most source frames one edit takes (4k+1): 251 latent frames, far past
# what the models were trained on (81); the decoder reserves this many.
MAX_FRAMES = 1001


class EditInputError(ValueError):
  """An input of the editing pipeline cannot be used; names the culprit."""


@dataclasses.dataclass(frozen=True)
class SourceClip:
  """The source of one edit, shaped for the model.

  Attributes:
    frames: uint8[T, H, W, 3], T = 4k+1 (1 in image mode), H and W
      multiples of 32.
    fps: frame rate of the source container (DEFAULT_FPS for images or
      containers that state none).
    is_image: the source was a still image (image-edit mode).
    original_size: (height, width) of the decoded source before resizing.
    name: where it came from, for messages.
  """

  frames: np.ndarray
  fps: float
  is_image: bool
  original_size: tuple[int, int]
  name: str

  @property
  def num_frames(self) -> int:
    return self.frames.shape[0]

  @property
  def size(self) -> tuple[int, int]:
    return self.frames.shape[1], self.frames.shape[2]


def check_text(text, name: str, *, allow_empty: bool = False) -> str:
  """Checks an instruction (or negative prompt) before any model work.

  Text from the command line that was not valid UTF-8 arrives with its
  undecodable bytes as lone surrogates (``\\udce9`` for byte 0xe9), which
  the tokenizer cannot take.

  Args:
    text: the text.
    name: what to call it in errors (``--prompt``).
    allow_empty: an empty (or blank) text is fine.

  Returns:
    ``text``.

  Raises:
    EditInputError: not a string, empty, or not encodable as UTF-8.
  """
  if not isinstance(text, str):
    raise EditInputError(f"{name} must be text, got {type(text).__name__}.")
  if not allow_empty and not text.strip():
    raise EditInputError(f"{name} is empty; give the edit instruction.")
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    bad = ord(text[e.start])
    if _escapes_only(text):  # undecodable bytes of argv or a file name
      what = (
        f"byte 0x{bad - 0xDC00:02x} at position {e.start} of "
        f"{text.encode('utf-8', 'surrogateescape')!r}"
      )
    else:
      what = f"lone surrogate U+{bad:04X} at position {e.start} of {text!a}"
    raise EditInputError(
      f"{name} is not valid UTF-8 text ({what}); pass it as UTF-8, e.g. "
      "under a UTF-8 locale (LANG=C.UTF-8) or converted with "
      "iconv -t UTF-8."
    ) from None
  return text


def _escapes_only(text: str) -> bool:
  """Every lone surrogate is a ``surrogateescape`` byte (U+DC80..U+DCFF)."""
  return all(
    not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text
  )


def resize_frames(
  frames: np.ndarray, max_pixels: int, name: str = "video"
) -> np.ndarray:
  """Applies the pixel budget and the multiple-of-32 rule to every frame.

  Args:
    frames: uint8[T, H, W, 3].
    max_pixels: pixel budget per frame.
    name: the input's name for error messages.

  Returns:
    uint8[T, H', W', 3] with H' * W' <= max_pixels, sides multiples of 32.
  """
  _, in_h, in_w, _ = frames.shape
  try:
    height, width = transforms.size_for_pixel_budget(
      in_h, in_w, max_pixels, SIZE_MULTIPLE
    )
  except ValueError as e:
    raise EditInputError(
      f"{name}: {in_h}x{in_w} frames with max_pixels={max_pixels} give no "
      f"{SIZE_MULTIPLE}-pixel block ({e}); the model needs sides of at "
      f"least {SIZE_MULTIPLE} pixels."
    ) from e
  if (in_h, in_w) == (height, width):
    return frames
  return np.stack(
    [transforms.crop_and_resize(f, height, width) for f in frames]
  )


def open_rgb_image(source, name: str = "image") -> np.ndarray:
  """An image as uint8[H, W, 3] from a path, bytes, PIL image or array.

  PIL ``convert("RGB")``, as the reference opens every image.
  """
  if isinstance(source, np.ndarray):
    array = source
    if array.ndim == 2:
      array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
      raise EditInputError(
        f"{name}: expected an image array [H, W, 3], got {array.shape}."
      )
    if array.dtype != np.uint8:
      raise EditInputError(f"{name}: expected uint8 pixels, got {array.dtype}.")
    return np.ascontiguousarray(array[..., :3])
  if isinstance(source, Image.Image):
    return np.asarray(source.convert("RGB"))
  try:
    if isinstance(source, bytes):
      with Image.open(io.BytesIO(source)) as image:
        return np.asarray(image.convert("RGB"))
    path = _existing_file(source, name)
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    if isinstance(e, EditInputError):
      raise
    raise EditInputError(f"{name}: cannot decode image {source}: {e}") from e


def probe_frame_rate(data: bytes) -> float | None:
  """The video stream's stated frame rate, or None if it states none."""
  import av  # pylint: disable=g-import-not-at-top

  try:
    with av.open(io.BytesIO(data), mode="r") as container:
      stream = container.streams.video[0]
      rate = stream.average_rate or stream.guessed_rate or stream.base_rate
  except (av.FFmpegError, IndexError, ValueError):
    return None
  return float(rate) if rate else None


def _existing_file(path, name: str) -> pathlib.Path:
  path = pathlib.Path(os.fspath(path))
  if not path.exists():
    raise EditInputError(f"{name}: file not found: {path}")
  if not path.is_file():
    raise EditInputError(f"{name}: not a file: {path}")
  return path


def _read_source_frames(
  source, max_frames: int, name: str
) -> tuple[np.ndarray, float, bool]:
  """Decoded frames (at most max_frames), fps, is_image."""
  if isinstance(source, (str, os.PathLike)):
    path = _existing_file(source, name)
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
      return open_rgb_image(path, name)[None], DEFAULT_FPS, True
    if suffix not in VIDEO_EXTENSIONS:
      raise EditInputError(
        f"{name}: unsupported extension {suffix or '(none)'!r} of {path}; "
        f"videos: {', '.join(VIDEO_EXTENSIONS)}; images: "
        f"{', '.join(IMAGE_EXTENSIONS)}."
      )
    data = path.read_bytes()
    if not data:
      raise EditInputError(f"{name}: {path} is empty (0 bytes).")
    try:
      frames = video_io.decode_video(data, max_frames)
    except video_io.MediaError as e:
      raise EditInputError(f"{name}: cannot read video {path}: {e}") from e
    return frames, probe_frame_rate(data) or DEFAULT_FPS, False
  if isinstance(source, Image.Image):
    return open_rgb_image(source, name)[None], DEFAULT_FPS, True
  if isinstance(source, (list, tuple)):
    if not source:
      raise EditInputError(f"{name}: the frame list is empty.")
    frames = np.stack(
      [
        open_rgb_image(f, f"{name}[{i}]")
        for i, f in enumerate(source[:max_frames])
      ]
    )
    return frames, DEFAULT_FPS, len(source) == 1
  array = np.asarray(source)
  if array.ndim == 3:
    return open_rgb_image(array, name)[None], DEFAULT_FPS, True
  if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
    raise EditInputError(
      f"{name}: expected uint8 frames [T, H, W, 3], got "
      f"{array.dtype}{list(array.shape)}."
    )
  if array.shape[0] == 0:
    raise EditInputError(f"{name}: the video has no frames.")
  return array[:max_frames], DEFAULT_FPS, array.shape[0] == 1


def load_source(
  source,
  *,
  max_frames: int = 81,
  max_pixels: int = 720 * 1280,
  name: str | None = None,
) -> SourceClip:
  """Reads and shapes the source of an edit.

  Args:
    source: a video or image path, uint8 frames [T, H, W, 3], an image
      [H, W, 3], a PIL image, a list of frames, or a ``SourceClip``
      (returned as is).
    max_frames: keep the first frames, at most this many (at most
      ``MAX_FRAMES``), cut to 4k+1.
    max_pixels: per-frame pixel budget (720 * 1280 in ``demo.py``).
    name: what to call the input in errors (default: the path).

  Returns:
    The :class:`SourceClip`.

  Raises:
    EditInputError: missing, unreadable, empty or too small input, or an
      unsupported extension.
  """
  if isinstance(source, SourceClip):
    return source  # already shaped (e.g. validated by the command line)
  if not 1 <= max_frames <= MAX_FRAMES:
    raise EditInputError(
      f"max_frames must be in 1..{MAX_FRAMES}, got {max_frames}."
    )
  if max_pixels < SIZE_MULTIPLE * SIZE_MULTIPLE:
    raise EditInputError(
      f"max_pixels must be >= {SIZE_MULTIPLE**2}, got {max_pixels}."
    )
  if name is None:
    name = (
      os.fspath(source) if isinstance(source, (str, os.PathLike)) else "video"
    )
  frames, fps, is_image = _read_source_frames(source, max_frames, name)
  original_size = (frames.shape[1], frames.shape[2])
  count = transforms.clip_length(frames.shape[0], max_frames)
  frames = resize_frames(frames[:count], max_pixels, name)
  return SourceClip(
    frames=frames,
    fps=fps,
    is_image=is_image,
    original_size=original_size,
    name=name,
  )


def load_reference(ref_image, name: str = "reference image") -> np.ndarray:
  """The reference image, un-padded (what the MLLM sees): uint8[h, w, 3]."""
  return open_rgb_image(ref_image, name)


def pad_reference(ref_image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Fit inside (height, width), pad white: what the VAE encodes (5.1)."""
  return transforms.pad_to_canvas(ref_image, height, width)


# uint8 [0, 255] -> float32 [-1, 1] as ``preprocess_image`` does.
to_model_range = pixels.to_unit_preprocess_image
