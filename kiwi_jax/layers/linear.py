"""Dense projection whose parameters carry logical axis names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax import sharding

# PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the
# weight (kaiming_uniform with a=sqrt(5)) and the bias. Training from scratch
# then starts where the reference does.
torch_linear_init = jax.nn.initializers.variance_scaling(
  1.0 / 3.0, "fan_in", "uniform"
)


def torch_bias_init(fan_in: int):
  bound = 1.0 / max(fan_in, 1) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Dense(nnx.Module):
  """``y = x @ kernel + bias`` with ``kernel: [in, out]`` (PyTorch's weight
  transposed) and logical axis names on both parameters.

  Attributes:
    kernel: float[in_features, out_features], axes ``kernel_axes``.
    bias: float[out_features] or None, axis ``kernel_axes[-1]``.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    use_bias: bool = True,
    kernel_axes: Sequence[str | None] = (None, None),
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    kernel_init: Any = torch_linear_init,
    bias_init: Any = None,
    precision: Any = None,
    rngs: nnx.Rngs,
  ):
    self.in_features = in_features
    self.out_features = out_features
    self.dtype = dtype
    self.precision = precision
    self.kernel = sharding.param(
      kernel_init,
      rngs.params(),
      (in_features, out_features),
      param_dtype,
      kernel_axes,
    )
    if use_bias:
      bias_init = bias_init or torch_bias_init(in_features)
      self.bias = sharding.param(
        bias_init,
        rngs.params(),
        (out_features,),
        param_dtype,
        (kernel_axes[-1],),
      )
    else:
      self.bias = None

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[..., in_features] -> float[..., out_features]."""
    kernel = self.kernel[...].astype(self.dtype)
    y = jnp.dot(x.astype(self.dtype), kernel, precision=self.precision)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y
