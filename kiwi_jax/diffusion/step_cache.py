"""A step-skipping cache for the DiT's blocks (TeaCache-style, one program).

Between nearby denoising steps the block stack adds nearly the same
residual to its input; TeaCache (Liu et al. 2024) and MagCache (Ma et al.
2025) reuse it and skip the blocks while a cheap indicator says the input
has changed little. The rule here, for step ``i`` of the Euler loop:

  m_i   = the first block's modulated input LN(x_i) * (1 + scale_i) + shift_i
          (x_i the patch tokens, scale/shift from the timestep modulation)
  d_i   = mean|m_i - m_{i-1}| / mean|m_{i-1}|      (relative L1, float32)
  acc_i = acc_{i-1} + d_i
  skip  = i > 0 and acc_i < threshold
  skip:     blocks(x_i) := x_i + r              (r: the cached residual)
  evaluate: y = blocks(x_i); r := y - x_i; acc_i := 0

``m_{i-1}`` is the previous step's indicator, evaluated or not, so ``acc``
sums the step-to-step changes since the last evaluated step. Step 0 is
always evaluated (there is no residual yet). The embeddings and the head run
at every step, so a skipped step still sees its own timestep and latents.
TeaCache rescales ``d_i`` with a polynomial fitted per released model; no
fit exists for Kiwi-Edit, so ``d_i`` is used as is and the threshold is in
units of accumulated relative L1 change. With a batch, one decision is
taken for the whole batch (the mean runs over every sample). Threshold 0
never skips (``acc >= 0``), so it evaluates every step, as the plain loop.

The loop is a ``lax.fori_loop`` whose carry holds the latents, the residual,
the last indicator, the accumulator and a counter of evaluated blocks; the
choice is a ``lax.cond``, so a jitted caller compiles the blocks once and a
skipped step does not run them. See docs/step_cache.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kiwi_jax.diffusion import sampler


@dataclasses.dataclass(frozen=True)
class SplitStep:
  """One velocity evaluation cut around its block stack.

  Attributes:
    tokens: float[B, S, dim] the blocks' input.
    indicator: float[B, ...] the change indicator (the first block's
      modulated input).
    blocks: ``tokens -> tokens``, the block stack.
    head: ``tokens -> velocity`` (the latents' shape).
    num_blocks: blocks in the stack (for the evaluation counter).
  """

  tokens: jax.Array
  indicator: jax.Array
  blocks: Callable[[jax.Array], jax.Array]
  head: Callable[[jax.Array], jax.Array]
  num_blocks: int


# (latents, timestep, sigma, step, *operands) -> SplitStep.
SplitVelocityFn = Callable[..., SplitStep]


class CacheState(NamedTuple):
  """The cache's part of the loop carry."""

  residual: jax.Array  # float32, the tokens' shape
  indicator: jax.Array  # float32, last step's indicator
  accumulated: jax.Array  # float32[], relative change since last evaluation
  block_evals: jax.Array  # int32[], blocks evaluated so far
  steps_evaluated: jax.Array  # int32[], steps whose blocks ran


class CacheStats(NamedTuple):
  """What a cached run reports.

  Attributes:
    block_evals: int32[] DiT blocks evaluated (steps evaluated times the
      blocks per step; the uncached loop runs ``steps * num_blocks``).
    steps_evaluated: int32[] steps whose blocks ran.
  """

  block_evals: jax.Array
  steps_evaluated: jax.Array


def check_threshold(value, name: str = "cache_threshold") -> float | None:
  """None, or a finite number >= 0 as float; else ValueError naming it."""
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(
      f"{name} must be a number >= 0 (0.05 to 0.3 skip "
      f"steps; 0 never skips), got {value!r}."
    )
  value = float(value)
  if not (value >= 0 and value != float("inf")):
    raise ValueError(f"{name} must be a finite number >= 0, got {value:g}.")
  return value


def relative_l1(new: jax.Array, old: jax.Array) -> jax.Array:
  """float32[] mean|new - old| / mean|old| (0 where old is all zero)."""
  new, old = new.astype(jnp.float32), old.astype(jnp.float32)
  scale = jnp.mean(jnp.abs(old))
  change = jnp.mean(jnp.abs(new - old))
  return jnp.where(scale > 0, change / jnp.where(scale > 0, scale, 1.0), 0.0)


def cached_velocity(
  split: SplitStep, step: jax.Array, cache: CacheState, threshold: jax.Array
) -> tuple[jax.Array, CacheState]:
  """The velocity of one step with the cache; returns (velocity, cache)."""
  indicator = split.indicator.astype(jnp.float32)
  accumulated = cache.accumulated + relative_l1(indicator, cache.indicator)
  skip = (step > 0) & (accumulated < threshold)
  tokens = split.tokens

  def reuse(residual):
    out = (tokens.astype(jnp.float32) + residual).astype(tokens.dtype)
    return (
      out,
      residual,
      accumulated,
      cache.block_evals,
      cache.steps_evaluated,
    )

  def evaluate(residual):
    del residual
    out = split.blocks(tokens)
    fresh = out.astype(jnp.float32) - tokens.astype(jnp.float32)
    return (
      out,
      fresh,
      jnp.zeros_like(accumulated),
      cache.block_evals + split.num_blocks,
      cache.steps_evaluated + 1,
    )

  out, residual, accumulated, evals, steps = jax.lax.cond(
    skip, reuse, evaluate, cache.residual
  )
  cache = CacheState(
    residual=residual,
    indicator=indicator,
    accumulated=accumulated,
    block_evals=evals,
    steps_evaluated=steps,
  )
  return split.head(out), cache


def cached_euler_loop(
  split_fn: SplitVelocityFn,
  latents: jax.Array,
  plan: sampler.SamplingPlan,
  operands: Sequence[Any] = (),
  *,
  threshold: float | jax.Array = 0.0,
  after_step: Callable[[jax.Array, jax.Array], None] | None = None,
) -> tuple[jax.Array, CacheStats]:
  """:func:`sampler.euler_loop` with the step cache (traceable; no jit).

  Args:
    split_fn: ``(latents, timestep, sigma, step, *operands) -> SplitStep``,
      called as ``sampler.euler_loop`` calls its velocity function.
    latents: [B, ...] initial latents.
    plan: the step tables.
    operands: passed on to ``split_fn``.
    threshold: the accumulated relative L1 change below which a step
      reuses the cached residual (0: every step is evaluated); may be
      traced, so one compiled loop serves every threshold.
    after_step: optional ``after_step(step, velocity)`` inside the loop
      (e.g. a progress callback).

  Returns:
    ``(latents, CacheStats)``, the latents in their input shape and dtype.
  """
  tables = {
    name: jnp.asarray(getattr(plan, name))
    for name in ("model_timesteps", "model_sigmas", "sigmas", "next_sigmas")
  }
  threshold = jnp.asarray(threshold, jnp.float32)

  def split_at(step, z):
    return split_fn(
      z,
      tables["model_timesteps"][step],
      tables["model_sigmas"][step],
      step,
      *operands,
    )

  def carried(z):
    split = split_at(0, z)
    return split.tokens, split.indicator

  shapes = jax.eval_shape(carried, latents)
  cache = CacheState(
    residual=jnp.zeros(shapes[0].shape, jnp.float32),
    indicator=jnp.zeros(shapes[1].shape, jnp.float32),
    accumulated=jnp.zeros((), jnp.float32),
    block_evals=jnp.zeros((), jnp.int32),
    steps_evaluated=jnp.zeros((), jnp.int32),
  )

  def body(step, carry):
    z, cache = carry
    velocity, cache = cached_velocity(split_at(step, z), step, cache, threshold)
    if after_step is not None:
      after_step(step, velocity)
    z = sampler.euler_step(
      z, velocity, tables["sigmas"][step], tables["next_sigmas"][step]
    )
    return z, cache

  z, cache = jax.lax.fori_loop(0, len(plan), body, (latents, cache))
  return z, CacheStats(
    block_evals=cache.block_evals, steps_evaluated=cache.steps_evaluated
  )


__all__ = [
  "CacheState",
  "CacheStats",
  "SplitStep",
  "cached_euler_loop",
  "cached_velocity",
  "check_threshold",
  "relative_l1",
]
