"""Feed-forward blocks: GELU(tanh) MLP (Wan FFN, Kiwi connectors) and SwiGLU
(Qwen2 / Qwen2.5-VL)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.layers.linear import Dense


class GeluTanhMLP(nnx.Module):
  """``fc2(gelu_tanh(fc1(x)))``: PyTorch ``Sequential(Linear, GELU('tanh'),
  Linear)``, whose keys are ``.0`` (fc1) and ``.2`` (fc2)."""

  def __init__(self, in_features: int, hidden: int, out_features: int, *,
               in_axis: str | None = "embed", hidden_axis: str | None = "mlp",
               out_axis: str | None = "embed", dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, zero_init_out: bool = False,
               rngs: nnx.Rngs):
    self.fc1 = Dense(in_features, hidden, kernel_axes=(in_axis, hidden_axis),
                     dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    zeros = jax.nn.initializers.zeros
    extra = dict(kernel_init=zeros, bias_init=zeros) if zero_init_out else {}
    self.fc2 = Dense(hidden, out_features, kernel_axes=(hidden_axis, out_axis),
                     dtype=dtype, param_dtype=param_dtype, rngs=rngs, **extra)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jax.nn.gelu(self.fc1(x), approximate=True)
    h = sharding.constrain(h, ("act_batch",) + (None,) * (h.ndim - 2)
                           + ("act_mlp",))
    return self.fc2(h)


class SwiGLU(nnx.Module):
  """``down_proj(silu(gate_proj(x)) * up_proj(x))`` (Qwen2 MLP)."""

  def __init__(self, dim: int, hidden: int, *, use_bias: bool = False,
               dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
              rngs=rngs)
    self.gate_proj = Dense(dim, hidden, kernel_axes=("embed", "mlp"), **kw)
    self.up_proj = Dense(dim, hidden, kernel_axes=("embed", "mlp"), **kw)
    self.down_proj = Dense(hidden, dim, kernel_axes=("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
    h = sharding.constrain(h, ("act_batch",) + (None,) * (h.ndim - 2)
                           + ("act_mlp",))
    return self.down_proj(h)
