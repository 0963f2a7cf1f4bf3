"""One edit's result (:class:`EditResult`) and how it is saved."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib

import numpy as np

from kiwi_jax.pipeline import inputs as inputs_lib
from kiwi_jax.pipeline import outputs as outputs_lib
from kiwi_jax.utils import paths

# Output frame rates accepted by ``EditResult.save``: (0, MAX_FPS].
MAX_FPS = 1000.0


@dataclasses.dataclass
class EditResult:
  """One finished edit.

  Attributes:
    frames: uint8[T, H, W, 3] edited frames (T = 1 in image mode).
    source: the shaped source clip the model saw.
    ref_image: uint8[h, w, 3] un-padded reference image, or None.
    latents: float32[1, t, h, w, c] final latents.
    steps: denoising steps.
    seconds: wall time per phase (``PHASES``) plus ``total``.
    block_evals: with the step cache on, the DiT blocks evaluated (the
      full loop evaluates ``steps`` times the model's blocks); None when
      it is off.
  """

  frames: np.ndarray
  source: inputs_lib.SourceClip
  ref_image: np.ndarray | None
  latents: np.ndarray
  steps: int
  seconds: dict[str, float]
  block_evals: int | None = None

  def save(
    self, path, *, side_by_side: bool = False, fps: float | None = None
  ) -> list[pathlib.Path]:
    """Writes the edit (mp4/gif, or an image in image mode) and optionally
    ``<stem>_concat.mp4|png`` and ``<stem>_concat.gif`` (source |
    reference | edited). Returns the written paths, the edit first.

    Raises:
      EditOutputError: a bad path or ``fps`` (not in (0, ``MAX_FPS``]).
      paths.OutputIsInputError: an output is the source file.
    """
    fps = self.source.fps if fps is None else check_fps(fps)
    image_mode = self.frames.shape[0] == 1
    outputs_lib.check_output_path(path, image_mode=image_mode)
    targets = [("output", path)]
    if side_by_side:
      targets += [
        ("side-by-side output", extra)
        for extra in outputs_lib.side_by_side_paths(path, image_mode=image_mode)
      ]
    if os.path.isfile(self.source.name):
      paths.refuse_inputs_as_outputs(targets, [("source", self.source.name)])
    written = []
    try:
      # The edit is written last: if it exists, the whole set does.
      if side_by_side:
        panels = outputs_lib.edit_panels(
          self.source.frames, self.frames, self.ref_image
        )
        for extra in outputs_lib.side_by_side_paths(
          path, image_mode=image_mode
        ):
          written.append(outputs_lib.write_frames(extra, panels, fps))
      written.append(outputs_lib.write_frames(path, self.frames, fps))
    except BaseException:
      for done in written:
        done.unlink(missing_ok=True)
      raise
    return written[-1:] + written[:-1]


def check_fps(fps, name: str = "fps") -> float:
  """A finite output frame rate in (0, ``MAX_FPS``], else EditOutputError."""
  fps = float(fps)
  if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
    raise outputs_lib.EditOutputError(
      f"{name} must be a frame rate in (0, {MAX_FPS:g}], got {fps:g}."
    )
  return fps
