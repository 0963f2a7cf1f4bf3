"""Two caches under ``--cache_dir``: JAX's persistent compilation cache
(``xla/``) and the plan's own rows (``rows/<key>.json``), keyed by the
config, the slice, the mesh, the program and the jax / libtpu versions, so
that a second identical plan reads its rows without compiling.

With jax 0.10.2 and libtpu 0.0.42.1 the persistent cache writes entries for
compile-only devices but cannot read them back ("PjRtCompiler must be
constructed with a Client to call DeserializeLoadedExecutable"): a rerun
compiles again, with a warning that is silenced here. The rows are what
make a second plan fast."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import warnings
from typing import Any

import jax

from kiwi_jax.utils import atomic

# Bump when the rows' fields or their meaning change (2: collectives_in_loops,
# and TPU all-reduce-scatter fusions count as reduce-scatters).
ROW_VERSION = 2


def default_dir() -> pathlib.Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return pathlib.Path(base) / "kiwi_jax" / "plan"


def enable_compilation_cache(cache_dir: pathlib.Path) -> None:
  """JAX's persistent cache in ``cache_dir/xla`` for every compile."""
  path = cache_dir / "xla"
  path.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  warnings.filterwarnings(
    "ignore",
    message="Error reading persistent compilation cache entry",
    category=UserWarning,
  )


def row_key(**parts: Any) -> str:
  """A stable hash of JSON-able ``parts`` (with the row version)."""
  text = json.dumps(
    {"row_version": ROW_VERSION, **parts}, sort_keys=True, default=str
  )
  return hashlib.sha256(text.encode()).hexdigest()[:32]


class RowCache:
  """Plan rows on disk (None directory: nothing is cached)."""

  def __init__(self, cache_dir: pathlib.Path | None):
    self.dir = None if cache_dir is None else cache_dir / "rows"

  def get(self, key: str) -> dict[str, Any] | None:
    if self.dir is None:
      return None
    path = self.dir / f"{key}.json"
    try:
      return json.loads(path.read_text())
    except (OSError, ValueError):
      return None

  def put(self, key: str, row: dict[str, Any]) -> None:
    if self.dir is None:
      return
    self.dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(
      self.dir / f"{key}.json", json.dumps(row, indent=1, sort_keys=True)
    )


__all__ = [
  "ROW_VERSION",
  "RowCache",
  "default_dir",
  "enable_compilation_cache",
  "row_key",
]
