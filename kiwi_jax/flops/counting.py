"""Counting a program's FLOPs from its jaxpr and from XLA.

XLA's ``cost_analysis()["flops"]`` counts a ``while`` loop's body once: a
model whose layers run under ``lax.scan`` reports one layer. Two helpers
make compiled counts comparable with :mod:`kiwi_jax.flops` formulas:

* :func:`jaxpr_matmul_flops` walks the jaxpr and adds ``2 * M * N * K``
  for every ``dot_general`` (and the equivalent for convolutions),
  multiplying ``scan`` bodies by their length and ``shard_map`` bodies by
  the devices they run on. It counts what the program computes, so a
  rematerialised backward includes its recompute (hardware FLOPs).
* :func:`scan_corrected_xla_flops` is XLA's own count with the missing
  ``length - 1`` iterations of every scanned body added back: each body is
  compiled alone and XLA's count of it (matmuls and elementwise work)
  multiplied by the iterations XLA did not see.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jex_core

_JAXPR_TYPES = (jex_core.Jaxpr, jex_core.ClosedJaxpr)


def _dot_general_flops(eqn) -> float:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params[
    "dimension_numbers"
  ]
  del lhs_batch
  rhs_free = [
    s for i, s in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch
  ]
  return 2.0 * math.prod(lhs) * math.prod(rhs_free)


def _conv_flops(eqn) -> float:
  out = eqn.outvars[0].aval.shape
  rhs = eqn.invars[1].aval.shape
  out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
  # Each output element sums (in_features / groups) x kernel products.
  return 2.0 * math.prod(out) * math.prod(rhs) / out_features


def _inner_jaxprs(value) -> list:
  if isinstance(value, _JAXPR_TYPES):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _inner_jaxprs(v)]
  return []


def _shard_map_devices(params: dict[str, Any]) -> int:
  mesh = params.get("mesh")
  if mesh is None:
    return 1
  manual = params.get("manual_axes") or params.get("axis_names")
  names = tuple(manual) if manual else tuple(mesh.axis_names)
  return math.prod(
    dict(zip(mesh.axis_names, mesh.axis_sizes))[a] for a in names
  )


def count_jaxpr(jaxpr, *, scan_lengths: bool = True) -> float:
  """Matmul FLOPs of a (closed) jaxpr.

  Args:
    jaxpr: a ``Jaxpr`` or ``ClosedJaxpr``.
    scan_lengths: multiply ``scan`` bodies by their length (False counts
      each body once, as XLA does).
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_general_flops(eqn)
      continue
    if name == "conv_general_dilated":
      total += _conv_flops(eqn)
      continue
    if name == "cond":
      total += max(
        count_jaxpr(br, scan_lengths=scan_lengths)
        for br in eqn.params["branches"]
      )
      continue
    times = 1
    if name == "scan" and scan_lengths:
      times = int(eqn.params["length"])
    elif name == "shard_map":
      times = _shard_map_devices(eqn.params)
    for value in eqn.params.values():
      for inner in _inner_jaxprs(value):
        total += times * count_jaxpr(inner, scan_lengths=scan_lengths)
  return total


def jaxpr_matmul_flops(
  fn: Callable[..., Any], *args, scan_lengths=True, **kwargs
) -> float:
  """Matmul FLOPs of ``fn(*args, **kwargs)`` (arrays or shape structs;
  nothing runs). ``while`` loops other than ``scan`` count once."""
  closed = jax.make_jaxpr(fn)(*args, **kwargs)
  return count_jaxpr(closed, scan_lengths=scan_lengths)


def xla_flops(compiled) -> float:
  """``cost_analysis()["flops"]`` of a compiled (or lowered) program."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  return float(cost["flops"])


def scan_corrected_xla_flops(
  fn: Callable[..., Any], *args, compiled=None, partitions: int = 1
) -> float:
  """XLA's FLOP count of ``jax.jit(fn)(*args)`` with every ``scan`` body
  counted ``length`` times.

  XLA counts each loop body once; this adds ``length - 1`` times XLA's
  count of the body compiled on its own (recursively for nested scans).

  Args:
    fn: the function (jitted or not).
    *args: its arguments (arrays or ``jax.ShapeDtypeStruct``).
    compiled: the compiled program, if already built (else compiled here).
    partitions: devices the compiled program is partitioned over. XLA
      reports a partitioned program's count per device. Bodies compile
      replicated over the program's own mesh when it has one, where GSPMD
      partitions them by their sharding constraints as it partitions the
      program, so their count is per device already; a body compiled on
      one device (a program without a mesh) is divided by ``partitions``
      (an even split).
  """
  if compiled is None:
    compiled = jax.jit(fn).lower(*args).compile()
  closed = jax.make_jaxpr(fn)(*args)
  placement = _body_placement(compiled)
  on_mesh = isinstance(placement, jax.sharding.NamedSharding)
  missing = _missing_iterations(closed, 1, placement)
  return xla_flops(compiled) + missing / (1 if on_mesh else partitions)


# Primitives whose inner jaxpr is a kernel, not XLA ops: XLA sees one custom
# call, and the kernel's own loops (over Refs) are not XLA loops.
_KERNEL_PRIMITIVES = frozenset({"pallas_call", "triton_kernel_call"})


def _body_placement(compiled) -> Any:
  """Where scan bodies compile: replicated over the compiled program's mesh
  (a TPU kernel in a body does not compile for the host, and a
  ``shard_map`` in it needs its mesh), or on its one device; ``None`` when
  unknown (the default device)."""
  try:
    shardings = jax.tree.leaves(compiled.input_shardings)
  except Exception:  # pylint: disable=broad-except
    return None
  for sharding in shardings:
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None and not getattr(mesh, "empty", False):
      return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  for sharding in shardings:
    devices = getattr(sharding, "device_set", None)
    if devices:
      return jax.sharding.SingleDeviceSharding(min(devices, key=lambda d: d.id))
  return None


def _body_xla_flops(body, placement=None) -> float:
  """XLA's count of a closed scan body compiled alone (at ``placement``)."""
  extra = {} if placement is None else {"sharding": placement}
  avals = [
    jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype, **extra)
    for v in body.jaxpr.invars
  ]
  return xla_flops(jax.jit(jex_core.jaxpr_as_fun(body)).lower(*avals).compile())


def _missing_iterations(jaxpr, times: int, device=None) -> float:
  """FLOPs of the scan iterations XLA does not count, ``times`` being the
  iterations of the enclosing scans."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name in _KERNEL_PRIMITIVES:
      continue
    if name == "scan":
      body, length = eqn.params["jaxpr"], int(eqn.params["length"])
      total += times * (length - 1) * _body_xla_flops(body, device)
      total += _missing_iterations(body, times * length, device)
      continue
    for value in eqn.params.values():
      for inner in _inner_jaxprs(value):
        total += _missing_iterations(inner, times, device)
  return total


__all__ = [
  "count_jaxpr",
  "jaxpr_matmul_flops",
  "scan_corrected_xla_flops",
  "xla_flops",
]
