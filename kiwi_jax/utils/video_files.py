"""Moved to `kiwi_jax.media.video_io.write_mp4`; this name stays
importable."""

from kiwi_jax.media.video_io import write_mp4

__all__ = ["write_mp4"]
