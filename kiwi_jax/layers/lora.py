"""LoRA: a :class:`~kiwi_jax.layers.Dense` with a low-rank update.

``y = x @ kernel + bias + scale * (x @ lora_a) @ lora_b`` with separate
``nnx.LoRAParam`` factors, so a training stage can update the LoRA factors
alone (``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` or an
``nnx.state(model, nnx.LoRAParam)`` split). ``lora_a`` starts like a torch
``nn.Linear`` weight (kaiming-uniform, as peft does) and ``lora_b`` at zero,
so adding LoRA does not change the model; the scale is 1 (Kiwi-Edit trains
with ``lora_alpha == rank``, reference §9 item 16).

Used by the Qwen decoder (attention and MLP projections) and the Wan DiT
blocks (attention and FFN, the 14B scripts' DiT LoRA). Inside a layer stack
built with ``nnx.vmap`` the factors get the leading layer axis too, and
:func:`merge_lora` / :func:`unmerge_lora` work per layer (batched matmul).

:func:`merge_lora` folds ``scale * a @ b`` into the kernel and
:func:`unmerge_lora` takes it out again (for export and fast inference).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.layers.linear import Dense, torch_linear_init


class LoRADense(Dense):
  """A :class:`~kiwi_jax.layers.Dense` with an optional low-rank update.

  Attributes:
    lora_a: float[in, rank] (``nnx.LoRAParam``) or None when rank is 0.
    lora_b: float[rank, out] (``nnx.LoRAParam``), zero at init.
    merged: whether ``scale * a @ b`` is currently folded into ``kernel``.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    rank: int = 0,
    scale: float = 1.0,
    rngs: nnx.Rngs,
    **kwargs: Any,
  ):
    super().__init__(in_features, out_features, rngs=rngs, **kwargs)
    self.rank = rank
    self.scale = scale
    self.merged = False
    if rank:
      axes = tuple(self.kernel.get_metadata()[sharding.LOGICAL_AXES_KEY])
      dtype = self.kernel[...].dtype
      self.lora_a = nnx.LoRAParam(
        torch_linear_init(rngs.params(), (in_features, rank), dtype),
        **{sharding.LOGICAL_AXES_KEY: (axes[0], "lora_rank")},
      )
      self.lora_b = nnx.LoRAParam(
        jnp.zeros((rank, out_features), dtype),
        **{sharding.LOGICAL_AXES_KEY: ("lora_rank", axes[1])},
      )
    else:
      self.lora_a = self.lora_b = None

  def delta(self) -> jax.Array:
    """float[..., in, out]: the update ``scale * a @ b`` in fp32 (a leading
    layer axis when the factors are stacked)."""
    a = self.lora_a[...].astype(jnp.float32)
    b = self.lora_b[...].astype(jnp.float32)
    return self.scale * jnp.matmul(a, b)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = super().__call__(x)
    if self.lora_a is None or self.merged:
      return y
    h = jnp.dot(x.astype(self.dtype), self.lora_a[...].astype(self.dtype))
    return y + self.scale * jnp.dot(h, self.lora_b[...].astype(self.dtype))


def dense_or_lora(
  in_features: int,
  out_features: int,
  *,
  rank: int,
  rngs: nnx.Rngs,
  **kwargs: Any,
) -> Dense:
  """A plain :class:`Dense` when ``rank`` is 0 (the parameter tree and the
  random stream of a model without LoRA stay exactly as they were), else a
  :class:`LoRADense`."""
  if rank:
    return LoRADense(in_features, out_features, rank=rank, rngs=rngs, **kwargs)
  return Dense(in_features, out_features, rngs=rngs, **kwargs)


def lora_layers(model: nnx.Module) -> Iterator[LoRADense]:
  """Every :class:`LoRADense` with LoRA factors inside ``model``."""
  for _, node in nnx.iter_graph(model):
    if isinstance(node, LoRADense) and node.lora_a is not None:
      yield node


def merge_lora(model: nnx.Module) -> nnx.Module:
  """Folds each LoRA update into its kernel, in place; returns ``model``."""
  for layer in lora_layers(model):
    if not layer.merged:
      k = layer.kernel[...]
      layer.kernel[...] = (k.astype(jnp.float32) + layer.delta()).astype(
        k.dtype
      )
      layer.merged = True
  return model


def unmerge_lora(model: nnx.Module) -> nnx.Module:
  """Undoes :func:`merge_lora`, in place; returns ``model``."""
  for layer in lora_layers(model):
    if layer.merged:
      k = layer.kernel[...]
      layer.kernel[...] = (k.astype(jnp.float32) - layer.delta()).astype(
        k.dtype
      )
      layer.merged = False
  return model
