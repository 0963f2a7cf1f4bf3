r"""Compiled memory and FLOPs of the 5B DiT train step per remat policy.

Compiles, ahead of time for a TPU slice (no TPU needed, libtpu must be
importable), the DiT's forward + backward at real width and the released
resolution (704 x 1280 x 81 frames: 21 x 44 x 80 latents, 18,480 tokens,
512 context rows, source injection) with ``num_layers`` reduced, for each
remat policy, and prints per-chip argument / temporary / peak memory, the
per-layer temporary slope (from two depths) and the FLOPs: the documented
formula's ``hardware_train`` (``kiwi_jax.flops.dit``, recompute included)
and XLA's per-chip count (scan body counted once).

  PYTHONPATH=/work/tpu_site:. python bench/remat_fit.py \
      --policies=full,dots_no_batch,save_attention --layers=1,2 \
      --mesh=fsdp=4 --batch=4 --out=/tmp/remat_fit.json

Numbers go to ``docs/real_size_configs.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other compiles

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

from kiwi_jax import sharding  # noqa: E402
from kiwi_jax.flops import dit as dit_flops_lib  # noqa: E402
from kiwi_jax.models.dit.config import WanDiTConfig  # noqa: E402
from kiwi_jax.models.dit.model import WanDiT  # noqa: E402
from kiwi_jax.testing.tpu_collectives import collective_counts  # noqa: E402

GiB = 2**30
LATENT_GRID = (21, 44, 80)  # 81 frames at 704 x 1280
CONTEXT_LEN = 512  # video-mode queries
TOPOLOGIES = {
  "v5p-8": ("v5:2x2x1", "megacore"),
  "v5p-16": ("v5:2x2x2", "megacore"),
  "v6e-16": ("v6e:4x4", "default"),
}


def tpu_devices(name: str):
  topology, chip = TOPOLOGIES[name]
  return topologies.get_topology_desc(
    platform="tpu",
    topology_name=topology,
    chip_config_name=chip,
    chips_per_host_bounds=(2, 2, 1),
    num_slices=1,
  ).devices


def parse_mesh(text: str) -> dict[str, int]:
  return {k: int(v) for k, v in (p.split("=") for p in text.split(","))}


def latent_grid(video: str) -> tuple[int, int, int]:
  """``HxWxF`` -> the Wan2.2 VAE's latent grid (4x in time after the first
  frame, 16x in space; sides floored to multiples of 32 as the pipeline
  does)."""
  height, width, frames = (int(x) for x in video.lower().split("x"))
  height, width = height // 32 * 32, width // 32 * 32
  return ((frames - 1) // 4 + 1, height // 16, width // 16)


def compile_step(cfg: WanDiTConfig, mesh, batch: int, rules, grid=LATENT_GRID):
  """Compiled ``grad(mean(v^2))`` of the DiT: f32 masters cast to bf16."""
  with sharding.use_mesh(mesh, rules):
    graphdef, abstract = nnx.split(
      sharding.abstract_model(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))
    )
    shardings = nnx.to_pure_dict(sharding.state_shardings(abstract, mesh))
    params = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=s),
      nnx.to_pure_dict(abstract),
      shardings,
    )
  t, h, w = grid
  bspec = sharding.logical_to_spec(("act_batch",), (batch,), mesh, rules)
  act = lambda shape, dt=jnp.bfloat16: jax.ShapeDtypeStruct(  # noqa: E731
    shape,
    dt,
    sharding=NamedSharding(mesh, P(*bspec, *(None,) * (len(shape) - 1))),
  )
  latents = act((batch, t, h, w, cfg.in_channels))
  inputs = (
    latents,
    act((batch,), jnp.float32),
    act((batch, CONTEXT_LEN, cfg.dim)),
    latents,
    act((batch,), jnp.float32),
  )

  def loss(p, noisy, timestep, context, source, sigma):
    state = jax.tree.map(lambda x: x.astype(cfg.dtype), p)
    model = nnx.merge(graphdef, state)
    v = model(
      noisy, timestep, context, source_latents=source, sigma=sigma
    ).velocity
    return jnp.mean(jnp.square(v.astype(jnp.float32)))

  def step(p, *args):
    g = jax.grad(loss)(p, *args)
    g = jax.lax.with_sharding_constraint(g, shardings)
    return jax.tree.map(lambda a, b: a - 1e-5 * b, p, g)

  with sharding.use_mesh(mesh, rules):
    return jax.jit(step, donate_argnums=0).lower(params, *inputs).compile()


def measure(
  policy: str, layers: int, mesh, batch: int, rules, grid=LATENT_GRID
) -> dict:
  cfg = WanDiTConfig.from_variant(
    "wan2.2-ti2v-5b",
    num_layers=layers,
    dtype=jnp.bfloat16,
    remat_policy=policy,
    attention=None,
    source_condition=True,
  )
  start = time.time()
  row = {"policy": policy, "layers": layers}
  try:
    compiled = compile_step(cfg, mesh, batch, rules, grid)
  except Exception as error:  # noqa: BLE001  (an OOM is a result)
    if os.environ.get("REMAT_FIT_RAISE"):
      raise
    row.update(
      error=str(error).splitlines()[0][:300],
      compile_s=round(time.time() - start, 1),
    )
    return row
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  hlo = compiled.as_text()
  formula = dit_flops_lib.dit_flops(
    cfg,
    batch=batch,
    latent_grid=grid,
    context_len=CONTEXT_LEN,
    source=True,
  )
  row.update(
    compile_s=round(time.time() - start, 1),
    argument_gib=mem.argument_size_in_bytes / GiB,
    temp_gib=mem.temp_size_in_bytes / GiB,
    peak_gib=getattr(mem, "peak_memory_in_bytes", 0) / GiB,
    xla_flops_per_chip=float(cost["flops"]),
    formula_train_flops=float(formula.train),
    formula_hardware_flops=float(formula.hardware_train),
    splash=hlo.count("splash") > 0,
    collectives=collective_counts(hlo),
  )
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--topology", default="v5p-8", choices=TOPOLOGIES)
  parser.add_argument("--mesh", default="fsdp=4")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--policies", default="full,dots_no_batch")
  parser.add_argument("--layers", default="1,2")
  parser.add_argument("--fsdp_over_sequence", action="store_true")
  parser.add_argument(
    "--video",
    default="704x1280x81",
    help="HEIGHTxWIDTHxFRAMES of the training clip (default the released)",
  )
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  grid = latent_grid(args.video)
  mesh = sharding.make_mesh(parse_mesh(args.mesh), tpu_devices(args.topology))
  rules = (
    sharding.FSDP_OVER_SEQUENCE_RULES
    if args.fsdp_over_sequence
    else sharding.LOGICAL_AXIS_RULES
  )
  rows = []
  for policy in args.policies.split(","):
    for layers in (int(x) for x in args.layers.split(",")):
      row = measure(policy, layers, mesh, args.batch, rules, grid)
      row.update(
        topology=args.topology,
        mesh=args.mesh,
        batch=args.batch,
        video=args.video,
        latent_grid=list(grid),
        tokens=grid[0] * (grid[1] // 2) * (grid[2] // 2),
      )
      print(json.dumps(row), flush=True)
      rows.append(row)
      if args.out:
        with open(args.out, "w") as f:
          json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
