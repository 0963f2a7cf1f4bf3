"""kiwi_jax.media: the pixel-range rule, psnr, side_by_side, file reads."""

import math

import numpy as np
import pytest

from kiwi_jax.media import compare, pixels, video_io

LEVELS = np.arange(256, dtype=np.uint8)


def test_round_is_the_inverse_of_both_input_rules():
  for to_unit in (pixels.to_unit_training, pixels.to_unit_preprocess_image):
    unit = to_unit(LEVELS)
    assert unit.dtype == np.float32
    assert unit[0] == -1.0 and unit[-1] == 1.0
    np.testing.assert_array_equal(pixels.to_uint8_round(unit), LEVELS)


def test_truncate_is_the_reference_save_path():
  unit = pixels.to_unit_training(LEVELS)
  back = pixels.to_uint8_truncate(unit)
  expected = ((unit + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
  np.testing.assert_array_equal(back, expected)
  # Truncation: never above the level, at most one below; not an identity.
  assert np.all(back <= LEVELS) and np.all(LEVELS - back <= 1)
  assert np.any(back != LEVELS)
  np.testing.assert_array_equal(
    pixels.to_uint8_truncate(np.array([-3.0, 3.0])), [0, 255]
  )


def test_the_two_input_rules_stay_distinct():
  a = pixels.to_unit_training(LEVELS)
  b = pixels.to_unit_preprocess_image(LEVELS)
  np.testing.assert_allclose(a, b, rtol=0, atol=1.2e-7)
  assert np.any(a != b)  # kept separate: each caller stays bit-exact


def test_as_uint8_frames_drops_batch_and_truncates():
  video = np.full((1, 2, 4, 4, 3), 0.999, np.float32)
  out = pixels.as_uint8_frames(video)
  assert out.shape == (2, 4, 4, 3) and out.dtype == np.uint8
  assert np.all(out == 254)  # (1.999 * 127.5) = 254.87, truncated
  with pytest.raises(ValueError, match="clip: expected"):
    pixels.as_uint8_frames(np.zeros((4, 4, 3)), where="clip")


def test_psnr():
  a = np.zeros((2, 4, 4, 3), np.uint8)
  assert compare.psnr(a, a) == math.inf
  b = a.copy()
  b[0, 0, 0, 0] = 255
  mse = 255.0**2 / a.size
  assert compare.psnr(b, a) == pytest.approx(10 * math.log10(255.0**2 / mse))
  with pytest.raises(ValueError, match="differ"):
    compare.psnr(a, a[:1])


def test_side_by_side_shapes():
  a = np.zeros((3, 8, 4, 3), np.uint8)
  b = np.ones((3, 8, 6, 3), np.uint8)
  out = compare.side_by_side(a, b, a)
  assert out.shape == (3, 8, 14, 3)
  np.testing.assert_array_equal(out[:, :, 4:10], b)
  with pytest.raises(ValueError, match="share"):
    compare.side_by_side(a, b[:2])
  fitted = compare.side_by_side_fitted(
    np.zeros((5, 16, 16, 3), np.uint8), np.ones((3, 8, 12, 3), np.uint8)
  )
  assert fitted.shape == (3, 8, 24, 3)


def test_read_video_names_the_path(tmp_path):
  frames = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), np.uint8)
  path = tmp_path / "a.mp4"
  path.write_bytes(video_io.encode_video(frames, lossless=True))
  np.testing.assert_array_equal(video_io.read_video(str(path)), frames)
  np.testing.assert_array_equal(video_io.read_video(str(path), 2), frames[:2])
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(b"not a video" * 10)
  with pytest.raises(ValueError, match="bad.mp4: cannot decode video"):
    video_io.read_video(str(bad))
  with pytest.raises(ValueError, match="missing.mp4: cannot decode video"):
    video_io.read_video(str(tmp_path / "missing.mp4"))


def test_remote_atomic_write_leaves_no_temporary(tmp_path, monkeypatch):
  from kiwi_jax.utils import atomic

  assert atomic.is_remote("gs://bucket/x") and not atomic.is_remote(tmp_path)
  # The remote branch (unique hidden temporary, then replace), run on a
  # local epath so the test needs no bucket.
  monkeypatch.setattr(atomic, "is_remote", lambda path: True)
  target = tmp_path / "sub" / "a.bin"
  atomic.write_bytes(target, b"one")
  atomic.write_text(target, "two")
  assert target.read_text() == "two"
  assert [p.name for p in target.parent.iterdir()] == ["a.bin"]
