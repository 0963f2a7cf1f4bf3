"""A toy two-layer model with logical axes, for sharding tests and demos."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.layers import Dense, RMSNorm


class ToyModel(nnx.Module):
  """``x + fc2(gelu(fc1(norm(x))))`` followed by a readout Dense."""

  def __init__(
    self, dim: int = 16, hidden: int = 32, out: int = 8, *, rngs: nnx.Rngs
  ):
    self.norm = RMSNorm(dim)
    self.fc1 = Dense(dim, hidden, kernel_axes=("embed", "mlp"), rngs=rngs)
    self.fc2 = Dense(hidden, dim, kernel_axes=("mlp", "embed"), rngs=rngs)
    self.readout = Dense(dim, out, kernel_axes=("embed", "vocab"), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[B, S, dim] -> float[B, S, out]."""
    x = sharding.constrain(x, ("act_batch", "act_seq", "act_embed"))
    h = jax.nn.gelu(self.fc1(self.norm(x)))
    h = sharding.constrain(h, ("act_batch", "act_seq", "act_mlp"))
    x = x + self.fc2(h)
    return self.readout(x)


def toy_loss(model: ToyModel, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(model(x) - y))
