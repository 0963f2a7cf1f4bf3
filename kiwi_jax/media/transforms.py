"""Frame-count, resize/crop and reference-image transforms (numpy + PIL).

These copy the reference loaders (reference §6.3, `ImageCropAndResize` and
`LoadVideo` in `diffsynth/trainers/unified_dataset.py`) and the reference
image handling of the DiT path (reference §4.5 and 5.1, `shrink_and_pad_centered`
in `diffsynth/pipelines/wan_video_mllm.py`, `ImageOps.pad` in `demo.py`).
All images are uint8 `[H, W, 3]`, videos uint8 `[T, H, W, 3]`.

The three resize variants, one per reference path (their roundings differ,
so they are not interchangeable):

  resize_cover_and_center_crop  training loader, `ImageCropAndResize`:
                                bilinear cover, torchvision centre crop.
  crop_and_resize               inference, `crop_and_resize` of
                                `diffsynth/data/video.py` (reference §5.1):
                                crop to aspect with int(), then bicubic.
  fit_frames                    evaluation comparisons (`concat_video`, the
                                ground truth brought to an output's size):
                                crop to aspect with round(), then bicubic.
"""

import math

import numpy as np
from PIL import Image, ImageOps

WHITE = (255, 255, 255)


def largest_4k_plus_1(num_frames: int) -> int:
  """Largest n <= num_frames with n % 4 == 1 (the Wan VAE's frame rule)."""
  if num_frames < 1:
    raise ValueError(f"need at least one frame, got {num_frames}")
  return num_frames - (num_frames - 1) % 4


def clip_length(available: int, max_frames: int) -> int:
  """Frames a clip contributes: the first min(available, max) cut to 4k+1."""
  return largest_4k_plus_1(min(available, max_frames))


def size_for_pixel_budget(
  height: int, width: int, max_pixels: int, multiple: int = 32
) -> tuple[int, int]:
  """Target (height, width) under a pixel budget, sides multiples of `multiple`.

  Copies `ImageCropAndResize.get_height_width`: above the budget both sides
  are divided by sqrt(h*w / max_pixels) with int truncation; then each side is
  floored to a multiple (32 for the 5B model: VAE stride 16 x patch 2).

  Raises:
    ValueError: a side would round down to zero.
  """
  if height * width > max_pixels:
    scale = math.sqrt(height * width / max_pixels)
    height, width = int(height / scale), int(width / scale)
  out_h, out_w = height // multiple * multiple, width // multiple * multiple
  if out_h == 0 or out_w == 0:
    raise ValueError(
      f"a {height}x{width} frame is smaller than one {multiple}-pixel block"
    )
  return out_h, out_w


def resize_cover_and_center_crop(
  frames: np.ndarray, height: int, width: int
) -> np.ndarray:
  """Resizes frames to cover (height, width), then centre-crops to it.

  Bilinear resize to (round(h*s), round(w*s)) with s = max(tw/w, th/h), then
  a centre crop with torchvision's rounding, as `crop_and_resize` does.

  Args:
    frames: uint8[T, H, W, 3].
    height, width: output size.

  Returns:
    uint8[T, height, width, 3].
  """
  _, in_h, in_w, _ = frames.shape
  if (in_h, in_w) == (height, width):
    return frames
  scale = max(width / in_w, height / in_h)
  new_h, new_w = round(in_h * scale), round(in_w * scale)
  top = int(round((new_h - height) / 2.0))
  left = int(round((new_w - width) / 2.0))
  if (new_h, new_w) == (in_h, in_w):
    # Crop only (e.g. 720 -> 704 rows at 720p): no per-frame resampling.
    return np.ascontiguousarray(
      frames[:, top : top + height, left : left + width]
    )
  out = np.empty((frames.shape[0], height, width, 3), np.uint8)
  for i, frame in enumerate(frames):
    image = Image.fromarray(frame).resize(
      (new_w, new_h), Image.Resampling.BILINEAR
    )
    out[i] = np.asarray(image)[top : top + height, left : left + width]
  return out


def pad_to_canvas(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Fits an image inside (height, width) keeping aspect, white padding.

  The evaluation-time reference handling (`ImageOps.pad(ref, (W, H),
  color="white", centering=(0.5, 0.5))`, reference §5.1).
  """
  padded = ImageOps.pad(
    Image.fromarray(image),
    (width, height),
    color=WHITE,
    centering=(0.5, 0.5),
  )
  return np.asarray(padded)


def shrink_and_pad_centered(
  image: np.ndarray, height: int, width: int, scale: float
) -> np.ndarray:
  """Fits, shrinks by `scale` (bicubic) and centres an image on white.

  The training-time reference augmentation (reference §4.5): `ImageOps.contain`
  into (W, H), then resize to (int(w*scale), int(h*scale)) and paste at
  ((W - w') // 2, (H - h') // 2) on a white canvas.
  """
  fitted = ImageOps.contain(Image.fromarray(image), (width, height))
  new_w = max(1, int(fitted.width * scale))
  new_h = max(1, int(fitted.height * scale))
  shrunk = fitted.resize((new_w, new_h), Image.Resampling.BICUBIC)
  canvas = Image.new("RGB", (width, height), WHITE)
  canvas.paste(shrunk, ((width - new_w) // 2, (height - new_h) // 2))
  return np.asarray(canvas)


def crop_and_resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  """Centre-crops a frame to the target aspect, then PIL-bicubic resizes.

  ``crop_and_resize`` of ``diffsynth/data/video.py``: the cropped side is
  ``int(other_side / target_other * target_side)``, the offset
  ``(in - crop) // 2``.

  Args:
    frame: uint8[h, w, 3].
    height, width: output size.

  Returns:
    uint8[height, width, 3].
  """
  in_h, in_w, _ = frame.shape
  if in_h / in_w < height / width:
    crop_w = int(in_h / height * width)
    left = (in_w - crop_w) // 2
    frame = frame[:, left : left + crop_w]
  else:
    crop_h = int(in_w / width * height)
    top = (in_h - crop_h) // 2
    frame = frame[top : top + crop_h, :]
  image = Image.fromarray(np.ascontiguousarray(frame))
  return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))


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
