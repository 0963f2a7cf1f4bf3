"""The plan's table (markdown, one row per program) and its JSON."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from kiwi_jax.plan.hlo_stats import COLLECTIVES
from kiwi_jax.utils import atomic

_GIB = 2**30
_SHORT = {
  "all-gather": "AG",
  "all-reduce": "AR",
  "reduce-scatter": "RS",
  "all-to-all": "A2A",
  "collective-permute": "CP",
}
HEADER = (
  "program",
  "batch",
  "args GiB",
  "temp GiB",
  "peak GiB",
  "fits",
  "model PFLOP",
  "XLA PFLOP (scan-corr.)",
  "/".join(_SHORT[c] for c in COLLECTIVES),
  "of which in loops",
  "f32 matmuls",
  "t_min s",
  "compile s",
)


def _gib(n) -> str:
  if n is None:
    return "-"
  return f"{n / _GIB:.1f}" if n >= 0.1 * _GIB else f"{n / _GIB:.2g}"


def _pflop(n) -> str:
  return "-" if not n else f"{n / 1e15:.3g}"


def _fits(row: dict[str, Any]) -> str:
  if row["status"] == "compiled":
    return "yes" if row["fits"] else "**no**"
  if row["status"] == "out_of_memory":
    need = row.get("need") or {}
    if need:
      return f"**no**: needs {_gib(need['need_bytes'])} GiB"
    return "**no** (out of memory)"
  return "error"


def _collectives(counts) -> str:
  return "-" if not counts else "/".join(str(counts[c]) for c in COLLECTIVES)


def table_row(row: dict[str, Any]) -> list[str]:
  memory = row.get("memory_per_chip") or {}
  matmuls = row.get("matmuls")
  bound = row.get("step_seconds_lower_bound")
  return [
    row["program"],
    str(row.get("batch") or "-"),
    _gib(memory.get("argument")),
    _gib(memory.get("temp")),
    _gib(memory.get("peak")),
    _fits(row),
    _pflop(row.get("model_flops")),
    _pflop(row.get("xla_flops_scan_corrected")),
    _collectives(row.get("collectives")),
    _collectives(row.get("collectives_in_loops")),
    "-" if not matmuls else f"{matmuls['f32']}/{matmuls['total']}",
    "-" if bound is None else f"{bound:.3g}",
    f"{row.get('compile_seconds', 0):.0f}"
    + (" (cached)" if row.get("cached") else ""),
  ]


def markdown(plan: dict[str, Any]) -> str:
  """The header line, the table and one line per failed program."""
  t = plan["topology"]
  mesh = ", ".join(f"{k}={v}" for k, v in plan["mesh"].items() if v > 1)
  lines = [
    f"{plan['config']} on {t['name']} ({t['chips']} chips, "
    f"{t['hbm_gib']} GiB HBM each), mesh {mesh or 'one device'}; "
    f"jax {plan['jax']}, libtpu {plan['libtpu']}",
    "",
    "| " + " | ".join(HEADER) + " |",
    "|" + "---|" * len(HEADER),
  ]
  lines += ["| " + " | ".join(table_row(r)) + " |" for r in plan["programs"]]
  notes = [
    f"- {r['program']}: {r['error']}"
    for r in plan["programs"]
    if r.get("error")
  ]
  return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def write_json(path: str | pathlib.Path, plan: dict[str, Any]) -> None:
  atomic.write_text(path, json.dumps(plan, indent=1, sort_keys=True) + "\n")


__all__ = ["HEADER", "markdown", "table_row", "write_json"]
