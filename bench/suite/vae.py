"""VAE section: decoding the edit's latents (21 x 44 x 80 x 48 -> 81 x 704
x 1280 frames) with the Wan2.2 VAE in bf16, random weights.

Variants, in this order:

* ``tiled``: ``VAERunner.decode(tiled=True)``, what ``EditPipeline`` runs
  (the reference's 30 x 52 latent tiles, stride 15 x 26, one latent frame
  at a time); the target is judged on it;
* ``one_program``: the whole decode as one jitted program
  (``stages.decode_latents``, the pipeline's ``vae_tiling=False``);
* ``untiled``: ``VAERunner.decode(tiled=False)`` (frame by frame, whole
  frames).

JAX keeps one peak per process, so each variant's ``peak_gb`` is the peak
since the section started (weights included): exact for the first, an
upper bound of the later ones unless they need more.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx

from bench.suite import common
from kiwi_jax.models.vae import WanVAEConfig
from kiwi_jax.models.vae.model import WanVAE
from kiwi_jax.models.vae.tiling import VAERunner

VARIANTS = ("tiled", "one_program", "untiled")


def vae_config(scale: common.Scale) -> WanVAEConfig:
  return WanVAEConfig.from_variant(
    scale.vae,
    dtype=jnp.bfloat16,
    param_dtype=jnp.bfloat16,
    attention_implementation=None,
  )


def decode(
  scale: common.Scale, rec: common.Recorder, deadline: common.Deadline
) -> None:
  cfg = vae_config(scale)
  mesh = common.one_device_mesh()
  t, h, w = scale.latent_grid
  f = cfg.spatial_factor
  rec.set(
    config=scale.vae,
    latents=[1, t, h, w, cfg.z_dim],
    video=[1, (t - 1) * cfg.temporal_factor + 1, h * f, w * f, 3],
    variants={},
  )
  begin = time.perf_counter()
  model = common.random_module(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)), mesh)
  jax.block_until_ready(nnx.state(model))
  rec.set(
    init_s=time.perf_counter() - begin, weights_gb=common.memory()["in_use_gb"]
  )
  latents = common.random_array((1, t, h, w, cfg.z_dim), seed=4)
  runner = VAERunner(model)
  graphdef, state = nnx.split(model)
  whole = jax.jit(lambda s, z: nnx.merge(graphdef, s).decode(z))
  calls = {
    "tiled": lambda: runner.decode(latents, tiled=True),
    "one_program": lambda: whole(state, latents),
    "untiled": lambda: runner.decode(latents, tiled=False),
  }
  spent = 0.0
  for name in VARIANTS:
    if name != VARIANTS[0] and not deadline.allows(1.5 * spent + 5):
      rec.update("variants", **{name: {"error": "skipped: out of time"}})
      continue
    entry = {}
    try:
      timing = common.time_calls(
        lambda: jax.block_until_ready(calls[name]()), 1, deadline
      )
      entry.update(timing, seconds=timing["median_s"], **common.memory())
      spent = timing["first_call_s"] + sum(timing["times_s"])
    except Exception as error:  # noqa: BLE001  (OOM untiled, say)
      entry["error"] = common.error_text(error)
    rec.update("variants", **{name: entry})
  first = rec.data["variants"].get(VARIANTS[0], {})
  if "seconds" in first:
    rec.set(decode_s=first["seconds"], peak_gb=first.get("peak_gb"))
