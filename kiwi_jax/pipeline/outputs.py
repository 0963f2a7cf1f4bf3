"""Writing the pipeline's outputs: edited video or image, side-by-side.

Pixels follow ``vae_output_to_video`` (``diffsynth/utils/__init__.py``):
``((x + 1) * 127.5)`` clipped to [0, 255] and truncated to uint8
(``media.pixels.to_uint8_truncate``). The
reference computes this in the VAE's bf16 output; here it is float32 of the
decoded values (at most one grey level apart).

Videos are written at the source's frame rate (the reference always writes
15 fps); every file is written under a temporary name and renamed, so a
failed run leaves no partial output.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np
from PIL import Image

from kiwi_jax.media import compare, video_io
from kiwi_jax.pipeline import inputs
from kiwi_jax.utils import atomic

VIDEO_OUTPUT_EXTENSIONS = (".mp4",)
GIF_EXTENSIONS = (".gif",)
IMAGE_OUTPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
SIDE_BY_SIDE_SUFFIX = "_concat"  # demo.py's `<name>_concat.mp4`


class EditOutputError(ValueError):
  """An output path cannot be used; names the path and the reason."""


def check_output_path(path, *, image_mode: bool) -> pathlib.Path:
  """Checks an output path before any work is done.

  Args:
    path: the output file.
    image_mode: the edit has one frame; an image extension is allowed
      (a one-frame mp4 or gif is too).

  Returns:
    The path.

  Raises:
    EditOutputError: unsupported extension (an image extension for a
      video edit included), a directory, or a folder that cannot be
      created or written.
  """
  path = pathlib.Path(os.fspath(path))
  suffix = path.suffix.lower()
  allowed = (
    VIDEO_OUTPUT_EXTENSIONS
    + GIF_EXTENSIONS
    + (IMAGE_OUTPUT_EXTENSIONS if image_mode else ())
  )
  if suffix not in allowed:
    kind = "an image edit" if image_mode else "a video edit"
    raise EditOutputError(
      f"output {path}: unsupported extension {suffix or '(none)'!r} for "
      f"{kind}; use one of {', '.join(allowed)}."
    )
  if path.is_dir():
    raise EditOutputError(f"output {path} is a directory.")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise EditOutputError(
      f"output {path}: cannot write to {path.parent}: {e}"
    ) from e
  return path


def write_gif(path, frames: np.ndarray, fps: float) -> pathlib.Path:
  """Writes uint8[T, H, W, 3] as a looping gif, atomically."""
  images = [Image.fromarray(f) for f in np.asarray(frames, np.uint8)]
  duration = max(1, round(1000 / fps))
  with atomic.atomic_path(path) as tmp:
    images[0].save(
      tmp,
      format="GIF",
      save_all=True,
      append_images=images[1:],
      duration=duration,
      loop=0,
    )
  return pathlib.Path(path)


def write_image(path, frame: np.ndarray) -> pathlib.Path:
  """Writes uint8[H, W, 3] with the format of the extension, atomically."""
  with atomic.atomic_path(path) as tmp:
    fmt = Image.registered_extensions()[pathlib.Path(path).suffix.lower()]
    Image.fromarray(np.asarray(frame, np.uint8)).save(tmp, format=fmt)
  return pathlib.Path(path)


def write_frames(path, frames: np.ndarray, fps: float) -> pathlib.Path:
  """Writes uint8[T, H, W, 3] as mp4, gif or (T = 1) an image by extension."""
  suffix = pathlib.Path(path).suffix.lower()
  frames = np.asarray(frames)
  if suffix in VIDEO_OUTPUT_EXTENSIONS:
    return video_io.write_mp4(path, frames, fps=fps)
  if suffix in GIF_EXTENSIONS:
    return write_gif(path, frames, fps)
  if suffix in IMAGE_OUTPUT_EXTENSIONS:
    if frames.shape[0] != 1:
      raise EditOutputError(
        f"output {path}: an image file holds one frame, got {frames.shape[0]}."
      )
    return write_image(path, frames[0])
  raise EditOutputError(f"output {path}: unsupported extension {suffix!r}.")


def edit_panels(
  source: np.ndarray, edited: np.ndarray, ref_image: np.ndarray | None = None
) -> np.ndarray:
  """[source | reference | edited] panels, uint8[T, H, k*W, 3]
  (`media.compare.side_by_side` of the panels).

  The reference panel is the white-padded image the VAE saw. ``demo.py``
  writes [source | edited]; the reference panel is added when there is one.

  Args:
    source: uint8[T, H, W, 3] (the resized source the model saw).
    edited: uint8[T, H, W, 3].
    ref_image: uint8[h, w, 3] un-padded reference image, or None.
  """
  if source.shape != edited.shape:
    raise ValueError(
      f"side_by_side: source {source.shape} and edited {edited.shape} differ."
    )
  t, h, w, _ = source.shape
  panels = [source]
  if ref_image is not None:
    padded = inputs.pad_reference(ref_image, h, w)
    panels.append(np.broadcast_to(padded[None], (t, h, w, 3)))
  panels.append(edited)
  return compare.side_by_side(*panels)


def side_by_side_paths(path, *, image_mode: bool) -> list[pathlib.Path]:
  """Where the side-by-side views of ``path`` go: ``<stem>_concat.mp4`` and
  ``.gif`` (``.png`` and ``.gif`` in image mode)."""
  path = pathlib.Path(os.fspath(path))
  stem = path.with_name(path.stem + SIDE_BY_SIDE_SUFFIX)
  first = ".png" if image_mode else ".mp4"
  return [stem.with_suffix(first), stem.with_suffix(".gif")]
