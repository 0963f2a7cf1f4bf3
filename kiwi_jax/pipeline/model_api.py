"""What the editing pipeline needs from a model.

``KiwiEdit`` (``kiwi_jax.models.kiwi``) provides it; tests use the toy
editor of ``kiwi_jax.testing.toy_editor``. The device side is an NNX module
whose methods are pure functions of their arguments: the pipeline splits it
once (``nnx.split``) and merges it inside each jitted stage. The host side
(chat, tokens, pixels for the MLLM) is a separate callable, so it runs
outside jit.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import numpy as np


class EditModel(Protocol):
  """Device-side model interface (channels-last, spec 2.5 and 3).

  Attributes:
    latent_channels: c of the latents [B, t, h, w, c] (48 for Wan2.2).
    temporal_factor: frames per latent frame after the first (4).
    spatial_factor: pixels per latent pixel (16).
  """

  latent_channels: int
  temporal_factor: int
  spatial_factor: int

  def encode_conditions(self, mllm_inputs: dict[str, jax.Array],
                        **options) -> Any:
    """MLLM inputs (the processor's arrays, batch 1) and its static
    options -> conditions pytree (the cross-attention context and whatever
    else ``denoise_step`` needs)."""

  def encode_video(self, video: jax.Array) -> jax.Array:
    """float[B, T, H, W, 3] in [-1, 1] -> latents float[B, t, h, w, c]."""

  def decode_latents(self, latents: jax.Array) -> jax.Array:
    """latents float[B, t, h, w, c] -> video float[B, T, H, W, 3]."""

  def denoise_step(self, latents: jax.Array, timestep: jax.Array,
                   sigma: jax.Array, conditions: Any, *,
                   source_latents: jax.Array | None,
                   ref_latents: jax.Array | None) -> jax.Array:
    """One velocity prediction.

    Args:
      latents: float[B, t, h, w, c] noisy latents.
      timestep: bf16[B], the schedule's timestep rounded to bf16.
      sigma: float32[B], the schedule sigma nearest to that timestep (what
        the source injection is scaled by).
      conditions: from ``encode_conditions``.
      source_latents: float[B, t, h, w, c] or None (source-free editing).
      ref_latents: float[B, 1, h, w, c] or None.

    Returns:
      velocity float[B, t, h, w, c].
    """


class ConditionProcessor(Protocol):
  """Host-side MLLM input preparation (one example, numpy out)."""

  def __call__(self, instruction: str, *, frames: np.ndarray,
               ref_image: np.ndarray | None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model inputs of one example.

    Args:
      instruction: the edit instruction.
      frames: uint8[T, H, W, 3] source frames (T = 1: image mode).
      ref_image: uint8[h, w, 3] un-padded reference image, or None.

    Returns:
      ``(arrays, options)``: a pytree of numpy arrays with a leading batch
      axis of 1 (traced), and hashable static options (e.g. the mode) passed
      as keyword arguments to ``encode_conditions``.
    """


def latent_shape(model: EditModel, num_frames: int, height: int,
                 width: int, batch: int = 1) -> tuple[int, ...]:
  """[B, (T - 1) // 4 + 1, H / 16, W / 16, c] (``NoiseInitializer``)."""
  return (batch, (num_frames - 1) // model.temporal_factor + 1,
          height // model.spatial_factor, width // model.spatial_factor,
          model.latent_channels)
