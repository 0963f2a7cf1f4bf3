"""Rematerialised calls of read-only NNX blocks."""

from __future__ import annotations

import jax
from flax import nnx


def remat_call(module: nnx.Module, *args):
  """``module(*args)`` under ``jax.checkpoint``.

  The block is split into a pure function of its state, so the backward
  pass recomputes its activations instead of storing them; nothing in the
  block is mutated (NNX's own ``nnx.remat`` would write the state back,
  which fails when the model was merged inside an outer transform).
  Non-array arguments (e.g. ``None``) are passed through as constants.
  """
  graphdef, state = nnx.split(module)
  is_array = [isinstance(a, jax.Array) for a in args]
  arrays = [a for a, keep in zip(args, is_array) if keep]

  def pure(state, *arrays):
    it = iter(arrays)
    full = [next(it) if keep else a for a, keep in zip(args, is_array)]
    return nnx.merge(graphdef, state)(*full)

  return jax.checkpoint(pure)(state, *arrays)
