"""Lazy, read-only access to PyTorch checkpoints, one tensor at a time.

:func:`open_checkpoint` accepts
  * one ``.safetensors`` file,
  * a directory of ``.safetensors`` shards (with or without an
    ``*.safetensors.index.json``),
  * a ``.pth`` / ``.pt`` / ``.bin`` file (``torch.load`` with ``mmap=True`` and
    ``weights_only=True``), optionally nested under ``state_dict``,
    ``model_state``, ``model`` or ``module``.

Nothing is read until :meth:`Checkpoint.read` asks for a key, so converting a
14B model holds one tensor in host memory at a time. bf16 tensors come back as
``ml_dtypes.bfloat16`` numpy arrays (numpy has no bf16 of its own).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

_NESTING_KEYS = ("state_dict", "model_state", "model", "module", "ema")


class CheckpointError(ValueError):
  """A checkpoint cannot be opened or read."""


def _torch_to_numpy(tensor) -> np.ndarray:
  import torch

  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


class Checkpoint(Mapping):
  """A read-only mapping ``key -> np.ndarray`` that reads lazily.

  Attributes:
    source: where the tensors come from (for error messages).
  """

  def __init__(
    self,
    source: str,
    index: dict[str, Any],
    reader,
    strip_prefixes: Iterable[str] = (),
  ):
    self.source = source
    self._reader = reader  # (raw_key) -> torch tensor or safetensors slice
    self._raw_of: dict[str, str] = {}
    for raw in index:
      key = raw
      for prefix in strip_prefixes:
        if key.startswith(prefix):
          key = key[len(prefix) :]
          break
      if key in self._raw_of:
        raise CheckpointError(
          f"{source}: keys {self._raw_of[key]!r} and {raw!r} collide after "
          f"stripping prefixes {tuple(strip_prefixes)}."
        )
      self._raw_of[key] = raw
    self._meta = {k: index[raw] for k, raw in self._raw_of.items()}

  # Mapping interface (reads on __getitem__).
  def __getitem__(self, key: str) -> np.ndarray:
    return self.read(key)

  def __iter__(self) -> Iterator[str]:
    return iter(self._raw_of)

  def __len__(self) -> int:
    return len(self._raw_of)

  def __contains__(self, key: object) -> bool:
    return key in self._raw_of

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._meta[self._check(key)]["shape"])

  def dtype(self, key: str) -> str:
    return str(self._meta[self._check(key)]["dtype"])

  def read(self, key: str) -> np.ndarray:
    """The whole tensor as numpy (fp32/fp16/bf16 kept as stored)."""
    return np.asarray(self._reader(self._raw_of[self._check(key)], None))

  def read_slice(self, key: str, index: tuple[slice | int, ...]) -> np.ndarray:
    """Part of a tensor; safetensors reads only that part from disk."""
    return np.asarray(self._reader(self._raw_of[self._check(key)], index))

  def _check(self, key: str) -> str:
    if key not in self._raw_of:
      raise KeyError(f"{self.source}: no tensor named {key!r}.")
    return key

  def with_prefix_stripped(self, prefix: str) -> Checkpoint:
    """A view of the keys that start with ``prefix``, without it."""
    index = {
      k[len(prefix) :]: self._meta[k]
      for k in self._raw_of
      if k.startswith(prefix)
    }
    raw = {
      k[len(prefix) :]: self._raw_of[k]
      for k in self._raw_of
      if k.startswith(prefix)
    }
    view = Checkpoint(
      f"{self.source}[{prefix}*]", index, lambda r, i: self._reader(raw[r], i)
    )
    return view


def _safetensors_files(path: pathlib.Path) -> list[pathlib.Path]:
  if path.is_file():
    return [path]
  index_files = sorted(path.glob("*.safetensors.index.json"))
  if index_files:
    weight_map = json.loads(index_files[0].read_text())["weight_map"]
    return sorted({path / f for f in weight_map.values()})
  return sorted(path.glob("*.safetensors"))


def _open_safetensors(
  files: list[pathlib.Path], source: str, strip_prefixes
) -> Checkpoint:
  from safetensors import safe_open

  handles, index, owner = [], {}, {}
  for f in files:
    if not f.exists():
      raise CheckpointError(f"{source}: shard {f} is missing.")
    try:
      h = safe_open(str(f), framework="pt")
    except Exception as e:  # corrupt header, wrong format
      raise CheckpointError(
        f"{f}: not a readable safetensors file ({e})."
      ) from e
    handles.append(h)
    for key in h.keys():
      sl = h.get_slice(key)
      if key in index:
        raise CheckpointError(f"{source}: key {key!r} appears in two shards.")
      index[key] = {"shape": tuple(sl.get_shape()), "dtype": sl.get_dtype()}
      owner[key] = h

  def reader(raw_key, item):
    h = owner[raw_key]
    if item is None:
      return _torch_to_numpy(h.get_tensor(raw_key))
    return _torch_to_numpy(h.get_slice(raw_key)[item])

  return Checkpoint(source, index, reader, strip_prefixes)


def _open_torch_file(
  path: pathlib.Path, strip_prefixes, nesting: str | None
) -> Checkpoint:
  import torch

  try:
    obj = torch.load(
      str(path), map_location="cpu", mmap=True, weights_only=True
    )
  except Exception as e:
    raise CheckpointError(
      f"{path}: cannot be loaded by torch.load ({e})."
    ) from e
  keys = (nesting,) if nesting else _NESTING_KEYS
  while isinstance(obj, Mapping) and not any(
    hasattr(v, "shape") for v in obj.values()
  ):
    inner = next((obj[k] for k in keys if k in obj), None)
    if inner is None:
      break
    obj = inner
  if not isinstance(obj, Mapping):
    raise CheckpointError(f"{path}: expected a state dict, got {type(obj)}.")
  tensors = {k: v for k, v in obj.items() if hasattr(v, "shape")}
  index = {
    k: {"shape": tuple(v.shape), "dtype": str(v.dtype)}
    for k, v in tensors.items()
  }

  def reader(raw_key, item):
    t = tensors[raw_key]
    return _torch_to_numpy(t if item is None else t[item])

  return Checkpoint(str(path), index, reader, strip_prefixes)


def open_checkpoint(
  path: str | os.PathLike,
  strip_prefixes: Iterable[str] = (),
  nesting: str | None = None,
) -> Checkpoint:
  """Opens a checkpoint lazily; see the module docstring for formats.

  Args:
    path: file or directory.
    strip_prefixes: prefixes removed from keys (first match wins), e.g.
      ``("model.", "dit.")``.
    nesting: for ``.pth`` files, the key holding the state dict (default:
      any of ``state_dict``, ``model_state``, ``model``, ``module``, ``ema``).

  Raises:
    CheckpointError: missing path, unknown format or unreadable file.
  """
  p = pathlib.Path(path)
  if not p.exists():
    raise CheckpointError(f"Checkpoint {p} does not exist.")
  prefixes = tuple(strip_prefixes)
  if p.is_dir() or p.suffix == ".safetensors":
    files = _safetensors_files(p)
    if not files:
      raise CheckpointError(f"{p}: no .safetensors files found.")
    return _open_safetensors(files, str(p), prefixes)
  if p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
    return _open_torch_file(p, prefixes, nesting)
  raise CheckpointError(
    f"{p}: unknown checkpoint format {p.suffix!r}; expected .safetensors, "
    "a directory of them, or .pth/.pt/.bin."
  )


def common_prefix(keys: Iterable[str], candidates: Iterable[str]) -> str:
  """The candidate prefix shared by every key ('' if none is)."""
  keys = list(keys)
  for prefix in candidates:
    if keys and all(k.startswith(prefix) for k in keys):
      return prefix
  return ""


def matching(keys: Iterable[str], patterns: Iterable[str]) -> list[str]:
  regexes = [re.compile(p) for p in patterns]
  return [k for k in keys if any(r.fullmatch(k) for r in regexes)]
