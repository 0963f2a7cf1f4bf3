"""Kiwi-Edit's learnable queries and MLLM -> DiT connectors.

Reference: ``QueryVector`` and the ``connetor`` / ``ref_connector``
``nn.Sequential`` of ``QwenVLMLLMEncoder`` in
``diffsynth/models/mllm_encoder.py`` (reference §1.7):

* a query set is one ``(N, mllm_hidden)`` parameter drawn from
  ``N(0, 1) * 0.02``; its rows replace the embeddings of the N
  ``<|object_ref_start|>`` placeholder tokens;
* a connector is ``Linear(mllm_hidden, dim) -> GELU(tanh) -> Linear(dim, dim)``
  whose last layer starts at zero, so a fresh connector feeds the DiT an
  all-zero context.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.layers import GeluTanhMLP

QUERY_INIT_STD = 0.02


def query_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """``torch.randn(N, D) * 0.02`` (``QueryVector.__init__``)."""
  return (jax.random.normal(key, shape, jnp.float32) * QUERY_INIT_STD).astype(
    dtype
  )


class LearnableQueries(nnx.Module):
  """One set of learnable queries (``QueryVector``).

  Attributes:
    q: float[num_queries, hidden]; logical axes ``("queries", "embed")``.
      Named ``q`` like the reference parameter (DiffSynth key ``*.q``).
  """

  def __init__(
    self,
    num_queries: int,
    hidden: int,
    *,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    if num_queries <= 0 or hidden <= 0:
      raise ValueError(
        f"LearnableQueries needs positive sizes, got "
        f"num_queries={num_queries}, hidden={hidden}."
      )
    self.num_queries = num_queries
    self.q = sharding.param(
      query_init,
      rngs.params(),
      (num_queries, hidden),
      param_dtype,
      ("queries", "embed"),
    )

  def __call__(self, dtype: Any = None) -> jax.Array:
    """Returns float[num_queries, hidden] (cast to ``dtype`` if given)."""
    q = self.q[...]
    return q if dtype is None else q.astype(dtype)


class Connector(GeluTanhMLP):
  """MLLM hidden states -> DiT context width (``connetor``/``ref_connector``).

  Children ``fc1`` / ``fc2`` are the reference's ``.0`` / ``.2``; ``fc2``
  starts at zero as in the reference.
  """

  def __init__(
    self,
    mllm_hidden: int,
    dim: int,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    super().__init__(
      mllm_hidden,
      dim,
      dim,
      in_axis="embed_in",
      hidden_axis="mlp",
      out_axis="embed",
      dtype=dtype,
      param_dtype=param_dtype,
      zero_init_out=True,
      rngs=rngs,
    )
    self.mllm_hidden = mllm_hidden
    self.dim = dim

  def __call__(self, hidden: jax.Array) -> jax.Array:
    """hidden: float[B, N, mllm_hidden] -> float[B, N, dim]."""
    if hidden.shape[-1] != self.mllm_hidden:
      raise ValueError(
        f"Connector expects features of width {self.mllm_hidden}, got "
        f"shape {tuple(hidden.shape)}."
      )
    out = super().__call__(hidden)
    return sharding.constrain(
      out, ("act_batch",) + (None,) * (out.ndim - 2) + ("act_embed",)
    )
