"""Timestep sampling, noising, target and the weighted loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kiwi_jax.diffusion import flow_matching as fm
from kiwi_jax.diffusion import schedules

GRID = fm.TrainingGrid.from_schedule("diffsynth")


def test_noise_level_applies_the_bf16_lookup():
  ids = jnp.arange(1000)
  level = fm.noise_level_at(GRID, ids)
  assert level.timestep.dtype == jnp.bfloat16
  # Effective sigma/weight come from the entry nearest to the bf16 t.
  expected = np.asarray(
    schedules.nearest_index(
      GRID.timesteps, jnp.asarray(GRID.timesteps).astype(jnp.bfloat16)
    )
  )
  np.testing.assert_array_equal(level.index, expected)
  np.testing.assert_array_equal(level.sigma, GRID.sigmas[expected])
  np.testing.assert_array_equal(level.weight, GRID.weights[expected])
  assert (np.asarray(level.weight[:10]) == 0).all()


def test_sample_noise_level_range_and_boundaries():
  level = fm.sample_noise_level(jax.random.key(3), 4000, GRID)
  assert level.index.shape == (4000,)
  # All 294 effective values are reachable; a big draw hits most of them.
  assert len(np.unique(level.index)) > 250
  low = fm.sample_noise_level(jax.random.key(3), 500, GRID, 0.5, 0.6)
  grid_t = np.asarray(low.timestep, np.float32)
  assert grid_t.max() <= GRID.timesteps[500] + 4 and grid_t.min() >= (
    GRID.timesteps[599] - 4
  )
  with pytest.raises(ValueError, match="empty id range"):
    fm.sample_noise_level(jax.random.key(0), 2, GRID, 0.5, 0.5)


def test_add_noise_target_and_loss():
  k1, k2 = jax.random.split(jax.random.key(0))
  clean = jax.random.normal(k1, (3, 2, 5, 3, 7))
  noise = jax.random.normal(k2, clean.shape)
  sigma = jnp.array([0.0, 0.3, 1.0])
  noisy = fm.add_noise(clean, noise, sigma)
  np.testing.assert_allclose(noisy[0], clean[0], rtol=0, atol=0)
  np.testing.assert_allclose(noisy[2], noise[2], rtol=0, atol=0)
  np.testing.assert_allclose(
    noisy[1], 0.7 * clean[1] + 0.3 * noise[1], rtol=1e-6, atol=1e-6
  )
  target = fm.velocity_target(clean, noise)
  # The exact velocity of the straight path gives zero loss.
  assert float(fm.weighted_mse(target, target, jnp.ones(3))) == 0.0
  pred = target + 1.0
  weight = jnp.array([1.0, 2.0, 0.0])
  assert float(fm.weighted_mse(pred, target, weight)) == pytest.approx(1.0)
  bf16 = fm.add_noise(clean.astype(jnp.bfloat16), noise, sigma)
  assert bf16.dtype == jnp.bfloat16


def test_flow_matching_loss_end_to_end():
  clean = jax.random.normal(
    jax.random.key(1),
    (2, 3, 5, 7, 4),
  ).astype(jnp.bfloat16)
  seen = {}

  def velocity_fn(noisy, timestep, sigma):
    seen.update(noisy=noisy, timestep=timestep, sigma=sigma)
    return jnp.zeros_like(noisy)

  key = jax.random.key(7)
  loss, aux = jax.jit(
    lambda c, k: fm.flow_matching_loss(velocity_fn, c, k, GRID)
  )(clean, key)
  assert loss.dtype == jnp.float32 and aux["timestep"].dtype == jnp.bfloat16
  assert seen["noisy"].dtype == jnp.bfloat16
  # Recompute with the same key split to check the formula.
  level_key, noise_key = jax.random.split(key)
  level = fm.sample_noise_level(level_key, 2, GRID)
  noise = jax.random.normal(noise_key, clean.shape).astype(jnp.bfloat16)
  target = (noise - clean).astype(jnp.float32)
  per_sample = jnp.mean(jnp.square(target), axis=(1, 2, 3, 4))
  # Under jit XLA may skip the bf16 rounding of ``noise - clean`` before the
  # fp32 square (it fuses the converts), so only ~bf16 precision is equal.
  np.testing.assert_allclose(
    loss, jnp.mean(per_sample * level.weight), rtol=2e-3
  )
  np.testing.assert_allclose(aux["sigma"], level.sigma)
  with pytest.raises(ValueError, match="velocity_fn returned shape"):
    fm.flow_matching_loss(lambda z, t, s: z[:, :1], clean, key, GRID)


def test_uniform_weighting_option():
  uniform = fm.TrainingGrid.from_schedule("diffsynth", "uniform")
  np.testing.assert_array_equal(uniform.weights, np.ones(1000, np.float32))
  np.testing.assert_array_equal(uniform.sigmas, GRID.sigmas)
  # The reference's bump starves the noisiest draws (where sampling starts).
  noisy = GRID.sigmas > 0.95
  assert GRID.weights[noisy].sum() / GRID.weights.sum() < 0.05
  assert noisy.mean() > 0.2
  level = fm.noise_level_at(uniform, jnp.arange(10))
  np.testing.assert_array_equal(level.weight, np.ones(10))
  with pytest.raises(ValueError, match="weighting='logit'"):
    fm.TrainingGrid.from_schedule("diffsynth", "logit")


def test_float32_grid_keeps_the_timesteps_exact():
  """A float32 pipeline (reference ``torch_dtype=float32``) sees the grid's
  own timesteps and their own sigmas; bf16 stays the default."""
  grid = fm.TrainingGrid.from_schedule("diffsynth", timestep_dtype=jnp.float32)
  ids = jnp.arange(1000)
  level = fm.noise_level_at(grid, ids)
  assert level.timestep.dtype == jnp.float32
  np.testing.assert_array_equal(level.timestep, grid.timesteps)
  np.testing.assert_array_equal(level.index, np.arange(1000))
  np.testing.assert_array_equal(level.sigma, grid.sigmas)
  assert fm.noise_level_at(GRID, ids).timestep.dtype == jnp.bfloat16
