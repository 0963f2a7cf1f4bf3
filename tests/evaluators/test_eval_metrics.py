"""PSNR, SSIM and the temporal measure against known values."""

import math

import numpy as np
import pytest

from kiwi_jax.evaluators import metrics


def _clip(rng, frames=3, height=23, width=29, low=0, high=256):
  return rng.integers(
    low, high, size=(frames, height, width, 3), dtype=np.int64
  ).astype(np.uint8)


def test_psnr_of_known_noise():
  rng = np.random.default_rng(0)
  target = np.full((5, 31, 37, 3), 128, np.uint8)
  # +-sigma noise, no clipping: MSE is exactly sigma^2.
  sigma = 8
  signs = rng.choice([-1, 1], size=target.shape)
  output = (target.astype(np.int64) + sigma * signs).astype(np.uint8)
  assert metrics.psnr(output, target) == pytest.approx(
    20 * math.log10(255 / sigma), abs=1e-9
  )
  # Gaussian noise: close to the same value.
  noisy = np.clip(
    np.round(128 + 5 * rng.standard_normal(target.shape)), 0, 255
  ).astype(np.uint8)
  assert metrics.psnr(noisy, target) == pytest.approx(
    20 * math.log10(255 / 5), abs=0.15
  )
  assert metrics.psnr(target, target) == math.inf


def _reference_ssim_frame(x, y):
  """SSIM written the direct way: a 2-D window summed over offsets."""
  x = x.astype(np.float64)
  y = y.astype(np.float64)
  size, sigma = 11, 1.5
  grid = np.arange(size) - 5
  window = np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * sigma**2))
  window /= window.sum()
  out_h, out_w = x.shape[0] - size + 1, x.shape[1] - size + 1

  def filt(image):
    total = np.zeros((out_h, out_w) + image.shape[2:])
    for i in range(size):
      for j in range(size):
        total += window[i, j] * image[i : i + out_h, j : j + out_w]
    return total

  mx, my = filt(x), filt(y)
  sxx = filt(x * x) - mx * mx
  syy = filt(y * y) - my * my
  sxy = filt(x * y) - mx * my
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  ssim_map = (
    (2 * mx * my + c1)
    * (2 * sxy + c2)
    / ((mx * mx + my * my + c1) * (sxx + syy + c2))
  )
  return ssim_map.mean()


def test_ssim_identity_is_one():
  clip = _clip(np.random.default_rng(1))
  assert metrics.ssim(clip, clip) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_direct_implementation():
  rng = np.random.default_rng(2)
  target = _clip(rng, frames=2, height=19, width=23)
  noise = rng.integers(-40, 41, size=target.shape)
  output = np.clip(target.astype(np.int64) + noise, 0, 255).astype(np.uint8)
  expected = np.mean(
    [_reference_ssim_frame(o, t) for o, t in zip(output, target)]
  )
  got = metrics.ssim(output, target)
  assert got == pytest.approx(expected, abs=1e-10)
  assert 0 < got < 0.99
  # Symmetric, and worse with more noise.
  assert metrics.ssim(target, output) == pytest.approx(got, abs=1e-12)
  noisier = np.clip(target.astype(np.int64) + 3 * noise, 0, 255).astype(
    np.uint8
  )
  assert metrics.ssim(noisier, target) < got


def test_ssim_rejects_frames_smaller_than_the_window():
  small = np.zeros((1, 7, 13, 3), np.uint8)
  with pytest.raises(ValueError, match="at least 11x11"):
    metrics.ssim(small, small)


def test_temporal_difference_error_known_values():
  rng = np.random.default_rng(3)
  target = _clip(rng, frames=4, low=50, high=200)
  # A constant colour shift keeps every frame difference: error 0.
  shifted = (target.astype(np.int64) + 20).astype(np.uint8)
  assert metrics.temporal_difference_error(shifted, target) == 0.0
  # Frozen output against a target alternating by d: error d / 255.
  d = 17
  base = np.full((23, 29, 3), 100, np.int64)
  alternating = np.stack([base + d * (t % 2) for t in range(5)]).astype(
    np.uint8
  )
  frozen = np.stack([base] * 5).astype(np.uint8)
  assert metrics.temporal_difference_error(frozen, alternating) == (
    pytest.approx(d / 255)
  )
  with pytest.raises(ValueError, match="at least two frames"):
    metrics.temporal_difference_error(frozen[:1], frozen[:1])


def test_align_and_table():
  rng = np.random.default_rng(4)
  output = _clip(rng, frames=5, height=32, width=64)
  target = _clip(rng, frames=9, height=48, width=80)
  aligned_out, aligned_tgt = metrics.align(output, target)
  assert aligned_out.shape == aligned_tgt.shape == (5, 32, 64, 3)
  clips = [
    metrics.clip_metrics("a.mp4", "subject", output, target),
    metrics.clip_metrics("b.mp4", "subject", output, output),
    metrics.clip_metrics("c.mp4", "background", output[:1], output[:1]),
  ]
  assert clips[1].ssim == pytest.approx(1.0)
  assert clips[2].temporal_difference_error is None
  table = metrics.metrics_table(clips, "mini")
  assert "| background | 1 | inf | 1.0000 | n/a |" in table
  assert "| all | 3 |" in table
  with pytest.raises(ValueError, match="same shape"):
    metrics.psnr(output, target)
