"""Feed-forward blocks: GELU(tanh) MLP (Wan FFN, Kiwi connectors) and SwiGLU
(Qwen2 / Qwen2.5-VL)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.layers.lora import dense_or_lora


class GeluTanhMLP(nnx.Module):
  """``fc2(gelu_tanh(fc1(x)))``: PyTorch ``Sequential(Linear, GELU('tanh'),
  Linear)``, whose keys are ``.0`` (fc1) and ``.2`` (fc2).

  ``lora_rank`` > 0 puts LoRA on both linears (the Wan 14B DiT's
  ``ffn.0`` / ``ffn.2`` LoRA); 0 builds plain ``Dense`` layers.
  """

  def __init__(
    self,
    in_features: int,
    hidden: int,
    out_features: int,
    *,
    in_axis: str | None = "embed",
    hidden_axis: str | None = "mlp",
    out_axis: str | None = "embed",
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    zero_init_out: bool = False,
    lora_rank: int = 0,
    rngs: nnx.Rngs,
  ):
    self.fc1 = dense_or_lora(
      in_features,
      hidden,
      rank=lora_rank,
      kernel_axes=(in_axis, hidden_axis),
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )
    zeros = jax.nn.initializers.zeros
    extra = dict(kernel_init=zeros, bias_init=zeros) if zero_init_out else {}
    self.fc2 = dense_or_lora(
      hidden,
      out_features,
      rank=lora_rank,
      kernel_axes=(hidden_axis, out_axis),
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
      **extra,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jax.nn.gelu(self.fc1(x), approximate=True)
    h = sharding.constrain(
      h, ("act_batch",) + (None,) * (h.ndim - 2) + ("act_mlp",)
    )
    return self.fc2(h)


class SwiGLU(nnx.Module):
  """``down_proj(silu(gate_proj(x)) * up_proj(x))`` (Qwen2 MLP).

  ``lora_rank`` > 0 puts LoRA on the projections named in ``lora_targets``
  (``gate_proj``, ``up_proj``, ``down_proj``; the Kiwi 14B scripts use all
  three); the others stay plain ``Dense`` layers.
  """

  PROJECTIONS = ("gate_proj", "up_proj", "down_proj")

  def __init__(
    self,
    dim: int,
    hidden: int,
    *,
    use_bias: bool = False,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    lora_rank: int = 0,
    lora_targets: tuple[str, ...] = (),
    rngs: nnx.Rngs,
  ):
    unknown = set(lora_targets) - set(self.PROJECTIONS)
    if unknown:
      raise ValueError(
        f"SwiGLU lora_targets {sorted(unknown)} are not among "
        f"{self.PROJECTIONS}."
      )

    def proj(name, n_in, n_out, axes):
      rank = lora_rank if name in lora_targets else 0
      return dense_or_lora(
        n_in,
        n_out,
        rank=rank,
        kernel_axes=axes,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
      )

    self.gate_proj = proj("gate_proj", dim, hidden, ("embed", "mlp"))
    self.up_proj = proj("up_proj", dim, hidden, ("embed", "mlp"))
    self.down_proj = proj("down_proj", hidden, dim, ("mlp", "embed"))

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
    h = sharding.constrain(
      h, ("act_batch",) + (None,) * (h.ndim - 2) + ("act_mlp",)
    )
    return self.down_proj(h)
