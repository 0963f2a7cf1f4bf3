"""Compile one program for a slice and read what the compiler says.

Per chip: argument, output, temporary and peak bytes
(``compiled.memory_analysis()``); whether the peak fits the chip's HBM,
and when the compile fails for memory, the need the error states; XLA's
FLOP count (``cost_analysis``, per chip) and the same count with every
``lax.scan`` body counted ``length`` times
(``kiwi_jax.flops.scan_corrected_xla_flops``); collectives and f32
matmuls in the optimised HLO; and the step-time lower bound
``flops / (chips * peak FLOP/s)``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kiwi_jax import flops as flops_lib
from kiwi_jax.plan import hlo_stats
from kiwi_jax.plan.programs import Program

logger = logging.getLogger("kiwi_jax")

_MEMORY_FIELDS = (
  "argument_size_in_bytes",
  "output_size_in_bytes",
  "alias_size_in_bytes",
  "temp_size_in_bytes",
  "generated_code_size_in_bytes",
)


def _first_lines(message: str, limit: int = 400) -> str:
  text = " ".join(line.strip() for line in message.strip().splitlines()[:3])
  return text[:limit]


def memory_stats(compiled) -> dict[str, int]:
  """Per-chip bytes: ``argument``, ``output``, ``alias``, ``temp``,
  ``code`` and ``peak``."""
  m = compiled.memory_analysis()
  out = {
    name.split("_size")[0]: int(getattr(m, name, 0) or 0)
    for name in _MEMORY_FIELDS
  }
  out["code"] = out.pop("generated_code")
  peak = getattr(m, "peak_memory_in_bytes", None)
  out["peak"] = (
    int(peak)
    if peak
    else (out["argument"] + out["output"] - out["alias"] + out["temp"])
  )
  return out


def measure(
  program: Program,
  *,
  chips: int,
  hbm_bytes: int,
  peak_flops: float | None,
  scan_corrected: bool = True,
) -> dict[str, Any]:
  """Compiles ``program`` and returns its plan row (JSON-ready)."""
  row: dict[str, Any] = {
    "program": program.name,
    "batch": program.batch,
    "model_flops": program.model_flops,
    "flops_formula": program.flops_formula,
    "hbm_per_chip_bytes": hbm_bytes,
  }
  start = time.perf_counter()
  try:
    compiled = program.lower().compile()
  except Exception as e:  # pylint: disable=broad-except
    message = f"{type(e).__name__}: {e}"
    row["compile_seconds"] = round(time.perf_counter() - start, 1)
    if hlo_stats.is_out_of_memory(message):
      row.update(
        status="out_of_memory", fits=False, need=hlo_stats.memory_need(message)
      )
    else:
      row.update(status="error", fits=None)
    row["error"] = _first_lines(message)
    return row
  row["compile_seconds"] = round(time.perf_counter() - start, 1)
  memory = memory_stats(compiled)
  row.update(
    status="compiled", memory_per_chip=memory, fits=memory["peak"] <= hbm_bytes
  )
  text = compiled.as_text()
  row["collectives"] = hlo_stats.count_collectives(text)
  row["collectives_in_loops"] = hlo_stats.collectives_in_loops(text)
  row["matmuls"] = hlo_stats.count_matmuls(text)
  row["xla_flops_per_chip"] = flops_lib.xla_flops(compiled)
  row["xla_flops_scan_corrected"] = None
  if scan_corrected:
    try:
      with program.context():
        corrected = flops_lib.scan_corrected_xla_flops(
          program.fn, *program.args, compiled=compiled, partitions=chips
        )
      row["xla_flops_scan_corrected"] = corrected * chips
    except Exception as e:  # pylint: disable=broad-except
      row["scan_correction_error"] = _first_lines(f"{type(e).__name__}: {e}")
  row["peak_flops_per_chip"] = peak_flops
  bound = None
  if peak_flops and program.model_flops:
    bound = program.model_flops / (chips * peak_flops)
  row["step_seconds_lower_bound"] = bound
  return row


__all__ = ["measure", "memory_stats"]
