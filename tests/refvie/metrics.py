"""Image comparison helpers for the RefVIE tests."""

import numpy as np
from PIL import Image
from scipy import ndimage


def iou(a: np.ndarray, b: np.ndarray) -> float:
  return float((a & b).sum() / max(1, (a | b).sum()))


def object_crop(
  image: np.ndarray, shown: np.ndarray, size: int = 32
) -> np.ndarray:
  """The shown object's bounding box, on white, resized to size x size.

  Scaffolds and true references frame the object differently (reference §4.5 only
  asks for "centred on white"), so objects are compared at a common scale.
  """
  ys, xs = np.nonzero(shown)
  crop = np.where(shown[..., None], image, 255).astype(np.uint8)
  crop = crop[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
  return np.asarray(
    Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR),
    np.float64,
  )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = float(np.mean((a - b) ** 2))
  return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
  """Mean SSIM (Gaussian window, sigma 1.5) averaged over the RGB channels."""
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  f = lambda x: ndimage.gaussian_filter(x, 1.5)
  values = []
  for ch in range(3):
    x, y = a[..., ch], b[..., ch]
    mx, my = f(x), f(y)
    vx, vy, cov = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    values.append(
      (
        ((2 * mx * my + c1) * (2 * cov + c2))
        / ((mx**2 + my**2 + c1) * (vx + vy + c2))
      ).mean()
    )
  return float(np.mean(values))


def not_white(image: np.ndarray) -> np.ndarray:
  return (image != 255).any(-1)
