"""Video/image codecs and the resize, crop and reference-padding transforms."""

import io

import numpy as np
import pytest
from PIL import Image

from kiwi_jax.data import transforms, video_io


def _frames(t=5, h=23, w=37, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), np.uint8)


def test_lossless_video_round_trip_is_exact_at_odd_sizes():
  frames = _frames()
  data = video_io.encode_video(frames, lossless=True)
  np.testing.assert_array_equal(video_io.decode_video(data), frames)
  np.testing.assert_array_equal(video_io.decode_video(data, 2), frames[:2])
  assert video_io.count_video_frames(data) == 5
  assert video_io.count_video_frames(data, max_frames=3) == 3


def test_lossy_video_is_close_and_needs_even_sides():
  frames = np.repeat(_frames(1, 32, 48)[:, :, :, :1], 3, -1)
  frames = np.repeat(frames, 3, 0)
  decoded = video_io.decode_video(video_io.encode_video(frames, crf=0))
  assert decoded.shape == frames.shape
  with pytest.raises(ValueError, match="even sides"):
    video_io.encode_video(_frames(1, 23, 37))


def test_corrupt_media_raise_media_error():
  good = video_io.encode_video(_frames(), lossless=True)
  with pytest.raises(video_io.MediaError):
    video_io.decode_video(b"not a video at all" * 10)
  with pytest.raises(video_io.MediaError):
    video_io.decode_video(good[: len(good) // 3])
  with pytest.raises(video_io.MediaError):
    video_io.decode_image(b"\x89PNG broken")


def test_rgba_image_is_composited_on_white():
  rgba = np.zeros((3, 5, 4), np.uint8)  # Fully transparent black.
  buffer = io.BytesIO()
  Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
  np.testing.assert_array_equal(video_io.decode_image(buffer.getvalue()), 255)


def test_media_kind_routes_by_extension():
  assert video_io.media_kind("a/b.MP4") == "video"
  assert video_io.media_kind("x.webp") == "image"
  with pytest.raises(video_io.MediaError, match="unknown media extension"):
    video_io.media_kind("x.txt")


@pytest.mark.parametrize("n,want", [(1, 1), (3, 1), (5, 5), (80, 77), (81, 81)])
def test_largest_4k_plus_1(n, want):
  assert transforms.largest_4k_plus_1(n) == want


@pytest.mark.parametrize(
  "h,w,budget,want",
  [
    # 720 is not a multiple of 32: the reference loader floors it to 704.
    (720, 1280, 921_600, (704, 1280)),
    (1080, 1920, 921_600, (704, 1280)),
    (600, 600, 360_000, (576, 576)),
    (481, 853, 10**9, (480, 832)),
  ],
)
def test_size_for_pixel_budget(h, w, budget, want):
  out = transforms.size_for_pixel_budget(h, w, budget)
  assert out[0] % 32 == 0 and out[1] % 32 == 0
  assert out[0] * out[1] <= budget
  assert out == want


def test_size_for_pixel_budget_rejects_tiny_frames():
  with pytest.raises(ValueError, match="smaller than one 32-pixel block"):
    transforms.size_for_pixel_budget(20, 100, 10**6)


def test_resize_cover_and_center_crop():
  frames = _frames(2, 23, 37)
  out = transforms.resize_cover_and_center_crop(frames, 32, 32)
  assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
  assert transforms.resize_cover_and_center_crop(frames, 23, 37) is frames
  # A horizontal ramp keeps its centre column after a centre crop.
  ramp = np.broadcast_to(
    np.arange(64, dtype=np.uint8)[None, None, :, None], (1, 16, 64, 3)
  ).copy()
  cropped = transforms.resize_cover_and_center_crop(ramp, 16, 32)
  np.testing.assert_array_equal(cropped[0, 0, :, 0], np.arange(16, 48))


def test_reference_padding_train_and_eval():
  ref = np.zeros((20, 40, 3), np.uint8)  # Black, 1:2 aspect.
  padded = transforms.pad_to_canvas(ref, 64, 64)
  assert padded.shape == (64, 64, 3)
  black_rows = np.where((padded == 0).all(axis=(1, 2)))[0]
  assert len(black_rows) == 32  # Fitted to 32x64, centred.
  assert (padded[:16] == 255).all() and (padded[48:] == 255).all()
  shrunk = transforms.shrink_and_pad_centered(ref, 64, 64, scale=0.75)
  black = (shrunk == 0).all(-1)
  assert black.sum() == 24 * 48
  rows, cols = np.where(black)
  assert (rows.min(), cols.min()) == (20, 8)
  full = transforms.shrink_and_pad_centered(ref, 64, 64, scale=1.0)
  np.testing.assert_array_equal(full, padded)
