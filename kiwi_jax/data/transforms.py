"""Moved to `kiwi_jax.media.transforms` (and `media.pixels`); this name
stays importable."""

from kiwi_jax.media.pixels import to_unit_training as to_unit_range
from kiwi_jax.media.transforms import (
  WHITE,
  clip_length,
  largest_4k_plus_1,
  pad_to_canvas,
  resize_cover_and_center_crop,
  shrink_and_pad_centered,
  size_for_pixel_budget,
)

__all__ = [
  "WHITE",
  "clip_length",
  "largest_4k_plus_1",
  "pad_to_canvas",
  "resize_cover_and_center_crop",
  "shrink_and_pad_centered",
  "size_for_pixel_budget",
  "to_unit_range",
]
