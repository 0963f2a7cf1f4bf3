"""Torch-free image and video preprocessing for Qwen2.5-VL (numpy + PIL).

Reproduces Kiwi-Edit's path (reference §2.3): ``fetch_image`` /
``fetch_video`` of the reference's patched ``qwen_vl_utils.py`` followed by
the Qwen2-VL image/video processor (rescale 1/255, CLIP normalisation,
temporal padding, patchify).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
IMAGE_FACTOR = PATCH_SIZE * MERGE_SIZE  # 28
IMAGE_MIN_PIXELS = 4 * IMAGE_FACTOR**2
IMAGE_MAX_PIXELS = 16384 * IMAGE_FACTOR**2
MAX_RATIO = 200
# FPS_MAX_FRAMES; the reference ignores the item's max_frames (reference §2.3).
VIDEO_MAX_FRAMES = 16
VIDEO_FRAME_MIN_PIXELS = 128 * IMAGE_FACTOR**2  # 100,352
VIDEO_FRAME_MAX_PIXELS = 768 * IMAGE_FACTOR**2  # 602,112
VIDEO_TOTAL_PIXELS = 128000 * IMAGE_FACTOR**2 * 0.9  # MODEL_SEQ_LEN rule
# OpenAI CLIP statistics (the Qwen processor's defaults).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def smart_resize(
  height: int,
  width: int,
  factor: int,
  min_pixels: int | None = None,
  max_pixels: int | None = None,
) -> tuple[int, int]:
  """Target (height, width): multiples of ``factor`` with the pixel count in
  [min_pixels, max_pixels] and the aspect ratio kept (``qwen_vl_utils``)."""
  max_pixels = 16384 * factor**2 if max_pixels is None else max_pixels
  min_pixels = 4 * factor**2 if min_pixels is None else min_pixels
  if max_pixels < min_pixels:
    raise ValueError(f"max_pixels={max_pixels} < min_pixels={min_pixels}.")
  if max(height, width) / min(height, width) > MAX_RATIO:
    raise ValueError(
      f"Aspect ratio of a {height}x{width} image exceeds {MAX_RATIO}."
    )
  h_bar = max(factor, round(height / factor) * factor)
  w_bar = max(factor, round(width / factor) * factor)
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h_bar = math.floor(height / beta / factor) * factor
    w_bar = math.floor(width / beta / factor) * factor
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def to_rgb(image: Image.Image | np.ndarray) -> Image.Image:
  """RGB PIL image; RGBA is composited on white (``qwen_vl_utils.to_rgb``)."""
  if isinstance(image, np.ndarray):
    if (
      image.dtype != np.uint8
      or image.ndim != 3
      or image.shape[-1] not in (3, 4)
    ):
      raise ValueError(
        "Expected a uint8 [H, W, 3|4] frame, got "
        f"{image.dtype}{list(image.shape)}."
      )
    image = Image.fromarray(image)
  if image.mode == "RGBA":
    background = Image.new("RGB", image.size, (255, 255, 255))
    background.paste(image, mask=image.split()[3])
    return background
  return image.convert("RGB")


def fetch_image(
  image,
  *,
  factor: int = IMAGE_FACTOR,
  min_pixels: int | None = None,
  max_pixels: int | None = None,
) -> Image.Image:
  """RGB conversion and one PIL bicubic resize to ``smart_resize``'s size."""
  image = to_rgb(image)
  width, height = image.size
  h, w = smart_resize(
    height,
    width,
    factor,
    4 * factor**2 if min_pixels is None else min_pixels,
    16384 * factor**2 if max_pixels is None else max_pixels,
  )
  return image.resize((w, h), Image.BICUBIC)


def sample_frame_indices(
  num_frames: int, max_frames: int = VIDEO_MAX_FRAMES
) -> np.ndarray:
  """``linspace(0, n - 1, 16).round()`` (half to even) when n > 16."""
  if num_frames <= max_frames:
    return np.arange(num_frames)
  return np.round(np.linspace(0, num_frames - 1, max_frames)).astype(np.int64)


def _normalize_float(x: np.ndarray) -> np.ndarray:
  x = (np.asarray(x).astype(np.float64) * (1 / 255)).astype(np.float32)
  return (x - CLIP_MEAN) / CLIP_STD


# uint8 value x channel -> normalised float32 (the same float32 arithmetic,
# done once per value instead of once per pixel).
_UINT8_TABLE = _normalize_float(np.arange(256)[:, None])


def normalize(pixels: np.ndarray) -> np.ndarray:
  """float32 ``(x / 255 - mean) / std`` for [..., 3] values in 0..255.

  The rescale runs in float64 and is rounded once to float32, then the
  normalisation is float32, as the Qwen PIL image processor does. uint8
  input goes through a 256-entry table with identical values.
  """
  pixels = np.asarray(pixels)
  if pixels.dtype != np.uint8:
    return _normalize_float(pixels)
  out = np.empty(pixels.shape, np.float32)
  for c in range(3):  # one gather per channel is ~3x faster than broadcasting
    out[..., c] = _UINT8_TABLE[:, c][pixels[..., c]]
  return out


def patchify(
  frames: np.ndarray,
  patch_size: int = PATCH_SIZE,
  merge_size: int = MERGE_SIZE,
  temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
):
  """Flattens frames into Qwen's patch rows.

  Args:
    frames: float[T, H, W, C]; T is padded to a multiple of
      ``temporal_patch_size`` by repeating the last frame.

  Returns:
    ``(patches, grid)``: float32[t * h * w, C * tp * P * P] with rows in
    (t, h / m, w / m, m, m) order and columns in (C, tp, P, P) order (the
    Conv3d weight's), and ``grid = (t, h, w)`` in patches.
  """
  frames = np.asarray(frames, np.float32)
  n, height, width, c = frames.shape
  pad = -n % temporal_patch_size
  if pad:
    frames = np.concatenate([frames, np.repeat(frames[-1:], pad, 0)])
  p, m, tp = patch_size, merge_size, temporal_patch_size
  if height % (p * m) or width % (p * m):
    raise ValueError(
      f"Frame size {height}x{width} is not a multiple of {p * m}."
    )
  gt, gh, gw = frames.shape[0] // tp, height // p, width // p
  x = frames.reshape(gt, tp, gh // m, m, p, gw // m, m, p, c)
  x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
  return x.reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)


def preprocess_image(
  image, *, min_pixels: int | None = None, max_pixels: int | None = None
):
  """An image item: ``fetch_image`` (factor 28), normalise, patchify.

  Args:
    image: PIL image or uint8 [H, W, 3|4] array.
    min_pixels: default 4 * 28 * 28.
    max_pixels: default 16384 * 28 * 28 (Kiwi's image mode sets none; the
      reference image uses 28 * 28 * 768).

  Returns:
    ``(patches float32[N, 1176], grid (1, h, w))``.
  """
  resized = fetch_image(image, min_pixels=min_pixels, max_pixels=max_pixels)
  frame = normalize(np.asarray(resized))
  return patchify(np.repeat(frame[None], TEMPORAL_PATCH_SIZE, 0))


def video_frame_size(
  height: int,
  width: int,
  num_frames: int,
  max_pixels: int | None = None,
  min_pixels: int | None = None,
) -> tuple[int, int]:
  """Final frame size after the factor-56 then factor-28 resizes."""
  h1, w1 = smart_resize(
    height,
    width,
    2 * IMAGE_FACTOR,
    4 * (2 * IMAGE_FACTOR) ** 2,
    max_pixels or 16384 * (2 * IMAGE_FACTOR) ** 2,
  )
  return _video_second_size(h1, w1, num_frames, max_pixels, min_pixels)


def _video_second_size(h1, w1, num_frames, max_pixels, min_pixels=None):
  low = VIDEO_FRAME_MIN_PIXELS if min_pixels is None else min_pixels
  limit = max(
    min(
      VIDEO_FRAME_MAX_PIXELS,
      VIDEO_TOTAL_PIXELS / num_frames * TEMPORAL_PATCH_SIZE,
    ),
    int(low * 1.05),
  )
  if max_pixels is not None:
    limit = min(max_pixels, limit)
  return smart_resize(h1, w1, IMAGE_FACTOR, low, limit)


def preprocess_video(
  frames: np.ndarray | Sequence,
  *,
  max_pixels: int | None = None,
  max_frames: int = VIDEO_MAX_FRAMES,
  min_pixels: int | None = None,
):
  """A video item given as frames (``fetch_video``'s list branch).

  1. More than ``max_frames`` (16) frames: keep
     ``linspace(0, n-1, max_frames).round()``.
  2. Each frame: ``fetch_image`` with factor **56** (the reference passes
     ``image_patch_size=28``), min 4 * 56^2, max ``max_pixels`` or
     16384 * 56^2.
  3. All frames: ``smart_resize`` with factor 28, min 100,352, max
     ``min(max_pixels, 602,112)``; bicubic with antialiasing (skipped when the
     size is unchanged, as torchvision does). torchvision's antialiased
     bicubic on uint8 is PIL's filter, which we use.
  4. Normalise, pad time to even by repeating the last frame, patchify.

  Args:
    frames: uint8[T, H, W, 3] or a list of PIL images / uint8 frames.
    max_pixels: per-frame cap (``max_pixels_per_frame``; None in 5B
      training, 262,144 at inference).
    max_frames: frames kept (16, the reference's fixed count).
    min_pixels: the second resize's per-frame floor (None: Qwen's
      100,352; a smaller one lets tiny models see tiny videos at their own
      size, e.g. the CPU demo's 32 x 32 clips).

  Returns:
    ``(patches float32[N, 1176], grid (t, h, w))`` with t = ceil(T' / 2).
  """
  frames = list(frames)
  if not frames:
    raise ValueError("A video needs at least one frame.")
  frames = [frames[i] for i in sample_frame_indices(len(frames), max_frames)]
  factor56 = 2 * IMAGE_FACTOR
  resized = [
    fetch_image(
      f, factor=factor56, min_pixels=4 * factor56**2, max_pixels=max_pixels
    )
    for f in frames
  ]
  sizes = {im.size for im in resized}
  if len(sizes) != 1:
    raise ValueError(f"Video frames have different sizes {sorted(sizes)}.")
  w1, h1 = resized[0].size
  h2, w2 = _video_second_size(h1, w1, len(resized), max_pixels, min_pixels)
  if (h2, w2) != (h1, w1):
    resized = [im.resize((w2, h2), Image.BICUBIC) for im in resized]
  video = normalize(np.stack([np.asarray(im) for im in resized]))
  return patchify(video)
