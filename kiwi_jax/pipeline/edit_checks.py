"""Checks of one edit's arguments and checkpoint, before any model work."""

from __future__ import annotations

import math
import numbers
import os
import pathlib

from kiwi_jax.models.kiwi import checkpoint as kiwi_checkpoint
from kiwi_jax.pipeline import inputs as inputs_lib

# Most denoising steps of one edit (the reference uses 50). The step tables
# grow with the square of the count, so absurd counts are refused early.
MAX_STEPS = 1000


class CheckpointDirError(ValueError):
  """A checkpoint directory is missing or is not one kiwi_jax can load."""


def check_sampling_args(
  *,
  steps: int,
  seed: int | None = None,
  guidance_scale: float | None = None,
  ref_guidance_scale: float | None = None,
  names: dict[str, str] | None = None,
) -> None:
  """Checks the numbers of one edit before any work.

  Args:
    steps: denoising steps, 1..``MAX_STEPS``.
    seed: an integer noise seed, 0..2**32 - 1 (JAX keys keep 32 bits, so
      larger or negative seeds would repeat another seed's noise); other
      values (None, a key array) are not checked.
    guidance_scale, ref_guidance_scale: finite, or None.
    names: what to call each argument in messages (e.g. ``--steps``).

  Raises:
    EditInputError: naming the argument and its accepted range.
  """
  names = names or {}
  name = lambda key: names.get(key, key)  # noqa: E731
  if (
    isinstance(steps, bool)
    or not isinstance(steps, numbers.Integral)
    or not 1 <= steps <= MAX_STEPS
  ):
    raise inputs_lib.EditInputError(
      f"{name('steps')} must be an integer in 1..{MAX_STEPS} (the "
      f"reference uses 50), got {steps}."
    )
  if isinstance(seed, numbers.Integral) and not 0 <= seed < 2**32:
    raise inputs_lib.EditInputError(
      f"{name('seed')} must be in 0..{2**32 - 1}, got {seed}."
    )
  for key, value in (
    ("guidance_scale", guidance_scale),
    ("ref_guidance_scale", ref_guidance_scale),
  ):
    if value is not None and not math.isfinite(value):
      raise inputs_lib.EditInputError(
        f"{name(key)} must be a finite number, got {value}."
      )


def check_checkpoint_dir(directory) -> pathlib.Path:
  """The checkpoint directory, checked without loading anything.

  Raises:
    CheckpointDirError: it is missing, not a directory, or holds no
      Kiwi-Edit model (``kiwi_jax.models.kiwi.checkpoint.is_checkpoint``:
      a converted directory or a trainer's workdir).
  """
  path = pathlib.Path(os.fspath(directory))
  if not path.exists():
    raise CheckpointDirError(f"checkpoint directory not found: {path}")
  if not path.is_dir():
    raise CheckpointDirError(f"checkpoint {path} is not a directory.")
  if kiwi_checkpoint.is_checkpoint(path):
    return path
  raise CheckpointDirError(
    f"{path} is not a kiwi_jax checkpoint directory: expected "
    f"{kiwi_checkpoint.CONFIG_FILE} with params/ (written by `python -m "
    "kiwi_jax.converters.cli`) or with checkpoints/ (a train.py workdir); "
    f"found {sorted(p.name for p in path.iterdir())[:10] or 'nothing'}."
  )


def check_edit_options(
  *,
  prompt,
  negative_prompt,
  steps: int,
  seed,
  guidance_scale: float | None,
  ref_guidance_scale: float | None,
  denoising_strength,
  has_reference: bool,
) -> float:
  """Checks the texts and numbers of one ``EditPipeline`` edit; returns
  the denoising strength as a float.

  Raises:
    EditInputError: naming the argument at fault.
  """
  inputs_lib.check_text(prompt, "the prompt")
  inputs_lib.check_text(
    negative_prompt, "the negative prompt", allow_empty=True
  )
  check_sampling_args(
    steps=steps,
    seed=seed,
    guidance_scale=guidance_scale,
    ref_guidance_scale=ref_guidance_scale,
  )
  strength = float(denoising_strength)
  if not 0.0 < strength <= 1.0:
    raise inputs_lib.EditInputError(
      f"denoising_strength must be in (0, 1], got {strength:g}."
    )
  if ref_guidance_scale is not None and not has_reference:
    raise inputs_lib.EditInputError(
      "ref_guidance_scale needs a reference image."
    )
  return strength
