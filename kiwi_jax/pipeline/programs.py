"""The pipeline's jitted stages: pure functions of (graphdef, state, inputs).

The model is a :class:`KiwiEdit` (``kiwi_jax.models.kiwi``): its
``encode_conditions``, ``encode_video``, ``decode_latents`` and
``denoise_step`` are called here with the signatures it declares.

Each stage merges the model inside jit (``nnx.merge``), so parameters are
arguments of the compiled program, not constants, and one compiled program
serves every call with the same shapes. Under a mesh
(``kiwi_jax.sharding.use_mesh``) the state keeps the shardings it was placed
with and the model's ``constrain`` calls shard the activations (DiT tokens
over ``sequence``, heads/MLP over ``tensor``, weights over ``fsdp``).

``denoise`` is the whole Euler loop as one program: the reference loop of
``WanVideoPipeline.__call__`` (reference §5.1) via
``kiwi_jax.diffusion.sampler.denoise`` (bf16 timestep to the model, the
nearest-entry sigma for the source injection, exact sigmas in the Euler
update, the last step to sigma 0). Kiwi's DiT takes one timestep per sample
(reference §3: no TI2V per-token timesteps), so the step's scalar timestep and
sigma are broadcast to the batch.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax.diffusion import sampler, step_cache
from kiwi_jax.pipeline import progress


@functools.partial(jax.jit, static_argnames=("graphdef", "options"))
def encode_conditions(
  graphdef: nnx.GraphDef,
  state: Any,
  mllm_inputs: dict[str, jax.Array],
  options: tuple[tuple[str, Any], ...] = (),
) -> Any:
  """MLLM inputs -> conditions (``model.encode_conditions``).

  ``options`` are static keyword arguments (e.g. the edit mode), as
  sorted ``(name, value)`` pairs so that they hash.
  """
  return nnx.merge(graphdef, state).encode_conditions(
    mllm_inputs, **dict(options)
  )


@functools.partial(jax.jit, static_argnames=("graphdef",))
def encode_video(
  graphdef: nnx.GraphDef, state: Any, video: jax.Array
) -> jax.Array:
  """float[B, T, H, W, 3] in [-1, 1] -> latents [B, t, h, w, c]."""
  return nnx.merge(graphdef, state).encode_video(video)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def decode_latents(
  graphdef: nnx.GraphDef, state: Any, latents: jax.Array
) -> jax.Array:
  """latents [B, t, h, w, c] -> float[B, T, H, W, 3], clipped to [-1, 1]."""
  video = nnx.merge(graphdef, state).decode_latents(latents)
  return jnp.clip(video, -1.0, 1.0)


def _velocity(
  graphdef,
  report,
  latents,
  timestep,
  sigma,
  step,
  state,
  conditions,
  source_latents,
  ref_latents,
):
  model = nnx.merge(graphdef, state)
  batch = latents.shape[0]
  # One timestep per sample, the context straight to cross-attention
  # (reference §2.5, 3); one unpadded example needs no context mask.
  velocity = model.denoise_step(
    latents,
    jnp.full((batch,), timestep),
    conditions.context,
    source_latents=source_latents,
    sigma=(jnp.full((batch,), sigma) if source_latents is not None else None),
    ref_latents=ref_latents,
  )
  if report:
    # Depend on the velocity, so the step is reported once it is computed.
    progress.emit(step, after=velocity.reshape(-1)[0])
  return velocity


def _to_batch(batch: int, tree: Any) -> Any:
  """Broadcasts every leaf with a leading axis of 1 to ``batch``."""

  def fit(x):
    if x.ndim == 0 or x.shape[0] == batch:
      return x
    return jnp.broadcast_to(x, (batch,) + x.shape[1:])

  return jax.tree.map(fit, tree)


@functools.partial(
  jax.jit, static_argnames=("graphdef", "report", "guidance_scales")
)
def denoise(
  graphdef: nnx.GraphDef,
  state: Any,
  latents: jax.Array,
  plan: sampler.SamplingPlan,
  conditions: Any,
  source_latents: jax.Array | None,
  ref_latents: jax.Array | None,
  *,
  report: bool = True,
  clean_latents: jax.Array | None = None,
  guidance_scales: tuple[float, ...] = (),
  guidance_branches: tuple[tuple[Any, Any], ...] = (),
) -> jax.Array:
  """All Euler steps of one edit as one compiled program.

  Args:
    graphdef, state: the split model.
    latents: [B, t, h, w, c] initial noise (B > 1: one per seed).
    plan: the step tables (``SamplingPlan.build``); their length is static.
    conditions: ``model.encode_conditions`` output, batch B or 1 (then
      broadcast to B, as are the latents and branches below).
    source_latents: [B or 1, t, h, w, c] or None (source-free).
    ref_latents: [B or 1, 1, h, w, c] or None.
    report: emit a progress callback after each step.
    clean_latents: below strength 1 (a plan built with
      ``denoising_strength`` < 1), the latents the loop starts from, noised
      to the plan's first sigma (``sampler.start_latents``).
    guidance_scales: classifier-free guidance scales s_1..s_n; empty (the
      reference) runs the conditional branch only.
    guidance_branches: ``(conditions, ref_latents)`` of the less
      conditioned branches, unconditional first; the velocity is
      ``v_0 + sum_i s_i (v_i - v_{i-1})`` with v_n the full condition
      (``sampler.euler_loop``).

  Returns:
    Denoised latents, shape and dtype of ``latents``.
  """
  # Batch-1 conditions and latents serve every sample of a multi-seed
  # batch (one noise per seed): broadcast them here, inside the program.
  fit = functools.partial(_to_batch, latents.shape[0])
  conditions, source_latents, ref_latents, clean_latents = fit(
    (conditions, source_latents, ref_latents, clean_latents)
  )
  guidance_branches = fit(guidance_branches)
  velocity_fn = functools.partial(_velocity, graphdef, report)
  operands = (state, conditions, source_latents, ref_latents)
  branches = tuple((state, c, source_latents, r) for c, r in guidance_branches)
  return sampler.denoise(
    velocity_fn,
    latents,
    plan,
    operands,
    clean_latents=clean_latents,
    guidance_scales=guidance_scales,
    guidance_operands=branches,
  )


def _split_step(
  graphdef,
  latents,
  timestep,
  sigma,
  step,
  state,
  conditions,
  source_latents,
  ref_latents,
):
  del step
  model = nnx.merge(graphdef, state)
  batch = latents.shape[0]
  return model.split_denoise_step(
    latents,
    jnp.full((batch,), timestep),
    conditions.context,
    source_latents=source_latents,
    sigma=(jnp.full((batch,), sigma) if source_latents is not None else None),
    ref_latents=ref_latents,
  )


@functools.partial(jax.jit, static_argnames=("graphdef", "report"))
def denoise_cached(
  graphdef: nnx.GraphDef,
  state: Any,
  latents: jax.Array,
  plan: sampler.SamplingPlan,
  conditions: Any,
  source_latents: jax.Array | None,
  ref_latents: jax.Array | None,
  threshold: jax.Array,
  *,
  report: bool = True,
  clean_latents: jax.Array | None = None,
) -> tuple[jax.Array, step_cache.CacheStats]:
  """:func:`denoise` with the DiT step cache (no guidance).

  The model needs ``split_denoise_step`` (``KiwiEdit`` has it);
  ``threshold`` is a traced float32 scalar
  (``step_cache.cached_euler_loop``); ``clean_latents`` as in
  :func:`denoise`. Returns ``(latents, CacheStats)``.
  """
  latents = sampler.start_latents(latents, plan, clean_latents)
  after_step = None
  if report:
    after_step = lambda step, v: progress.emit(  # noqa: E731
      step, after=v.reshape(-1)[0]
    )
  return step_cache.cached_euler_loop(
    functools.partial(_split_step, graphdef),
    latents,
    plan,
    (state, conditions, source_latents, ref_latents),
    threshold=threshold,
    after_step=after_step,
  )
