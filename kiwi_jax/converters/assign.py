"""Generic, loud assignment of PyTorch tensors into an nnx state.

A converter is data: a list of :class:`KeyMap` (torch key -> JAX state path,
with a :class:`Transform` and, for scanned blocks, a layer index) built by a
per-model function. :func:`assign` then

1. checks the whole plan before reading any tensor: every mapped torch key
   exists, has the shape the JAX parameter expects (after the transform),
   every state leaf is covered, and no checkpoint key is left unused (except
   those matching ``ignore_unused``); all problems are raised together in
   one :class:`CheckpointMismatchError`;
2. builds each parameter with ``jax.make_array_from_callback`` straight into
   its sharding (from the parameter's logical axes on ``mesh``), reading one
   tensor, or one layer slice of a stacked parameter, at a time.

:func:`export` is the inverse (JAX -> torch layout), one tensor at a time.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.converters.checkpoint_io import Checkpoint
from kiwi_jax.utils import atomic

Path = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Transform:
  """A layout change torch -> jax (``forward``) and back (``inverse``).

  ``shape`` maps a torch shape to the jax shape, so plans are checked before
  any tensor is read.
  """

  name: str
  forward: Callable[[np.ndarray], np.ndarray]
  inverse: Callable[[np.ndarray], np.ndarray]
  shape: Callable[[tuple[int, ...]], tuple[int, ...]]


IDENTITY = Transform("identity", lambda x: x, lambda x: x, lambda s: s)

# nn.Linear weight (out, in) -> Dense kernel (in, out).
LINEAR = Transform(
  "linear", lambda x: x.T, lambda x: x.T, lambda s: tuple(reversed(s))
)


def _conv_fwd(x):
  # (O, I, *k) -> (*k, I, O)
  nk = x.ndim - 2
  return np.transpose(x, tuple(range(2, 2 + nk)) + (1, 0))


def _conv_inv(x):
  nk = x.ndim - 2
  return np.transpose(x, (nk + 1, nk) + tuple(range(nk)))


CONV = Transform(
  "conv", _conv_fwd, _conv_inv, lambda s: tuple(s[2:]) + (s[1], s[0])
)


def reshape(torch_shape: Sequence[int], jax_shape: Sequence[int]) -> Transform:
  ts, js = tuple(torch_shape), tuple(jax_shape)

  def check(s):
    if tuple(s) != ts:
      return ("reshape-expects",) + ts  # forces a shape mismatch report
    return js

  return Transform(
    f"reshape{ts}->{js}",
    lambda x: x.reshape(js),
    lambda x: x.reshape(ts),
    check,
  )


def compose(first: Transform, second: Transform) -> Transform:
  """``second(first(x))`` and its inverse."""
  return Transform(
    f"{first.name}+{second.name}",
    lambda x: second.forward(first.forward(x)),
    lambda x: first.inverse(second.inverse(x)),
    lambda s: second.shape(first.shape(s)),
  )


@dataclasses.dataclass(frozen=True)
class KeyMap:
  """One torch tensor -> one JAX parameter (or one layer of a stacked one)."""

  torch_key: str
  jax_path: Path
  transform: Transform = IDENTITY
  layer: int | None = None


class CheckpointMismatchError(ValueError):
  """The checkpoint and the model disagree; lists every problem at once."""

  def __init__(
    self,
    source: str,
    missing: Sequence[str],
    unexpected: Sequence[str],
    misshaped: Sequence[str],
    uncovered: Sequence[str] = (),
  ):
    self.missing, self.unexpected = list(missing), list(unexpected)
    self.misshaped, self.uncovered = list(misshaped), list(uncovered)
    lines = [f"Checkpoint {source} does not match the model:"]
    for title, items in (
      ("missing keys", missing),
      ("unexpected keys", unexpected),
      ("mis-shaped keys", misshaped),
      ("model parameters with no source", uncovered),
    ):
      if items:
        lines.append(f"  {len(items)} {title}:")
        lines.extend(f"    {k}" for k in items[:50])
        if len(items) > 50:
          lines.append(f"    ... and {len(items) - 50} more")
    super().__init__("\n".join(lines))


def path_str(path: Path) -> str:
  return "/".join(str(p) for p in path)


def _flat_leaves(state) -> dict[Path, Any]:
  """State path -> Variable (abstract or concrete)."""
  return {tuple(p): v for p, v in nnx.to_flat_state(state)}


def check_plan(
  abstract_state,
  keymaps: Sequence[KeyMap],
  ckpt: Checkpoint,
  ignore_unused: Iterable[str] = (),
) -> None:
  """Raises :class:`CheckpointMismatchError` unless the plan is complete."""
  leaves = _flat_leaves(abstract_state)
  missing, misshaped, bad_paths = [], [], []
  covered: dict[Path, set[int | None]] = {}
  for km in keymaps:
    if km.jax_path not in leaves:
      bad_paths.append(
        f"{km.torch_key} -> {path_str(km.jax_path)} (no such model parameter)"
      )
      continue
    covered.setdefault(km.jax_path, set()).add(km.layer)
    if km.torch_key not in ckpt:
      missing.append(km.torch_key)
      continue
    want = tuple(leaves[km.jax_path].get_value().shape)
    if km.layer is not None:
      want = want[1:]
    got = km.transform.shape(ckpt.shape(km.torch_key))
    if tuple(got) != want:
      misshaped.append(
        f"{km.torch_key}: checkpoint {ckpt.shape(km.torch_key)}"
        f" -> {tuple(got)}, model {path_str(km.jax_path)} "
        f"expects {want}"
      )
  uncovered = list(bad_paths)
  for path, var in leaves.items():
    layers = covered.get(path)
    if layers is None:
      uncovered.append(path_str(path))
    elif None not in layers:
      n = var.get_value().shape[0]
      gaps = sorted(set(range(n)) - layers)
      if gaps:
        uncovered.append(f"{path_str(path)} layers {gaps}")
  used = {km.torch_key for km in keymaps}
  ignore = [re.compile(p) for p in ignore_unused]
  unexpected = sorted(
    k for k in ckpt if k not in used and not any(r.fullmatch(k) for r in ignore)
  )
  if missing or unexpected or misshaped or uncovered:
    raise CheckpointMismatchError(
      ckpt.source, sorted(missing), unexpected, misshaped, uncovered
    )


def assign(
  abstract_state,
  keymaps: Sequence[KeyMap],
  ckpt: Checkpoint,
  *,
  dtype: Any = None,
  mesh: jax.sharding.Mesh | None = None,
  ignore_unused: Iterable[str] = (),
):
  """Fills ``abstract_state`` (from ``nnx.split(nnx.eval_shape(...))``).

  Args:
    abstract_state: nnx state with ``ShapeDtypeStruct`` (or array) leaves.
    keymaps: the conversion plan.
    ckpt: the source checkpoint.
    dtype: cast every parameter to this dtype (default: the model's).
    mesh: place each parameter by its logical axes on this mesh (default:
      the first local device, unsharded).
    ignore_unused: regexes of checkpoint keys that may stay unused.

  Returns:
    A concrete state, ready for ``nnx.merge(graphdef, state)``.
  """
  check_plan(abstract_state, keymaps, ckpt, ignore_unused)
  by_path: dict[Path, list[KeyMap]] = {}
  for km in keymaps:
    by_path.setdefault(km.jax_path, []).append(km)
  leaves = _flat_leaves(abstract_state)
  out = []
  for path, var in leaves.items():
    abstract = var.get_value()
    target_dtype = dtype or abstract.dtype
    if mesh is not None:
      spec = sharding.logical_to_spec(
        sharding.variable_logical_axes(var), abstract.shape, mesh
      )
      shard = jax.sharding.NamedSharding(mesh, spec)
    else:
      shard = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    array = _build(abstract.shape, target_dtype, shard, by_path[path], ckpt)
    out.append((path, var.replace(array)))
  return nnx.from_flat_state(out)


def _build(shape, dtype, shard, kms: list[KeyMap], ckpt: Checkpoint):
  whole = [km for km in kms if km.layer is None]
  if whole:
    km = whole[0]
    value = km.transform.forward(ckpt.read(km.torch_key))
    host = np.asarray(value).astype(dtype)
    return jax.make_array_from_callback(shape, shard, lambda idx: host[idx])
  by_layer = {km.layer: km for km in kms}

  def callback(idx):
    layer_slice = idx[0] if idx else slice(None)
    layers = range(shape[0])[layer_slice]
    rest = idx[1:]
    parts = [
      np.asarray(
        by_layer[i].transform.forward(ckpt.read(by_layer[i].torch_key))
      )[rest].astype(dtype)
      for i in layers
    ]
    return np.stack(parts)

  return jax.make_array_from_callback(shape, shard, callback)


def export(
  state, keymaps: Sequence[KeyMap]
) -> Iterator[tuple[str, np.ndarray]]:
  """Yields ``(torch_key, array)`` in torch layout, one tensor at a time."""
  leaves = _flat_leaves(state)
  for km in keymaps:
    value = leaves[km.jax_path].get_value()
    if km.layer is not None:
      value = value[km.layer]
    yield km.torch_key, km.transform.inverse(np.asarray(value))


def save_safetensors(
  items: Iterable[tuple[str, np.ndarray]],
  path: str | os.PathLike,
  metadata: dict[str, str] | None = None,
) -> pathlib.Path:
  """Writes tensors to ``path`` atomically (temp file, then rename)."""
  import ml_dtypes
  import torch
  from safetensors.torch import save_file

  def to_torch(a):
    a = np.array(a, copy=True, order="C")  # torch needs a writable buffer
    if a.dtype == ml_dtypes.bfloat16:
      return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)

  tensors = {k: to_torch(v) for k, v in items}
  path = pathlib.Path(path)
  with atomic.atomic_path(path, suffix=".tmp") as tmp:
    save_file(tensors, tmp, metadata=metadata)
  return path
