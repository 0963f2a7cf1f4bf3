"""Timestep embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def timestep_sinusoid(
  t: jax.Array, dim: int, *, max_period: float = 10000.0, cos_first: bool = True
) -> jax.Array:
  """Sinusoidal timestep features, fp32.

  Wan's ``sinusoidal_embedding_1d``: with ``half = dim // 2``,
  ``freq_k = max_period^(-k/half)`` and output ``[cos(t f), sin(t f)]`` (cos
  first). The reference computes in float64; here the frequencies are
  float64 rounded to fp32 and the angle ``t * f`` is an fp32 product, so the
  angle is off by at most ~6e-8 relative (< 1e-4 absolute at t = 1000).

  Args:
    t: float[...] timesteps (any shape, e.g. [B] or per-token [B, S]).
    dim: output features (even).
    max_period: frequency base.
    cos_first: ``[cos, sin]`` (Wan) or ``[sin, cos]``.

  Returns:
    float32[..., dim].
  """
  if dim % 2:
    raise ValueError(f"timestep_sinusoid needs an even dim, got {dim}.")
  half = dim // 2
  # Host float64 frequencies, rounded once to fp32 (the reference builds them
  # in float64); only the product t * f is rounded in fp32.
  freqs = np.power(max_period, -np.arange(half, dtype=np.float64) / half)
  args = t.astype(jnp.float32)[..., None] * jnp.asarray(freqs, jnp.float32)
  parts = [jnp.cos(args), jnp.sin(args)]
  if not cos_first:
    parts.reverse()
  return jnp.concatenate(parts, axis=-1)
