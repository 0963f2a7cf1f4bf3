r"""Activation memory the backward pass keeps, per DiT layer and remat policy.

Traces (no compile, a few seconds each) the 5B DiT's loss at real width and
the released resolution (704 x 1280 x 81: 18,480 tokens, 512 context rows,
source injection), bf16 compute, attention chosen for a TPU slice (splash,
the mesh's platform), and sums the bytes of the residuals
``jax.vjp`` saves for the backward (``jax.ad_checkpoint``'s
``saved_residuals``) at two depths; the difference is one layer's. With the
FLOPs of the documented formula (``kiwi_jax.flops.dit``: ``hardware_train``
adds each policy's recompute) it gives the memory / FLOPs trade of every
policy. A compile per policy (``bench/remat_fit.py``) gives XLA's numbers
but takes tens of minutes on a small host.

  PYTHONPATH=/work/tpu_site:. python bench/remat_residuals.py
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax._src import ad_checkpoint  # noqa: E402  (saved_residuals)

from kiwi_jax import sharding  # noqa: E402
from kiwi_jax.flops import dit as dit_flops_lib  # noqa: E402
from kiwi_jax.models.dit.config import REMAT_POLICIES, WanDiTConfig  # noqa
from kiwi_jax.models.dit.model import WanDiT  # noqa: E402

GiB = 2**30
LATENT_GRID = (21, 44, 80)
CONTEXT_LEN = 512


def residual_bytes(cfg: WanDiTConfig, batch: int, mesh) -> int:
  with sharding.use_mesh(mesh):
    graphdef, abstract = nnx.split(
      sharding.abstract_model(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))
    )
  params = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, cfg.dtype),
    nnx.to_pure_dict(abstract),
  )
  t, h, w = LATENT_GRID
  sds = jax.ShapeDtypeStruct
  latents = sds((batch, t, h, w, cfg.in_channels), cfg.dtype)
  args = (
    latents,
    sds((batch,), jnp.float32),
    sds((batch, CONTEXT_LEN, cfg.dim), cfg.dtype),
    latents,
    sds((batch,), jnp.float32),
  )

  def loss(p, noisy, timestep, context, source, sigma):
    model = nnx.merge(graphdef, p)
    v = model(
      noisy, timestep, context, source_latents=source, sigma=sigma
    ).velocity
    return jnp.mean(jnp.square(v.astype(jnp.float32)))

  with sharding.use_mesh(mesh):
    saved = ad_checkpoint.saved_residuals(loss, params, *args)
  total = 0
  for aval, origin in saved:
    if "from the argument" in origin:
      continue  # inputs and weights: held anyway
    total += int(np.prod(aval.shape)) * jnp.dtype(aval.dtype).itemsize
  return total


def main() -> None:
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  devices = topologies.get_topology_desc(
    platform="tpu",
    topology_name="v5:2x2x1",
    chip_config_name="megacore",
    chips_per_host_bounds=(2, 2, 1),
    num_slices=1,
  ).devices
  # One device: the traced shapes are one sample's, as one chip of an
  # fsdp mesh holds them (batch sharded, one sample per chip).
  mesh = sharding.make_mesh({"data": 1}, devices[:1])
  rows = []
  for policy in REMAT_POLICIES:
    per = []
    for layers in (1, 2):
      cfg = WanDiTConfig.from_variant(
        "wan2.2-ti2v-5b",
        num_layers=layers,
        dtype=jnp.bfloat16,
        remat_policy=policy,
        attention="splash",
        source_condition=True,
      )
      per.append(residual_bytes(cfg, 1, mesh))
    full = WanDiTConfig.from_variant(
      "wan2.2-ti2v-5b", remat_policy=policy, source_condition=True
    )
    flops = dit_flops_lib.dit_flops(
      full,
      batch=1,
      latent_grid=LATENT_GRID,
      context_len=CONTEXT_LEN,
      source=True,
    )
    row = {
      "policy": policy,
      "per_layer_gib": (per[1] - per[0]) / GiB,
      "outside_layers_gib": (2 * per[0] - per[1]) / GiB,
      "30_layers_gib": (per[0] + 29 * (per[1] - per[0])) / GiB,
      "train_pflop": flops.train / 1e15,
      "hardware_train_pflop": flops.hardware_train / 1e15,
    }
    print(json.dumps(row), flush=True)
    rows.append(row)


if __name__ == "__main__":
  main()
