"""Collectives of the toy train step compiled for a TPU slice (AOT).

``python -m kiwi_jax.testing.tpu_collectives`` compiles
``train_step.make_train_step`` over the toy model for a v5p-8 (4 chips,
compile-only devices, needs libtpu importable) at ``fsdp=4`` and prints a
JSON line of its HLO collective counts: with the gradients constrained to
their parameters' FSDP shardings the batch sum is a reduce-scatter per
weight, not an all-reduce of the whole gradient.
"""

from __future__ import annotations

import json
import os
import re


def collective_counts(hlo_text: str) -> dict[str, int]:
  """Collectives in an optimized TPU HLO module's text.

  The TPU compiler fuses a gradient's matmul with its reduce-scatter into a
  ``kCustom`` fusion calling an ``%all-reduce-scatter`` computation; each
  such call counts as one reduce-scatter (and the collectives inside its
  body are not counted again).
  """
  kinds = (
    "reduce-scatter",
    "all-reduce",
    "all-gather",
    "all-to-all",
    "collective-permute",
  )
  counts = dict.fromkeys(kinds, 0)
  in_fused_scatter = False
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
    if header:
      in_fused_scatter = header.group(1).startswith("all-reduce-scatter")
      continue
    if in_fused_scatter or " = " not in line:
      continue
    if "calls=%all-reduce-scatter" in line:
      counts["reduce-scatter"] += 1
      continue
    op = re.search(r" = [^ ]+(?: [^ ]+)*? ([a-z-]+)\(", line)
    name = op.group(1) if op else ""
    name = name[: -len("-start")] if name.endswith("-start") else name
    if name in counts:
      counts[name] += 1
  return counts


def toy_step_hlo(topology: str = "v5:2x2x1", chip: str = "megacore") -> str:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from flax import nnx
  from jax.experimental import topologies
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from kiwi_jax import sharding
  from kiwi_jax.testing.toy import ToyModel
  from kiwi_jax.train_lib import optimizers, train_step
  from kiwi_jax.train_lib.train_state import ModelSplit, Precision

  devices = topologies.get_topology_desc(
    platform="tpu",
    topology_name=topology,
    chip_config_name=chip,
    chips_per_host_bounds=(2, 2, 1),
    num_slices=1,
  ).devices
  mesh = sharding.make_mesh({"fsdp": len(devices)}, devices)
  precision = Precision(compute_dtype="bfloat16")
  opt_config = optimizers.OptimizerConfig(learning_rate=1e-3)
  optimizer = optimizers.make_optimizer(opt_config)

  def ctor():
    return ToyModel(dim=256, hidden=512, out=128, rngs=nnx.Rngs(0))

  def loss_fn(model, batch, rng):
    del rng
    out = model(batch["x"]).astype(jnp.float32)
    return jnp.mean(jnp.square(out - batch["y"])), {}

  split = ModelSplit.build(ctor, (".*",), mesh=mesh, precision=precision)
  state = train_step.abstract_train_state(split, optimizer, mesh)
  step = train_step.make_train_step(
    split, loss_fn, optimizer, opt_config, precision, mesh=mesh
  )
  batch_sharding = NamedSharding(mesh, P("fsdp"))
  batch = {
    "x": jax.ShapeDtypeStruct(
      (8, 64, 256), jnp.float32, sharding=batch_sharding
    ),
    "y": jax.ShapeDtypeStruct(
      (8, 64, 128), jnp.float32, sharding=batch_sharding
    ),
  }
  return step.lower(state, batch).compile().as_text()


def main() -> None:
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  print(json.dumps(collective_counts(toy_step_hlo())))


if __name__ == "__main__":
  main()
