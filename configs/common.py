"""Pieces shared by every config file.

``parse_arg`` turns the text after the colon of ``--config=file.py:ARG`` into
a ConfigDict, big_vision style::

  parse_arg("stage=2,variant=14b,runlocal", stage=1, variant="5b",
            runlocal=False)
  -> {"stage": 2, "variant": "14b", "runlocal": True}

Bare words are booleans set to True; values are converted to the type of the
default (so ``stage=2`` is an int); unknown keys fail with the valid ones
listed.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from kiwi_jax import sharding


def _convert(value: str, default: Any, key: str) -> Any:
  if isinstance(default, bool):
    low = value.lower()
    if low in ("1", "true", "yes", "on", ""):
      return True
    if low in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"Config arg {key}={value!r} is not a boolean.")
  if isinstance(default, int):
    return int(value)
  if isinstance(default, float):
    return float(value)
  return value


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``"k=v,k2=v2,flag"`` against ``defaults``."""
  out = dict(defaults)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"Unknown config arg {key!r}; valid args: "
                       f"{sorted(defaults)}.")
    out[key] = _convert(value.strip(), defaults[key],
                        key) if "=" in item else _convert("", defaults[key],
                                                          key)
  return ml_collections.ConfigDict(out)


def mesh_config(**sizes: int) -> ml_collections.ConfigDict:
  """``config.mesh``: sizes per mesh axis; ``-1`` fills the rest."""
  base = {name: 1 for name in sharding.MESH_AXES}
  base["data"] = -1
  base.update(sizes)
  return ml_collections.ConfigDict(base)


def sharding_rules() -> list[tuple[str, Any]]:
  """The default logical-axis rules as a config-editable list."""
  return [(name, axes) for name, axes in sharding.LOGICAL_AXIS_RULES]


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks the config so that a mistyped override fails with a hint."""
  config.lock()
  return config
