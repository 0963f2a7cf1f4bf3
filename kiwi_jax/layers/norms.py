"""RMSNorm and LayerNorm with fp32 statistics.

Both follow the reference's cast order: normalise in fp32, cast back to the
input dtype, then apply the (affine) weight in the compute dtype. That is what
Wan's ``RMSNorm`` (``self.norm(x.float()).type_as(x) * self.weight``) and
Qwen2's ``RMSNorm`` (``weight * hidden.to(input_dtype)``) do.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax import sharding


class RMSNorm(nnx.Module):
  """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis."""

  def __init__(
    self,
    dim: int,
    *,
    eps: float = 1e-6,
    use_weight: bool = True,
    axis_name: str | None = "norm",
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs  # Deterministic init (ones); kept for a uniform signature.
    self.eps = eps
    self.dtype = dtype
    self.weight = (
      sharding.param(
        jax.nn.initializers.ones, None, (dim,), param_dtype, (axis_name,)
      )
      if use_weight
      else None
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[..., dim] -> same shape, in ``dtype`` (default: x's)."""
    out_dtype = self.dtype or x.dtype
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
    y = y.astype(x.dtype)
    if self.weight is not None:
      y = y.astype(out_dtype) * self.weight[...].astype(out_dtype)
    return y.astype(out_dtype)


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis; statistics and affine in fp32."""

  def __init__(
    self,
    dim: int,
    *,
    eps: float = 1e-6,
    use_scale: bool = True,
    use_bias: bool = True,
    axis_name: str | None = "norm",
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    self.eps = eps
    self.dtype = dtype
    self.weight = (
      sharding.param(
        jax.nn.initializers.ones, None, (dim,), param_dtype, (axis_name,)
      )
      if use_scale
      else None
    )
    self.bias = (
      sharding.param(
        jax.nn.initializers.zeros, None, (dim,), param_dtype, (axis_name,)
      )
      if use_bias
      else None
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[..., dim] -> same shape, in ``dtype`` (default: x's)."""
    out_dtype = self.dtype or x.dtype
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, -1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    if self.weight is not None:
      y = y * self.weight[...].astype(jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(out_dtype)
