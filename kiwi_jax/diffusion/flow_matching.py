"""Flow-matching training: timestep sampling, noising, target and loss.

Follows ``WanVideoPipeline.training_loss`` (``diffsynth/pipelines/
wan_video_mllm.py``) and ``FlowMatchScheduler`` (reference §4.1):

1. ``id ~ UniformInt[min_id, max_id)`` over the 1000-entry training grid,
   ``t = dtype(timesteps[id])`` with ``dtype`` the pipeline's compute dtype
   (``TrainingGrid.timestep_dtype``; bf16 in the released runs, where it
   rounds; a float32 run keeps t exact);
2. **[quirk]** ``add_noise``, ``training_weight`` and the source-injection
   ``get_sigma`` all use the grid entry *nearest to that t*, not ``id``:
   in bf16 the 1000 draws collapse to 294 distinct sigmas, and ids 0..9
   land on t = 1000 whose weight is 0; the DiT sees the same t;
3. ``z_t = (1 - sigma) z_0 + sigma eps``, target ``v = eps - z_0``;
4. loss ``w(t) * mean((v_pred - v)^2)`` in float32.

The reference trains on one sample per micro-batch; here each sample of a
batch draws its own timestep and its loss is weighted by its own ``w``, so
batch size 1 reproduces the reference and larger batches average per-sample
weighted losses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kiwi_jax.diffusion import schedules

WEIGHTINGS = ("gaussian", "uniform")


@dataclasses.dataclass(frozen=True)
class TrainingGrid:
  """The schedule's training tables, float32[num_train_timesteps] each,
  and the dtype the DiT sees timesteps in (its compute dtype)."""

  sigmas: np.ndarray
  timesteps: np.ndarray
  weights: np.ndarray
  timestep_dtype: Any = jnp.bfloat16

  @classmethod
  def from_schedule(
    cls,
    schedule: str | schedules.FlowMatchSchedule = "diffsynth",
    weighting: str = "gaussian",
    timestep_dtype: Any = jnp.bfloat16,
  ) -> TrainingGrid:
    """The grid of ``schedule``.

    Args:
      schedule: a schedule or its name.
      weighting: "gaussian" (the reference's ``training_weight``, reference §4.1)
        or "uniform" (every draw weighs 1). The Gaussian bump suits
        fine-tuning a pretrained Wan: it gives the noisiest fifth of the
        draws (sigma > 0.95, where sampling starts) 3% of the weight and
        t = 1000 none; a DiT trained from scratch, like the CPU demo's,
        learns that region too slowly under it.
      timestep_dtype: the DiT's compute dtype; drawn timesteps are cast to
        it (the reference's ``.to(dtype=self.torch_dtype)``).
    """
    schedule = schedules.get_schedule(schedule)
    n = schedule.num_train_timesteps
    if weighting not in WEIGHTINGS:
      raise ValueError(f"weighting={weighting!r}; choose one of {WEIGHTINGS}.")
    weights = (
      schedule.training_weights()
      if weighting == "gaussian"
      else np.ones((n,), np.float32)
    )
    return cls(
      sigmas=schedule.sigmas(n),
      timesteps=schedule.timesteps(n),
      weights=weights,
      timestep_dtype=timestep_dtype,
    )

  def __len__(self) -> int:
    return len(self.timesteps)


@dataclasses.dataclass(frozen=True)
class NoiseLevel:
  """One sampled noise level per sample.

  Attributes:
    timestep: [B] in the grid's timestep dtype, what the DiT sees.
    sigma: float32[B], the noise fraction (from the nearest grid entry).
    weight: float32[B], the loss weight (from the nearest grid entry).
    index: int32[B], that nearest grid entry.
  """

  timestep: jax.Array
  sigma: jax.Array
  weight: jax.Array
  index: jax.Array


jax.tree_util.register_dataclass(
  NoiseLevel,
  data_fields=["timestep", "sigma", "weight", "index"],
  meta_fields=[],
)


def noise_level_at(grid: TrainingGrid, grid_id: jax.Array) -> NoiseLevel:
  """The effective noise level of grid entries ``grid_id`` (the quirk).

  Args:
    grid: training tables.
    grid_id: int[B] drawn grid indices.

  Returns:
    The timestep of each draw as the DiT sees it and the sigma/weight of
    the grid entry nearest to it.
  """
  timestep = schedules.model_timestep(
    jnp.asarray(grid.timesteps)[grid_id], grid.timestep_dtype
  )
  index = schedules.nearest_index(grid.timesteps, timestep)
  return NoiseLevel(
    timestep=timestep,
    sigma=jnp.asarray(grid.sigmas)[index],
    weight=jnp.asarray(grid.weights)[index],
    index=index,
  )


def sample_noise_level(
  key: jax.Array,
  batch_size: int,
  grid: TrainingGrid,
  min_boundary: float = 0.0,
  max_boundary: float = 1.0,
) -> NoiseLevel:
  """Draws ``id ~ UniformInt[min, max)`` per sample and applies the quirk.

  ``min_boundary``/``max_boundary`` are the reference's
  ``min/max_timestep_boundary`` fractions of the grid (0 and 1 by default).
  """
  n = len(grid)
  low, high = int(min_boundary * n), int(max_boundary * n)
  if not 0 <= low < high <= n:
    raise ValueError(
      f"Timestep boundaries ({min_boundary}, {max_boundary}) give an empty "
      f"id range [{low}, {high}) on a grid of {n}."
    )
  grid_id = jax.random.randint(key, (batch_size,), low, high)
  return noise_level_at(grid, grid_id)


def _per_sample(x: jax.Array, ndim: int) -> jax.Array:
  return jnp.reshape(x, x.shape + (1,) * (ndim - x.ndim))


def add_noise(
  clean: jax.Array, noise: jax.Array, sigma: jax.Array
) -> jax.Array:
  """``(1 - sigma) clean + sigma noise`` in fp32, cast to ``clean.dtype``.

  Args:
    clean: [B, ...] clean latents z_0.
    noise: same shape, eps.
    sigma: float[B] (or a scalar).
  """
  sigma = _per_sample(jnp.asarray(sigma, jnp.float32), clean.ndim)
  noisy = (1.0 - sigma) * clean.astype(jnp.float32) + sigma * noise.astype(
    jnp.float32
  )
  return noisy.astype(clean.dtype)


def velocity_target(clean: jax.Array, noise: jax.Array) -> jax.Array:
  """The flow-matching target ``eps - z_0`` (in the latents' dtype)."""
  return noise - clean


def weighted_mse(
  prediction: jax.Array, target: jax.Array, weight: jax.Array | None = None
) -> jax.Array:
  """``mean_b(w_b * mean((pred_b - target_b)^2))`` in float32.

  Args:
    prediction: [B, ...].
    target: [B, ...].
    weight: float[B] per-sample weights (None: all 1).

  Returns:
    A float32 scalar.
  """
  diff = prediction.astype(jnp.float32) - target.astype(jnp.float32)
  per_sample = jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))
  if weight is not None:
    per_sample = per_sample * jnp.asarray(weight, jnp.float32)
  return jnp.mean(per_sample)


VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def flow_matching_loss(
  velocity_fn: VelocityFn,
  clean: jax.Array,
  key: jax.Array,
  grid: TrainingGrid,
  *,
  min_boundary: float = 0.0,
  max_boundary: float = 1.0,
) -> tuple[jax.Array, dict[str, Any]]:
  """The reference's training loss for one batch of clean latents.

  Args:
    velocity_fn: ``(noisy [B, ...], timestep [B], sigma f32[B]) ->
      velocity [B, ...]``; ``sigma`` is the looked-up sigma that the source
      injection scales by (quirk 3).
    clean: [B, t, h, w, c] clean latents z_0 (any float dtype, bf16 in the
      reference).
    key: PRNG key for the timestep and the noise.
    grid: training tables (:meth:`TrainingGrid.from_schedule`).
    min_boundary: lower timestep boundary fraction.
    max_boundary: upper timestep boundary fraction.

  Returns:
    ``(loss, aux)``: float32 scalar loss and a dict with ``mse`` (unweighted,
    float32 scalar), ``timestep``, ``sigma``, ``weight`` (each [B]).
  """
  level_key, noise_key = jax.random.split(key)
  level = sample_noise_level(
    level_key, clean.shape[0], grid, min_boundary, max_boundary
  )
  # The reference draws fp32 randn and casts it to the latents' dtype.
  noise = jax.random.normal(noise_key, clean.shape, jnp.float32).astype(
    clean.dtype
  )
  noisy = add_noise(clean, noise, level.sigma)
  target = velocity_target(clean, noise)
  prediction = velocity_fn(noisy, level.timestep, level.sigma)
  if prediction.shape != target.shape:
    raise ValueError(
      f"velocity_fn returned shape {prediction.shape}; the target has "
      f"shape {target.shape}."
    )
  loss = weighted_mse(prediction, target, level.weight)
  aux = {
    "mse": weighted_mse(prediction, target),
    "timestep": level.timestep,
    "sigma": level.sigma,
    "weight": level.weight,
  }
  return loss, aux
