"""Cloud TPU slice names -> compile-only TPU devices on any host.

``jax.experimental.topologies.get_topology_desc`` (with libtpu installed)
returns the devices of a TPU slice that need no TPU: programs compile for
them, and ``memory_analysis`` / ``cost_analysis`` give per-chip numbers.
Names follow Cloud TPU's accelerator types:

* ``v5p-N`` and ``v4-N`` count TensorCores, two per chip (megacore):
  ``v5p-8`` is 4 chips in a 2x2x1 cube;
* ``v6e-N`` and ``v5e-N`` count chips (one core each): ``v6e-16`` is 4x4.

:func:`parse_slice` needs no libtpu; :func:`devices` does.
"""

from __future__ import annotations

import dataclasses

# generation -> (get_topology_desc prefix, chip config, cores per name unit,
#   HBM per chip in GiB as libtpu reports it, {chips: topology shape}).
_GENERATIONS = {
  "v5p": (
    "v5",
    "megacore",
    2,
    95.74,
    {
      4: "2x2x1",
      8: "2x2x2",
      16: "2x2x4",
      32: "2x4x4",
      64: "4x4x4",
      128: "4x4x8",
    },
  ),
  "v4": (
    "v4",
    "megacore",
    2,
    31.75,
    {
      4: "2x2x1",
      8: "2x2x2",
      16: "2x2x4",
      32: "2x4x4",
      64: "4x4x4",
      128: "4x4x8",
    },
  ),
  "v6e": (
    "v6e",
    "default",
    1,
    31.25,
    {
      4: "2x2",
      8: "2x4",
      16: "4x4",
      32: "4x8",
      64: "8x8",
      128: "8x16",
      256: "16x16",
    },
  ),
  "v5e": (
    "v5e",
    "default",
    1,
    15.75,
    {
      4: "2x2",
      8: "2x4",
      16: "4x4",
      32: "4x8",
      64: "8x8",
      128: "8x16",
      256: "16x16",
    },
  ),
}


class UnknownSliceError(ValueError):
  """A slice name that is not a known Cloud TPU accelerator type."""


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  """One named slice.

  Attributes:
    name: the Cloud TPU name (``v5p-8``).
    generation: ``v5p``, ``v4``, ``v6e`` or ``v5e``.
    chips: chips (devices JAX sees).
    topology: ``get_topology_desc`` name (``v5:2x2x1``).
    chip_config: ``get_topology_desc`` chip config name.
    hbm_gib: HBM per chip, GiB.
  """

  name: str
  generation: str
  chips: int
  topology: str
  chip_config: str
  hbm_gib: float

  @property
  def hbm_bytes(self) -> int:
    return int(self.hbm_gib * 2**30)


def valid_names() -> list[str]:
  """Every accepted slice name, smallest first per generation."""
  out = []
  for gen, (_, _, per_chip, _, shapes) in _GENERATIONS.items():
    out += [f"{gen}-{chips * per_chip}" for chips in sorted(shapes)]
  return out


def parse_slice(name: str) -> TpuSlice:
  """``"v5p-8"`` -> its :class:`TpuSlice`.

  Raises:
    UnknownSliceError: not a known name (the message lists them all).
  """
  text = str(name).strip().lower()
  gen, _, count = text.rpartition("-")
  entry = _GENERATIONS.get(gen)
  if entry is not None and count.isdigit():
    prefix, chip_config, per_chip, hbm, shapes = entry
    units = int(count)
    chips = units // per_chip
    if units % per_chip == 0 and chips in shapes:
      return TpuSlice(
        name=text,
        generation=gen,
        chips=chips,
        topology=f"{prefix}:{shapes[chips]}",
        chip_config=chip_config,
        hbm_gib=hbm,
      )
  raise UnknownSliceError(
    f"unknown TPU slice {name!r}; valid names: {', '.join(valid_names())}"
  )


def libtpu_version() -> str | None:
  """The installed libtpu's version, or None when it is not installed."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top

  for dist in ("libtpu", "libtpu-nightly"):
    try:
      return metadata.version(dist)
    except metadata.PackageNotFoundError:
      continue
  return None


def devices(tpu_slice: TpuSlice) -> list:
  """The slice's compile-only devices (needs libtpu)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  desc = topologies.get_topology_desc(
    platform="tpu",
    topology_name=tpu_slice.topology,
    chip_config_name=tpu_slice.chip_config,
    chips_per_host_bounds=(2, 2, 1),
    num_slices=1,
  )
  found = list(desc.devices)
  if len(found) != tpu_slice.chips:
    raise RuntimeError(
      f"{tpu_slice.name}: libtpu gave {len(found)} devices "
      f"for {tpu_slice.topology}, expected {tpu_slice.chips}."
    )
  return found


__all__ = [
  "TpuSlice",
  "UnknownSliceError",
  "devices",
  "libtpu_version",
  "parse_slice",
  "valid_names",
]
