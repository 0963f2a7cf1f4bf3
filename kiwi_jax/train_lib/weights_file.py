"""Model weights as one ``.safetensors`` file, by parameter name.

A trainer checkpoint is an Orbax directory whose metadata changes from run
to run. Weights meant to be kept in a repository and reproduced bit for bit
(the CPU demo's pretrained tiny base, ``kiwi_jax.tasks.demo_base``) are
written here instead: one safetensors file of ``{"/"-joined name: array}``
with no metadata, so the same weights always give the same bytes.
``config.model_init`` accepts such a file wherever it accepts a checkpoint
(``checkpointing.read_weights``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from etils import epath

from kiwi_jax.utils import atomic

SUFFIX = ".safetensors"


def is_weights_file(path: str | epath.PathLike) -> bool:
  return str(path).endswith(SUFFIX)


def to_bytes(flat: dict[str, Any]) -> bytes:
  """The file's bytes for ``{name: array}`` (deterministic: sorted names,
  no metadata)."""
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top

  arrays = {
    name: np.ascontiguousarray(np.asarray(flat[name])) for name in sorted(flat)
  }
  return save(arrays)


def save(path: str | epath.PathLike, flat: dict[str, Any]) -> None:
  """Writes ``{name: array}`` to ``path`` atomically."""
  atomic.write_bytes(epath.Path(path), to_bytes(flat))


def load(path: str | epath.PathLike) -> dict[str, np.ndarray]:
  """``{name: array}`` of a weights file (host numpy arrays)."""
  from safetensors.numpy import load as load_bytes  # pylint: disable=g-import-not-at-top

  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"No weights file {path}.")
  try:
    return load_bytes(path.read_bytes())
  except Exception as e:  # safetensors raises its own error types
    raise ValueError(f"{path} is not a safetensors weights file: {e}") from e


def check_fits(
  saved: dict[str, tuple[int, ...]],
  want: dict[str, Any],
  *,
  fresh: Callable[[list[str]], dict[str, Any]] | None,
  what: str,
  label: str,
) -> dict[str, Any]:
  """Checks saved names and shapes against ``want``; returns the fresh
  values ``fresh`` gives for missing names.

  Raises:
    ValueError: naming every missing, unexpected and mis-shaped name
      (``"<name>: <label> (shape) vs model (shape)"``) in one message.
  """
  missing = sorted(set(want) - set(saved))
  fresh_values = fresh(missing) if (fresh is not None and missing) else {}
  missing = [n for n in missing if n not in fresh_values]
  unexpected = sorted(set(saved) - set(want))
  misshaped = sorted(
    f"{n}: {label} {tuple(saved[n])} vs model {tuple(want[n].shape)}"
    for n in set(want) & set(saved)
    if tuple(saved[n]) != tuple(want[n].shape)
  )
  if missing or unexpected or misshaped:
    raise ValueError(
      f"{what} does not fit the model: missing {missing}, "
      f"unexpected {unexpected}, mis-shaped {misshaped}."
    )
  return fresh_values


def read(
  path: str | epath.PathLike,
  want: dict[str, Any],
  *,
  fresh: Callable[[list[str]], dict[str, Any]] | None = None,
  what: str = "model_init",
) -> dict[str, jax.Array]:
  """The weights of ``path`` for the model ``want`` describes.

  Missing, unexpected and mis-shaped names are listed together; values
  are cast to ``want``'s dtypes and placed in its shardings.

  Args:
    path: a ``.safetensors`` file (:func:`save`).
    want: ``{name: ShapeDtypeStruct}`` (with ``.sharding`` where sharded).
    fresh: ``missing names -> {name: array}`` for parameters that may start
      fresh (LoRA factors); names it does not return stay missing.
    what: what the file is called in the error message.
  """
  saved = load(path)
  fresh_values = check_fits(
    {n: v.shape for n, v in saved.items()},
    want,
    fresh=fresh,
    what=f"{what} {path}",
    label="file",
  )
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  out = {}
  for name, value in saved.items():
    target = want[name]
    out[name] = jax.device_put(
      value.astype(target.dtype), getattr(target, "sharding", None) or default
    )
  return {**out, **fresh_values}
