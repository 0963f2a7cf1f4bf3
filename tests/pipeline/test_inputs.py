"""Source and reference input rules (reference §5.1: VideoData, ImageOps.pad)."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from kiwi_jax.pipeline import inputs


def reference_video_data_size(h, w, max_pixels):
  """`get_height_width` of diffsynth/data/video.py, restated."""
  if w * h > max_pixels:
    scale = (w * h / max_pixels) ** 0.5
    h, w = int(h / scale), int(w / scale)
  return h // 32 * 32, w // 32 * 32


def reference_crop_and_resize(frame, height, width):
  """`crop_and_resize` of diffsynth/data/video.py, restated."""
  ih, iw, _ = frame.shape
  if ih / iw < height / width:
    cw = int(ih / height * width)
    left = (iw - cw) // 2
    frame = frame[:, left : left + cw]
  else:
    ch = int(iw / width * height)
    top = (ih - ch) // 2
    frame = frame[top : top + ch, :]
  return np.asarray(Image.fromarray(frame).resize((width, height)))


@pytest.mark.parametrize(
  "h,w,max_pixels",
  [
    (72, 100, 720 * 1280),
    (720, 1280, 600 * 600),
    (101, 67, 3000),
    (1080, 1920, 720 * 1280),
  ],
)
def test_size_and_resize_match_video_data(h, w, max_pixels):
  rng = np.random.default_rng(h)
  frames = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
  out = inputs.resize_frames(frames, max_pixels)
  eh, ew = reference_video_data_size(h, w, max_pixels)
  assert out.shape == (2, eh, ew, 3)
  np.testing.assert_array_equal(
    out[1], reference_crop_and_resize(frames[1], eh, ew)
  )


def test_video_keeps_first_4k_plus_1_frames_and_fps(media, sample):
  clip = inputs.load_source(media / "video.mp4", max_frames=81)
  assert clip.num_frames == 9 and clip.size == (64, 96)
  assert clip.fps == pytest.approx(12.0) and not clip.is_image
  assert clip.original_size == (72, 100)
  assert inputs.load_source(media / "video.mp4", max_frames=7).num_frames == 5
  # The same rule for in-memory frames.
  arr = inputs.load_source(sample[0], max_frames=81)
  assert arr.num_frames == 9 and arr.size == (64, 96)


def test_image_mode(media, sample):
  clip = inputs.load_source(media / "image.png")
  assert clip.is_image and clip.num_frames == 1 and clip.size == (64, 96)
  np.testing.assert_array_equal(
    clip.frames[0], reference_crop_and_resize(sample[0][0], 64, 96)
  )


def test_reference_is_fit_and_padded_white(sample):
  ref = np.full((40, 20, 3), 7, np.uint8)
  padded = inputs.pad_reference(ref, 64, 96)
  expected = ImageOps.pad(
    Image.fromarray(ref), (96, 64), color="white", centering=(0.5, 0.5)
  )
  np.testing.assert_array_equal(padded, np.asarray(expected))
  assert padded[0, 0].tolist() == [255, 255, 255]
  assert inputs.load_reference(sample[1]).shape == sample[1].shape


def test_model_range():
  x = inputs.to_model_range(np.array([0, 255], np.uint8))
  np.testing.assert_allclose(x, [-1, 1], atol=1e-6)


@pytest.mark.parametrize(
  "name,content,match",
  [
    ("missing.mp4", None, "file not found"),
    ("empty.mp4", b"", "empty"),
    ("garbage.mp4", b"not a video at all" * 10, "cannot read video"),
    ("clip.xyz", b"data", "unsupported extension"),
    ("bad.png", b"not an image", "cannot decode image"),
  ],
)
def test_bad_sources_name_the_file(tmp_path, name, content, match):
  path = tmp_path / name
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(inputs.EditInputError, match=match) as info:
    inputs.load_source(path)
  assert name in str(info.value)


def test_too_small_and_bad_arrays():
  with pytest.raises(inputs.EditInputError, match="32"):
    inputs.load_source(np.zeros((5, 20, 40, 3), np.uint8))
  with pytest.raises(inputs.EditInputError, match="uint8"):
    inputs.load_source(np.zeros((5, 64, 64, 3), np.float32))
  with pytest.raises(inputs.EditInputError, match="no frames"):
    inputs.load_source(np.zeros((0, 64, 64, 3), np.uint8))
