"""Patch (un)embedding and Kiwi's conditional embedders.

A Conv3d with kernel = stride = patch is a Dense over non-overlapping
patches: :func:`patchify` lays each patch out as ``(pt, ph, pw, c)`` with the
channel fastest, which is also the order the head's outputs use
(reference §3 step 8, ``b (f h w) (pt ph pw c)``). The converter turns the
Conv3d weight ``(dim, c, pt, ph, pw)`` into the matching ``[pt*ph*pw*c, dim]``
kernel.

``ConditionalEmbedder`` is Kiwi's ``vae_condition`` / ``ref_vae_condition``
(``diffsynth/models/wan_video_dit.py``; reference §1.7): a zero-initialised patch
embedding of source or reference latents.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax.layers import Dense


def check_latents(
  latents: jax.Array, channels: int, patch_size: tuple[int, int, int], name: str
) -> None:
  if latents.ndim != 5 or latents.shape[-1] != channels:
    raise ValueError(
      f"{name} must be float[B, t, h, w, {channels}], got "
      f"shape {tuple(latents.shape)}."
    )
  for axis, (size, p) in enumerate(zip(latents.shape[1:4], patch_size)):
    if size % p:
      raise ValueError(
        f"{name} shape {tuple(latents.shape)}: axis {axis + 1} (size "
        f"{size}) is not divisible by the patch size {p}."
      )


def patchify(latents: jax.Array, patch_size: tuple[int, int, int]) -> jax.Array:
  """float[B, t, h, w, c] -> float[B, t/pt, h/ph, w/pw, pt*ph*pw*c]."""
  b, t, h, w, c = latents.shape
  pt, ph, pw = patch_size
  x = latents.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t // pt, h // ph, w // pw, pt * ph * pw * c)


def unpatchify(
  tokens: jax.Array,
  grid: tuple[int, int, int],
  patch_size: tuple[int, int, int],
) -> jax.Array:
  """float[B, f*h*w, pt*ph*pw*c] (channel fastest) -> float[B, t, H, W, c]."""
  b = tokens.shape[0]
  f, h, w = grid
  pt, ph, pw = patch_size
  c = tokens.shape[-1] // math.prod(patch_size)
  x = tokens.reshape(b, f, h, w, pt, ph, pw, c)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, f * pt, h * ph, w * pw, c)


class PatchEmbedding(nnx.Module):
  """Conv3d(kernel = stride = patch) as patchify + Dense.

  Attributes:
    proj: Dense kernel float[pt*ph*pw*c, dim] (patch order pt, ph, pw, c).
  """

  def __init__(
    self,
    in_channels: int,
    dim: int,
    patch_size: tuple[int, int, int],
    *,
    zero_init: bool = False,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.in_channels = in_channels
    self.patch_size = tuple(patch_size)
    extra = {}
    if zero_init:
      zeros = jax.nn.initializers.zeros
      extra = dict(kernel_init=zeros, bias_init=zeros)
    self.proj = Dense(
      math.prod(patch_size) * in_channels,
      dim,
      kernel_axes=("conv_in", "embed"),
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
      **extra,
    )

  def __call__(self, latents: jax.Array, name: str = "latents") -> jax.Array:
    """float[B, t, h, w, c] -> float[B, t/pt, h/ph, w/pw, dim]."""
    check_latents(latents, self.in_channels, self.patch_size, name)
    return self.proj(patchify(latents, self.patch_size))


class ConditionalEmbedder(nnx.Module):
  """Kiwi's ``ConditionalEmbedder``: a (zero-initialised) patch embedding.

  ``vae_condition`` embeds the source video's latents (added to the noisy
  tokens, scaled by sigma); ``ref_vae_condition`` embeds reference-image
  latents into extra self-attention tokens. Its one child is named
  ``patch_embedding`` like the reference's Conv3d.
  """

  def __init__(
    self,
    in_channels: int,
    dim: int,
    patch_size: tuple[int, int, int],
    *,
    zero_init: bool = True,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.patch_embedding = PatchEmbedding(
      in_channels,
      dim,
      patch_size,
      zero_init=zero_init,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )

  def __call__(self, latents: jax.Array, name: str = "latents") -> jax.Array:
    """float[B, t, h, w, c] -> float[B, t/pt, h/ph, w/pw, dim]."""
    return self.patch_embedding(latents, name)
