"""A whole plan: mesh on the slice's devices, programs, rows, cache."""

from __future__ import annotations

import datetime
import logging
import math
import pathlib
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh

from kiwi_jax import flops as flops_lib
from kiwi_jax import sharding
from kiwi_jax.plan import cache as cache_lib
from kiwi_jax.plan import measure, programs, topology
from kiwi_jax.plan.batches import DEFAULT_ASPECT

logger = logging.getLogger("kiwi_jax")


def parse_mesh(text: str) -> dict[str, int]:
  """``"fsdp=4,sequence=2"`` -> ``{"fsdp": 4, "sequence": 2}``.

  Raises:
    ValueError: a bad item or an unknown axis.
  """
  out = {}
  for item in (text or "").split(","):
    item = item.strip()
    if not item:
      continue
    name, sep, value = item.partition("=")
    name = name.strip()
    if not sep or name not in sharding.MESH_AXES:
      raise ValueError(
        f"--mesh item {item!r}: expected AXIS=SIZE with AXIS "
        f"one of {', '.join(sharding.MESH_AXES)}."
      )
    try:
      out[name] = int(value)
    except ValueError:
      raise ValueError(
        f"--mesh item {item!r}: {value!r} is not an integer."
      ) from None
  return out


def mesh_sizes(config: Any, override: dict[str, int] | None) -> dict:
  """The mesh axes: ``override`` (axes left out are 1) or the config's."""
  if override:
    return {name: int(override.get(name, 1)) for name in sharding.MESH_AXES}
  mesh_cfg = config.get("mesh", None)
  if mesh_cfg is not None and hasattr(mesh_cfg, "to_dict"):
    mesh_cfg = mesh_cfg.to_dict()
  return dict(mesh_cfg or {"data": -1})


def fitted_mesh_sizes(
  config: Any, override: dict[str, int] | None, device_count: int
) -> dict[str, int]:
  """``mesh_sizes`` resolved for ``device_count`` chips and, when the config
  sets ``fit_mesh_to_batch`` and ``--mesh`` is not given, fitted to the
  global batch ``kiwi.data.batch_size`` as the trainer fits it."""
  sizes = sharding.resolve_mesh_axes(mesh_sizes(config, override), device_count)
  # No --mesh parses to {} as well as None: both mean "the config's mesh".
  if not override and config.get("fit_mesh_to_batch", False):
    sizes = sharding.fit_batch_axes(sizes, int(config.kiwi.data.batch_size))
  return sizes


def slice_mesh(devices: Sequence[Any], sizes: dict[str, int]) -> Mesh:
  """``sharding.make_mesh``'s axes, devices placed by the slice's physical
  topology (``mesh_utils.create_device_mesh``) where it can."""
  listed = sharding.make_mesh(sizes, devices)  # validates, fills -1
  shape = tuple(listed.axis_sizes)
  try:
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top

    grid = mesh_utils.create_device_mesh(
      shape, list(devices), allow_split_physical_axes=True
    )
  except Exception as e:  # pylint: disable=broad-except
    logger.info("Physical device order unavailable (%s); list order.", e)
    return listed
  return Mesh(
    grid,
    sharding.MESH_AXES,
    axis_types=(AxisType.Auto,) * len(sharding.MESH_AXES),
  )


def select(available: Sequence[str], wanted: str) -> list[str]:
  """Program names from ``--programs`` (names, ``train``, ``edit`` or
  ``all``, comma-separated).

  Raises:
    ValueError: an item matches nothing.
  """
  out = []
  for item in (wanted or "all").split(","):
    item = item.strip()
    if not item:
      continue
    if item == "all":
      found = list(available)
    else:
      found = [n for n in available if n == item or n.startswith(item + "/")]
    if not found:
      raise ValueError(
        f"--programs item {item!r} matches no program; "
        f"programs: {', '.join(available)} (or train, edit, "
        "all)."
      )
    out += [n for n in found if n not in out]
  return out


def _commit() -> str | None:
  try:
    return (
      subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
        cwd=pathlib.Path(__file__).resolve().parent,
      ).stdout.strip()
      or None
    )
  except (OSError, subprocess.SubprocessError):
    return None


def plan(
  config: Any,
  config_name: str,
  tpu_slice: topology.TpuSlice,
  *,
  mesh_override: dict[str, int] | None = None,
  wanted: str = "all",
  cache_dir: pathlib.Path | None = None,
  scan_corrected: bool = True,
  aspect: tuple[int, int] = DEFAULT_ASPECT,
  on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
  """Compiles the selected programs for ``tpu_slice``; returns the plan."""
  devices = topology.devices(tpu_slice)
  sizes = fitted_mesh_sizes(config, mesh_override, len(devices))
  mesh = slice_mesh(devices, sizes)
  mesh_dict = dict(zip(mesh.axis_names, (int(s) for s in mesh.axis_sizes)))
  builders = programs.all_programs(config, mesh, aspect=aspect)
  names = select(list(builders), wanted)
  rows_cache = cache_lib.RowCache(cache_dir)
  if cache_dir is not None:
    cache_lib.enable_compilation_cache(cache_dir)
  versions = {"jax": jax.__version__, "libtpu": topology.libtpu_version()}
  peak = flops_lib.peak_flops_per_chip(devices[0])
  rows = []
  for name in names:
    key = cache_lib.row_key(
      config=config.to_json_best_effort(sort_keys=True)
      if hasattr(config, "to_json_best_effort")
      else str(config),
      slice=tpu_slice.name,
      mesh=mesh_dict,
      program=name,
      aspect=list(aspect),
      scan_corrected=scan_corrected,
      **versions,
    )
    row = rows_cache.get(key)
    if row is not None:
      row["cached"] = True
    else:
      logger.info("Compiling %s for %s.", name, tpu_slice.name)
      try:
        program = builders[name]()
      except Exception as e:  # pylint: disable=broad-except
        # Building failed before any compile (a config the model rejects):
        # a row that says why, not a traceback that hides the other rows.
        rows.append(
          {
            "program": name,
            "status": "error",
            "fits": None,
            "batch": None,
            "cached": False,
            "error": f"{type(e).__name__}: {e}".splitlines()[0],
          }
        )
        if on_row is not None:
          on_row(rows[-1])
        continue
      row = measure.measure(
        program,
        chips=tpu_slice.chips,
        hbm_bytes=tpu_slice.hbm_bytes,
        peak_flops=peak,
        scan_corrected=scan_corrected,
      )
      rows_cache.put(key, row)
      row["cached"] = False
    rows.append(row)
    if on_row is not None:
      on_row(row)
  return {
    "config": config_name,
    "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    "commit": _commit(),
    "topology": {
      "name": tpu_slice.name,
      "chips": tpu_slice.chips,
      "topology": tpu_slice.topology,
      "device_kind": devices[0].device_kind,
      "hbm_gib": tpu_slice.hbm_gib,
      "peak_flops_per_chip": peak,
    },
    "mesh": mesh_dict,
    "aspect": list(aspect),
    **versions,
    "fits": all(r.get("fits") is True for r in rows),
    "programs": rows,
    "total_chips": math.prod(mesh_dict.values()),
  }


__all__ = [
  "fitted_mesh_sizes",
  "mesh_sizes",
  "parse_mesh",
  "plan",
  "select",
  "slice_mesh",
]
