"""Euler flow-matching sampler: the whole denoising loop as one program.

The reference loop (``WanVideoPipeline.__call__`` and
``FlowMatchScheduler.step``, reference §5.1) is, for step ``i`` of ``n``:

  t_i      = dtype(timesteps[i])                      # what the DiT sees
  sigma_i' = sigmas[argmin |timesteps - t_i|]         # source-injection sigma
  v        = DiT(z, t_i, sigma_i')
  z        = z + v * (sigmas[i + 1] - sigmas[i])      # sigmas[n] := 0

``dtype`` is the pipeline's ``torch_dtype``: the released bf16 runs round
the DiT input and hence the source-injection sigma through bf16, a float32
run keeps both exact (``SamplingPlan.build(timestep_dtype=...)``); the
Euler step always uses the exact float32 sigmas. Here the loop is a
``lax.fori_loop`` over a host-built :class:`SamplingPlan`, so a jitted
caller compiles the DiT once for all steps.

Classifier-free guidance is available but off by default: the released
Kiwi-Edit pipelines accept ``cfg_scale``/``guidance_scale`` and ignore them
(quirk 11).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kiwi_jax.diffusion import flow_matching, schedules

# (latents [B, ...], timestep [], sigma f32[], step i32[], *operands) -> v;
# timestep in the plan's timestep dtype.
SamplerVelocityFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class SamplingPlan:
  """Per-step tables of an ``n``-step Euler run (host numpy).

  Attributes:
    timesteps: float32[n], the exact schedule timesteps.
    model_timesteps: [n] in the timestep dtype (bf16 by default), what the
      velocity function sees.
    sigmas: float32[n], the Euler step's sigma_i.
    next_sigmas: float32[n], sigma_{i+1}, 0 after the last step.
    model_sigmas: float32[n], sigma of the entry nearest to the model's t
      (what the reference's source injection scales by).
  """

  timesteps: np.ndarray
  model_timesteps: np.ndarray
  sigmas: np.ndarray
  next_sigmas: np.ndarray
  model_sigmas: np.ndarray

  @classmethod
  def build(
    cls,
    num_steps: int,
    schedule: str | schedules.FlowMatchSchedule = "diffsynth",
    denoising_strength: float = 1.0,
    timestep_dtype: Any = jnp.bfloat16,
  ) -> SamplingPlan:
    """The tables of an ``num_steps`` run.

    Args:
      num_steps: Euler steps.
      schedule: a schedule or its name.
      denoising_strength: below 1, start part-way (video-to-video).
      timestep_dtype: the DiT's compute dtype; the timesteps are cast to
        it as the reference casts them to its ``torch_dtype`` (bf16
        rounds, float32 is exact).
    """
    schedule = schedules.get_schedule(schedule)
    sigmas = schedule.sigmas(num_steps, denoising_strength)
    timesteps = schedule.timesteps(num_steps, denoising_strength)
    # Host numpy (ml_dtypes bf16), the same rounding and argmin as on device.
    model_timesteps = timesteps.astype(jnp.dtype(timestep_dtype))
    distance = np.abs(
      timesteps[None, :] - model_timesteps.astype(np.float32)[:, None]
    )
    index = np.argmin(distance, axis=-1)
    # The last step goes to sigma 0 (1 only for inverse/reversed schedules,
    # which Kiwi-Edit does not use).
    next_sigmas = np.append(sigmas[1:], np.float32(0)).astype(np.float32)
    return cls(
      timesteps=timesteps,
      model_timesteps=model_timesteps,
      sigmas=sigmas,
      next_sigmas=next_sigmas,
      model_sigmas=sigmas[index],
    )

  def __len__(self) -> int:
    return self.sigmas.shape[0]


# A pytree, so that a jitted caller takes the tables as (traced) arguments.
jax.tree_util.register_dataclass(
  SamplingPlan,
  data_fields=[f.name for f in dataclasses.fields(SamplingPlan)],
  meta_fields=[],
)


def initial_noise(
  seed: int | jax.Array, shape: Sequence[int], dtype: Any = jnp.bfloat16
) -> jax.Array:
  """Seeded standard normal noise: float32 draws cast to ``dtype``.

  The reference draws with a seeded torch CPU generator; JAX's generator
  differs, so parity tests pass the same noise to both sides.
  """
  key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
  return jax.random.normal(key, tuple(shape), jnp.float32).astype(dtype)


def euler_step(
  latents: jax.Array,
  velocity: jax.Array,
  sigma: jax.Array,
  next_sigma: jax.Array,
) -> jax.Array:
  """``z + v * (next_sigma - sigma)`` with the product rounded to z.dtype.

  Matches torch, where ``bf16 tensor * fp32 scalar`` gives bf16 and the add
  is then a bf16 add.
  """
  delta = velocity.astype(jnp.float32) * (next_sigma - sigma)
  delta = delta.astype(latents.dtype)
  return (latents.astype(jnp.float32) + delta.astype(jnp.float32)).astype(
    latents.dtype
  )


def _guidance_chain(
  guidance_scale, uncond_operands, guidance_scales, guidance_operands
):
  """Normalises both guidance spellings to (scales, branch operands)."""
  if guidance_scale is not None:
    if guidance_scales:
      raise ValueError("Pass guidance_scale or guidance_scales, not both.")
    if uncond_operands is None:
      raise ValueError("guidance_scale needs uncond_operands.")
    return (float(guidance_scale),), (tuple(uncond_operands),)
  if len(guidance_scales) != len(guidance_operands):
    raise ValueError(
      f"{len(guidance_scales)} guidance_scales need as many "
      f"guidance_operands, got {len(guidance_operands)}."
    )
  return (
    tuple(float(x) for x in guidance_scales),
    tuple(tuple(ops) for ops in guidance_operands),
  )


def euler_loop(
  velocity_fn: SamplerVelocityFn,
  latents: jax.Array,
  plan: SamplingPlan,
  operands: Sequence[Any] = (),
  *,
  guidance_scale: float | None = None,
  uncond_operands: Sequence[Any] | None = None,
  guidance_scales: Sequence[float] = (),
  guidance_operands: Sequence[Sequence[Any]] = (),
) -> jax.Array:
  """Runs every Euler step in one ``lax.fori_loop`` (traceable; no jit).

  Args:
    velocity_fn: ``(latents, timestep, sigma, step, *operands) -> velocity``
      with ``timestep`` a scalar in the plan's timestep dtype (bf16 by
      default), ``sigma`` the float32 looked-up sigma
      and ``step`` the int32 step index; velocity has the latents' shape.
      The DiT takes ``timestep``/``sigma`` per sample ([B]) or per token:
      broadcast them inside ``velocity_fn``.
    latents: [B, ...] initial latents (noise, or noised source latents).
    plan: the step tables.
    operands: pytrees passed on to ``velocity_fn`` (model parameters,
      conditions); passing parameters here rather than closing over them
      keeps them out of the compiled program's constants.
    guidance_scale: classifier-free guidance scale; None (the reference's
      behaviour) evaluates only the conditional branch.
    uncond_operands: operands of the unconditional branch (needed when
      ``guidance_scale`` is set).
    guidance_scales: nested guidance over several conditions (e.g. text
      and reference): scales s_1..s_n.
    guidance_operands: operands v_0..v_{n-1} of the less-conditioned
      branches, from unconditional upward; ``operands`` is v_n. The
      velocity is ``v_0 + sum_i s_i (v_i - v_{i-1})`` (one scale: CFG).

  Returns:
    The final latents, same shape and dtype as ``latents``.
  """
  scales, branches = _guidance_chain(
    guidance_scale, uncond_operands, guidance_scales, guidance_operands
  )
  tables = {
    name: jnp.asarray(getattr(plan, name))
    for name in ("model_timesteps", "model_sigmas", "sigmas", "next_sigmas")
  }
  num_steps = len(plan)  # static: the tables' length

  def body(step, z):
    t = tables["model_timesteps"][step]
    sigma = tables["model_sigmas"][step]
    velocity = velocity_fn(z, t, sigma, step, *operands)
    if scales:
      chain = [
        velocity_fn(z, t, sigma, step, *ops).astype(jnp.float32)
        for ops in branches
      ] + [velocity.astype(jnp.float32)]
      guided = chain[0]
      for i, scale in enumerate(scales):
        guided = guided + scale * (chain[i + 1] - chain[i])
      velocity = guided.astype(velocity.dtype)
    return euler_step(
      z, velocity, tables["sigmas"][step], tables["next_sigmas"][step]
    )

  return jax.lax.fori_loop(0, num_steps, body, latents)


def start_latents(
  noise: jax.Array, plan: SamplingPlan, clean_latents: jax.Array | None = None
) -> jax.Array:
  """Where the Euler loop starts: ``noise``, or below strength 1
  ``clean_latents`` noised to the plan's first sigma (the reference's
  ``add_noise`` at ``timesteps[0]``; ``flow_matching.add_noise``, in fp32),
  in the noise's dtype."""
  if clean_latents is None:
    return noise
  return flow_matching.add_noise(clean_latents, noise, plan.sigmas[0]).astype(
    noise.dtype
  )


def denoise(
  velocity_fn: SamplerVelocityFn,
  noise: jax.Array,
  plan: SamplingPlan,
  operands: Sequence[Any] = (),
  *,
  clean_latents: jax.Array | None = None,
  guidance_scales: Sequence[float] = (),
  guidance_operands: Sequence[Sequence[Any]] = (),
) -> jax.Array:
  """The sampler: :func:`start_latents` then :func:`euler_loop`
  (traceable; :func:`sample` jits it, ``EditPipeline`` runs it inside its
  one compiled program)."""
  return euler_loop(
    velocity_fn,
    start_latents(noise, plan, clean_latents),
    plan,
    operands,
    guidance_scales=guidance_scales,
    guidance_operands=guidance_operands,
  )


@functools.partial(jax.jit, static_argnames=("velocity_fn", "guidance_scales"))
def _jitted_sample(
  velocity_fn,
  noise,
  clean_latents,
  plan,
  operands,
  guidance_scales,
  guidance_operands,
):
  return denoise(
    velocity_fn,
    noise,
    plan,
    operands,
    clean_latents=clean_latents,
    guidance_scales=guidance_scales,
    guidance_operands=guidance_operands,
  )


def sample(
  velocity_fn: SamplerVelocityFn,
  noise: jax.Array,
  *operands: Any,
  num_steps: int = 50,
  schedule: str | schedules.FlowMatchSchedule = "diffsynth",
  denoising_strength: float = 1.0,
  clean_latents: jax.Array | None = None,
  guidance_scale: float | None = None,
  uncond_operands: Sequence[Any] | None = None,
  guidance_scales: Sequence[float] = (),
  guidance_operands: Sequence[Sequence[Any]] = (),
  timestep_dtype: Any = jnp.bfloat16,
) -> jax.Array:
  """Jitted flow-matching Euler sampling.

  Args:
    velocity_fn: see :func:`euler_loop`; must be hashable (a function, not a
      fresh lambda per call, to reuse the compiled program).
    noise: [B, ...] initial noise (e.g. :func:`initial_noise`).
    *operands: passed on to ``velocity_fn``.
    num_steps: Euler steps.
    schedule: ``"diffsynth"`` (the released demo) or ``"diffusers"``.
    denoising_strength: below 1, start from ``clean_latents`` noised to the
      first sigma (video-to-video), as the reference does.
    clean_latents: [B, ...] latents to start from when strength < 1.
    guidance_scale: CFG scale, None for none (the reference).
    uncond_operands: operands for the unconditional branch.
    guidance_scales: nested multi-condition guidance (see
      :func:`euler_loop`).
    guidance_operands: its less-conditioned branches' operands.
    timestep_dtype: the DiT's compute dtype (see
      :meth:`SamplingPlan.build`).

  Returns:
    Denoised latents, same shape and dtype as ``noise``.
  """
  if denoising_strength < 1.0 and clean_latents is None:
    raise ValueError("denoising_strength < 1 needs clean_latents.")
  # Explicit transfer: works under jax_transfer_guard("disallow").
  plan = jax.device_put(
    SamplingPlan.build(num_steps, schedule, denoising_strength, timestep_dtype)
  )
  scales, branches = _guidance_chain(
    guidance_scale, uncond_operands, guidance_scales, guidance_operands
  )
  return _jitted_sample(
    velocity_fn, noise, clean_latents, plan, tuple(operands), scales, branches
  )
