"""The pipeline's VAE passes: pixels to latents and back.

With the Wan VAE, both go through the model's host-driven runner
(``models/vae/tiling.py``: causal chunks of one latent frame, optionally
spatial tiles), as the reference does at inference; other codecs (and
``vae_tiling=False``) run one jitted program over the whole clip
(``programs.encode_video`` / ``decode_latents``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from kiwi_jax import sharding
from kiwi_jax.media import pixels as pixels_lib
from kiwi_jax.pipeline import low_memory as low_memory_lib
from kiwi_jax.pipeline import programs as stages

# Logical activation names the VAE passes leave unsharded. Sharding the
# VAE's frame height over `sequence` gives wrong pixels on the CPU backend
# (up to 0.07 off on 8 fake devices, see the sharded pipeline test), so the
# VAE runs with its spatial axes whole; its weights stay sharded.
VAE_UNSHARDED = ("act_height", "act_width")

# Frames per pass of a frame-local codec (no temporal compression, no
# runner) when a long clip is encoded or decoded from the host.
HOST_CHUNK_FRAMES = 16

# ``timed(phase, fn, *args, **kwargs)``: runs ``fn`` and adds its time to
# ``phase``'s (``EditPipeline._edit``).
Timed = Callable[..., object]


def vae_context(mesh):
  """The VAE's sharding rules under ``mesh`` (spatial axes unsharded)."""
  if mesh is None:
    return contextlib.nullcontext()
  return sharding.axis_rules(
    tuple(
      (name, None if name in VAE_UNSHARDED else axes)
      for name, axes in sharding.current_rules()
    )
  )


def encode_frames(
  pipe, runner, frames, timed: Timed, *, host: bool = False, tiled=True
):
  """uint8[T, H, W, 3] -> latents [1, t, h, w, c] in the latent dtype.

  ``host``: the source stays a host array, the runner sends one chunk of
  one tile to the device at a time (low-memory mode; long videos); a
  frame-local codec without a runner (pixel-unshuffle) is encoded
  ``HOST_CHUNK_FRAMES`` frames at a time. ``tiled``: the runner's spatial
  tiles.
  """
  video = pixels_lib.to_unit_preprocess_image(frames)[None]
  if runner is None and host and pipe.temporal_factor == 1:
    chunks = [
      encode_frames(pipe, None, frames[i : i + HOST_CHUNK_FRAMES], timed)
      for i in range(0, len(frames), HOST_CHUNK_FRAMES)
    ]
    return jnp.concatenate(chunks, axis=1)
  if runner is None or not (host or pipe.residency is not None):
    video = jnp.asarray(video)
  with vae_context(pipe.mesh):
    if runner is None:
      latents = timed(
        "vae_encode", stages.encode_video, pipe.graphdef, pipe.state, video
      )
    else:
      latents = timed("vae_encode", runner.encode, video, tiled=tiled)
  return latents.astype(pipe.latent_dtype)


def decode_latents(
  pipe, runner, latents, timed: Timed, *, host: bool = False, tiled=True
):
  """latents [1, t, h, w, c] -> float[1, T, H, W, 3] in [-1, 1].

  With the runner, ``host`` (or low-memory mode) streams each latent
  frame's pixels to the host as they are decoded
  (``low_memory.decode_to_host``); without one, ``host`` decodes a
  frame-local codec ``HOST_CHUNK_FRAMES`` latent frames at a time into a
  host array.
  """
  if runner is None and host and pipe.temporal_factor == 1:
    return np.concatenate(
      [
        np.asarray(decode_latents(pipe, None, latents[:, i : i + n], timed))
        for n in (HOST_CHUNK_FRAMES,)
        for i in range(0, latents.shape[1], n)
      ],
      axis=1,
    )
  with vae_context(pipe.mesh):
    if runner is None:
      return timed(
        "vae_decode", stages.decode_latents, pipe.graphdef, pipe.state, latents
      )
    if host or pipe.residency is not None:
      return timed(
        "vae_decode",
        low_memory_lib.decode_to_host,
        runner,
        latents,
        tiled=tiled,
      )
    return timed("vae_decode", runner.decode, latents, tiled=tiled)
