"""Moved to `kiwi_jax.media.video_io`; this name stays importable."""

from kiwi_jax.media.video_io import (
  IMAGE_EXTENSIONS,
  VIDEO_EXTENSIONS,
  MediaError,
  MediaKind,
  count_video_frames,
  decode_image,
  decode_media,
  decode_video,
  encode_png,
  encode_video,
  media_extension,
  media_kind,
)

__all__ = [
  "IMAGE_EXTENSIONS",
  "VIDEO_EXTENSIONS",
  "MediaError",
  "MediaKind",
  "count_video_frames",
  "decode_image",
  "decode_media",
  "decode_video",
  "encode_png",
  "encode_video",
  "media_extension",
  "media_kind",
]
