"""What a compiled program's HLO text and errors say: collectives, f32
matmuls, and the memory a program that does not fit would need.

Counting works on any backend's optimised HLO (``compiled.as_text()``):
an instruction is ``%name = type opcode(operands), ...``; asynchronous
collectives appear as ``<op>-start`` / ``<op>-done`` pairs and count once.
"""

from __future__ import annotations

import re

COLLECTIVES = (
  "all-gather",
  "all-reduce",
  "reduce-scatter",
  "all-to-all",
  "collective-permute",
)

# The opcode follows the result type and a space; names and operands start
# with "%" (or are followed by " ="), so "%all-gather.3" is not matched.
_OPCODE = re.compile(
  r"(?<![%\w.\-])(" + "|".join(COLLECTIVES) + r")(-start)?\("
)
_MATMUL = re.compile(r"=\s*(\(?[a-z0-9]+)\[[^\]]*\][^=]*?\s(dot|convolution)\(")

_UNITS = {
  "": 1,
  "B": 1,
  "K": 2**10,
  "KB": 2**10,
  "KIB": 2**10,
  "M": 2**20,
  "MB": 2**20,
  "MIB": 2**20,
  "G": 2**30,
  "GB": 2**30,
  "GIB": 2**30,
  "T": 2**40,
  "TB": 2**40,
  "TIB": 2**40,
}
_SIZE = r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B?|B)?"
_NEED_PATTERNS = (
  # "the total memory required for HLO temporaries (43.66G) exceeds
  #  available HBM (15.75G)"
  re.compile(
    r"required for ([\w ]+?) \("
    + _SIZE
    + r"\) exceeds available HBM \("
    + _SIZE
    + r"\)",
    re.I,
  ),
  # "Used 1.74T of 95.74G hbm"
  re.compile(r"Used " + _SIZE + r" of " + _SIZE + r" hbm", re.I),
)


# A computation's header, ``%name (params) -> type {`` (ENTRY optional), and
# the computations an instruction calls.
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_CALLED = re.compile(
  r"\b(?:body|condition|calls|to_apply|branch_computations|"
  r"called_computations)=\{?([%\w.\-, ]+)\}?"
)
_WHILE_BODY = re.compile(r"\bwhile\(.*\bbody=%?([\w.\-]+)")


def _split(hlo_text: str) -> tuple[dict[str, list[str]], list[str]]:
  """``({computation name: its instruction lines}, the other lines)``."""
  out: dict[str, list[str]] = {}
  loose: list[str] = []
  current = None
  for line in hlo_text.splitlines():
    match = _COMPUTATION.match(line.strip())
    if match and not line.startswith(" "):
      current = match.group(1)
      out[current] = []
    elif current is not None and line.strip() == "}":
      current = None
    elif current is not None:
      out[current].append(line)
    else:
      loose.append(line)
  return out, loose


# TPU's compiler writes a reduce-scatter as a fusion around an all-reduce
# (``fusion(...), kind=kCustom, calls=%all-reduce-scatter``): it counts as
# one reduce-scatter where it is called, and its inner all-reduce not at all.
_FUSED_REDUCE_SCATTER = "all-reduce-scatter"
_FUSED_REDUCE_SCATTER_CALL = re.compile(
  r"\bcalls=%?" + _FUSED_REDUCE_SCATTER + r"(?![\w\-])(?:\.[\w.\-]*)?"
)


def _tally(lines_by_computation: dict[str, list[str]]) -> dict[str, int]:
  counts = dict.fromkeys(COLLECTIVES, 0)
  for name, lines in lines_by_computation.items():
    if name.startswith(_FUSED_REDUCE_SCATTER):
      continue
    for line in lines:
      for match in _OPCODE.finditer(line):
        counts[match.group(1)] += 1
      counts["reduce-scatter"] += len(_FUSED_REDUCE_SCATTER_CALL.findall(line))
  return counts


def count_collectives(hlo_text: str) -> dict[str, int]:
  """``{op: instructions}`` for each of :data:`COLLECTIVES` (a TPU
  ``all-reduce-scatter`` fusion counts as one reduce-scatter)."""
  computations, loose = _split(hlo_text)
  return _tally({**computations, "": loose})


def collectives_in_loops(hlo_text: str) -> dict[str, int]:
  """:func:`count_collectives` of the computations a ``while`` body runs
  (the body, and whatever it calls, transitively): the collectives a scan
  over layers issues once per layer, rather than once per step.

  A gradient that is all-reduced here, instead of reduce-scattered, is
  reduced whole inside the backward loop.
  """
  computations, _ = _split(hlo_text)
  calls = {
    name: {
      callee.strip().lstrip("%")
      for line in lines
      for match in _CALLED.finditer(line)
      for callee in match.group(1).split(",")
    }
    for name, lines in computations.items()
  }
  pending = [
    m.group(1)
    for lines in computations.values()
    for line in lines
    if (m := _WHILE_BODY.search(line))
  ]
  seen: set[str] = set()
  while pending:
    name = pending.pop()
    if name in seen or name not in computations:
      continue
    seen.add(name)
    pending.extend(calls[name])
  return _tally({name: computations[name] for name in seen})


def count_matmuls(hlo_text: str) -> dict[str, int]:
  """Dots and convolutions: ``{"total": n, "f32": n}`` (f32 results)."""
  total = f32 = 0
  for match in _MATMUL.finditer(hlo_text):
    total += 1
    f32 += match.group(1).lstrip("(") == "f32"
  return {"total": total, "f32": f32}


def _bytes(number: str, unit: str | None) -> int:
  return int(float(number) * _UNITS[(unit or "").upper()])


def memory_need(message: str) -> dict[str, int | str] | None:
  """The need and the capacity an out-of-memory compile error states.

  Returns:
    ``{"need_bytes", "available_bytes", "what"}`` or None if the message
    states neither form libtpu uses.
  """
  first, second = _NEED_PATTERNS
  match = first.search(message)
  if match:
    what, n1, u1, n2, u2 = match.groups()
    return {
      "need_bytes": _bytes(n1, u1),
      "available_bytes": _bytes(n2, u2),
      "what": what.strip(),
    }
  match = second.search(message)
  if match:
    n1, u1, n2, u2 = match.groups()
    return {
      "need_bytes": _bytes(n1, u1),
      "available_bytes": _bytes(n2, u2),
      "what": "total",
    }
  return None


def is_out_of_memory(message: str) -> bool:
  return "RESOURCE_EXHAUSTED" in message or "Ran out of memory" in message


__all__ = [
  "COLLECTIVES",
  "collectives_in_loops",
  "count_collectives",
  "count_matmuls",
  "is_out_of_memory",
  "memory_need",
]
