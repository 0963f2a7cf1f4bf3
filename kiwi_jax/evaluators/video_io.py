"""Moved to `kiwi_jax.media` (`video_io`, `pixels`, `transforms`,
`compare`); these names stay importable."""

from kiwi_jax.media.compare import side_by_side_fitted as side_by_side
from kiwi_jax.media.pixels import as_uint8_frames
from kiwi_jax.media.transforms import fit_frames
from kiwi_jax.media.video_io import (
  REFERENCE_CRF,
  REFERENCE_FPS,
  read_video,
  write_video,
)

__all__ = [
  "REFERENCE_CRF",
  "REFERENCE_FPS",
  "as_uint8_frames",
  "fit_frames",
  "read_video",
  "side_by_side",
  "write_video",
]
