"""Rotary position embeddings: 1-D, Qwen M-RoPE and Wan's 3-D interleaved.

Two conventions occur in Kiwi-Edit:

* **rotate-half** (Qwen2.5-VL text and vision): the head dim is split in two
  halves ``(x1, x2)`` and rotated as ``(x1*cos - x2*sin, x2*cos + x1*sin)``;
  ``cos``/``sin`` carry each frequency twice (``cat(f, f)``).
* **interleaved pairs** (Wan DiT, ``rope_apply`` in ``wan_video_dit.py``):
  ``(x[2i], x[2i+1])`` is one complex number multiplied by ``e^{i angle}``.

All rotation math is fp32 and cast back to the input dtype. Static grids (the
DiT's) are computed on the host in float64, like the reference's ``.double()``
tables, then rounded once to fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def rotary_inv_freq(dim: int, theta: float = 10000.0, xp=jnp) -> jax.Array:
  """``theta^(-2j/dim)`` for j in [0, dim/2): float[dim // 2]."""
  exponents = (
    xp.arange(0, dim, 2, dtype=xp.float64 if xp is np else jnp.float32) / dim
  )
  return 1.0 / (theta**exponents)


def rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary_half(
  x: jax.Array, cos: jax.Array, sin: jax.Array
) -> jax.Array:
  """Rotate-half RoPE.

  Args:
    x: float[..., T, N, H] (heads on axis -2).
    cos, sin: float[..., T, H], broadcast over heads.

  Returns:
    x rotated, in x's dtype.
  """
  x32 = x.astype(jnp.float32)
  cos = cos[..., None, :].astype(jnp.float32)
  sin = sin[..., None, :].astype(jnp.float32)
  return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def rope_1d_cos_sin(
  positions: jax.Array, dim: int, theta: float = 10000.0
) -> tuple[jax.Array, jax.Array]:
  """cos/sin float[..., dim] for integer positions [...] (rotate-half)."""
  freqs = positions[..., None].astype(jnp.float32) * rotary_inv_freq(dim, theta)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def mrope_cos_sin(
  position_ids: jax.Array,
  head_dim: int,
  theta: float,
  mrope_section: Sequence[int],
) -> tuple[jax.Array, jax.Array]:
  """Qwen2.5-VL multimodal RoPE tables (chunked sections, rotate-half).

  Args:
    position_ids: int[3, B, T] temporal, height and width positions.
    head_dim: attention head dim; ``sum(mrope_section) == head_dim // 2``.
    theta: RoPE base.
    mrope_section: frequencies per axis, e.g. (16, 24, 24).

  Returns:
    cos, sin: float32[B, T, head_dim]. Frequency band ``i`` (in each half)
    takes its angle from the axis whose section contains ``i``.
  """
  if sum(mrope_section) != head_dim // 2:
    raise ValueError(
      f"mrope_section {tuple(mrope_section)} must sum to "
      f"head_dim/2 = {head_dim // 2}."
    )
  inv_freq = rotary_inv_freq(head_dim, theta)  # [head_dim/2]
  freqs = position_ids[..., None].astype(jnp.float32) * inv_freq  # [3,B,T,F]
  axis_of_band = np.repeat(np.arange(3), mrope_section)  # [head_dim/2]
  picked = jnp.take_along_axis(
    freqs, jnp.asarray(axis_of_band)[None, None, None, :], axis=0
  )[0]
  # Equivalent to picking per band on cat(freqs, freqs) with the sections
  # doubled, as Qwen's apply_multimodal_rotary_pos_emb does.
  emb = jnp.concatenate([picked, picked], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


# ---------------------------------------------------------------------------
# Wan 3-D RoPE.


def wan_rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
  """Head-dim split (t, h, w): ``d - 2*(d//3)``, ``d//3``, ``d//3``."""
  return head_dim - 2 * (head_dim // 3), head_dim // 3, head_dim // 3


def wan_rope_angles(
  frame_pos, row_pos, col_pos, head_dim: int, theta: float = 10000.0, xp=np
):
  """Per-token rotation angles float[S, head_dim/2] as ``[t | h | w]``.

  Each axis with sub-dim ``k`` has its own frequencies ``theta^(-2j/k)``
  (j < k/2), as ``precompute_freqs_cis_3d`` builds them.

  Args:
    frame_pos, row_pos, col_pos: int[S] positions (patch units).
    head_dim: attention head dim.
    theta: RoPE base.
    xp: ``np`` (float64 host tables, the default) or ``jnp`` (fp32, traced).
  """
  dt, dh, dw = wan_rope_axis_dims(head_dim)
  parts = []
  for pos, k in ((frame_pos, dt), (row_pos, dh), (col_pos, dw)):
    inv = rotary_inv_freq(k, theta, xp=xp)
    dtype = xp.float64 if xp is np else jnp.float32
    parts.append(xp.asarray(pos, dtype)[:, None] * inv[None, :])
  return xp.concatenate(parts, axis=-1)


def wan_grid_positions(
  frames: int, height: int, width: int, frame_offset: int = 0
):
  """int[f*h*w] frame/row/col positions of a row-major (f, h, w) grid."""
  f, h, w = np.meshgrid(
    np.arange(frames) + frame_offset,
    np.arange(height),
    np.arange(width),
    indexing="ij",
  )
  return f.reshape(-1), h.reshape(-1), w.reshape(-1)


def wan_rope_cos_sin(
  frame_pos, row_pos, col_pos, head_dim: int, theta: float = 10000.0
) -> tuple[jax.Array, jax.Array]:
  """float32 cos/sin[S, head_dim/2] from host float64 angles."""
  angles = wan_rope_angles(
    np.asarray(frame_pos),
    np.asarray(row_pos),
    np.asarray(col_pos),
    head_dim,
    theta,
  )
  return (
    jnp.asarray(np.cos(angles), jnp.float32),
    jnp.asarray(np.sin(angles), jnp.float32),
  )


def apply_interleaved_rope(
  x: jax.Array, cos: jax.Array, sin: jax.Array
) -> jax.Array:
  """Rotates interleaved pairs ``(x[2i], x[2i+1])`` by the given angles.

  Args:
    x: float[B, S, N, H].
    cos, sin: float[S, H/2] or float[B, S, H/2].

  Returns:
    x rotated, in x's dtype.
  """
  x32 = x.astype(jnp.float32).reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
  re, im = x32[..., 0], x32[..., 1]
  cos = cos.astype(jnp.float32)[..., None, :]  # broadcast over heads
  sin = sin.astype(jnp.float32)[..., None, :]
  out = jnp.stack([re * cos - im * sin, re * sin + im * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)
