"""The jitted Euler loop against a numpy Euler loop on a linear field."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kiwi_jax.diffusion import sampler, schedules

# Linear toy velocity v = A z + b t/1000 + c sigma (per-channel affine).
_A = np.array(
  [[0.3, -0.2, 0.1], [0.05, -0.4, 0.2], [0.0, 0.1, -0.3]], np.float32
)
_B = np.array([0.5, -1.0, 0.25], np.float32)
_C = np.array([-0.2, 0.3, 0.7], np.float32)


def linear_velocity(latents, timestep, sigma, step, a, b):
  del step
  t = timestep.astype(jnp.float32) / 1000.0
  return latents @ a.T + b * t + _C * sigma


def numpy_euler(z, schedule, num_steps):
  """The reference loop, written plainly: bf16 t to the model, source sigma
  looked up by nearest timestep, exact sigmas in the Euler step."""
  sigmas = schedule.sigmas(num_steps)
  timesteps = schedule.timesteps(num_steps)
  z = z.astype(np.float64)
  for i in range(num_steps):
    t = float(jnp.asarray(timesteps[i]).astype(jnp.bfloat16))
    sigma_model = sigmas[np.argmin(np.abs(timesteps - np.float32(t)))]
    v = z @ _A.T + _B * (t / 1000.0) + _C * sigma_model
    next_sigma = sigmas[i + 1] if i + 1 < num_steps else 0.0
    z = z + v * (next_sigma - sigmas[i])
  return z


@pytest.mark.parametrize(
  "name,num_steps", [("diffsynth", 13), ("diffusers", 50)]
)
def test_sampler_matches_numpy_euler(name, num_steps):
  noise = sampler.initial_noise(0, (2, 3, 5, 3), jnp.float32)
  out = sampler.sample(
    linear_velocity,
    noise,
    jnp.asarray(_A),
    jnp.asarray(_B),
    num_steps=num_steps,
    schedule=name,
  )
  expected = numpy_euler(
    np.asarray(noise), schedules.get_schedule(name), num_steps
  )
  assert out.shape == noise.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_plan_tables():
  plan = sampler.SamplingPlan.build(50)
  assert plan.next_sigmas[-1] == 0.0
  np.testing.assert_array_equal(plan.next_sigmas[:-1], plan.sigmas[1:])
  np.testing.assert_array_equal(
    np.asarray(plan.model_timesteps[:3], np.float32), [1000, 996, 992]
  )
  assert len(plan) == 50


def test_guidance_off_by_default_and_cfg_formula():
  noise = sampler.initial_noise(1, (1, 2, 3, 3), jnp.float32)
  a, b = jnp.asarray(_A), jnp.asarray(_B)
  plain = sampler.sample(linear_velocity, noise, a, b, num_steps=4)
  # Scale 1 with any unconditional branch equals no guidance.
  scale_one = sampler.sample(
    linear_velocity,
    noise,
    a,
    b,
    num_steps=4,
    guidance_scale=1.0,
    uncond_operands=(a * 0, b * 0),
  )
  np.testing.assert_allclose(scale_one, plain, rtol=1e-6, atol=1e-6)
  # Guidance with scale s on a linear field = the field u + s (c - u).
  s = 3.0
  guided = sampler.sample(
    linear_velocity,
    noise,
    a,
    b,
    num_steps=4,
    guidance_scale=s,
    uncond_operands=(a * 0.5, b),
  )
  mixed = sampler.sample(
    linear_velocity, noise, a * 0.5 + s * (a * 0.5), b, num_steps=4
  )
  np.testing.assert_allclose(guided, mixed, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="uncond_operands"):
    sampler.sample(
      linear_velocity, noise, a, b, num_steps=4, guidance_scale=2.0
    )


def test_nested_text_and_reference_guidance():
  """v = v0 + s1 (v1 - v0) + s2 (v2 - v1): on a linear field this is the
  field with A = A0 + s1 (A1 - A0) + s2 (A2 - A1)."""
  noise = sampler.initial_noise(4, (1, 2, 3, 3), jnp.float32)
  b = jnp.asarray(_B)
  a0, a1, a2 = (jnp.asarray(_A) * k for k in (0.2, 0.6, 1.0))
  s1, s2 = 2.0, 1.5
  guided = sampler.sample(
    linear_velocity,
    noise,
    a2,
    b,
    num_steps=4,
    guidance_scales=(s1, s2),
    guidance_operands=((a0, b), (a1, b)),
  )
  mixed = sampler.sample(
    linear_velocity, noise, a0 + s1 * (a1 - a0) + s2 * (a2 - a1), b, num_steps=4
  )
  np.testing.assert_allclose(guided, mixed, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="as many"):
    sampler.sample(
      linear_velocity,
      noise,
      a2,
      b,
      num_steps=4,
      guidance_scales=(s1, s2),
      guidance_operands=((a0, b),),
    )


def test_bf16_latents_and_partial_strength():
  noise = sampler.initial_noise(2, (1, 3, 3), jnp.bfloat16)
  out = sampler.sample(
    linear_velocity, noise, jnp.asarray(_A), jnp.asarray(_B), num_steps=5
  )
  assert out.dtype == jnp.bfloat16
  clean = jnp.ones((1, 3, 3), jnp.bfloat16)
  zero_field = lambda z, t, s, i: jnp.zeros_like(z)  # noqa: E731
  # Zero velocity: the result is the initial noising at the first sigma.
  out = sampler.sample(
    zero_field, noise, num_steps=5, denoising_strength=0.5, clean_latents=clean
  )
  sigma0 = schedules.DIFFSYNTH.sigmas(5, 0.5)[0]
  expected = (1 - sigma0) * 1.0 + sigma0 * np.asarray(noise, np.float32)
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=1e-2)
  with pytest.raises(ValueError, match="clean_latents"):
    sampler.sample(zero_field, noise, num_steps=5, denoising_strength=0.5)


def test_sampling_needs_no_implicit_transfers():
  import jax

  noise = sampler.initial_noise(3, (1, 2, 3), jnp.float32)
  a, b = jnp.asarray(_A), jnp.asarray(_B)
  with jax.transfer_guard("disallow"):
    out = sampler.sample(linear_velocity, noise, a, b, num_steps=3)
  assert out.shape == noise.shape


def test_plan_timesteps_follow_the_dit_dtype():
  """The reference casts the timesteps to the pipeline's dtype: bf16 runs
  round them (and take the sigma nearest to the rounded t), float32 runs
  see the exact schedule."""
  exact = sampler.SamplingPlan.build(50, timestep_dtype=jnp.float32)
  assert exact.model_timesteps.dtype == np.float32
  np.testing.assert_array_equal(exact.model_timesteps, exact.timesteps)
  np.testing.assert_array_equal(exact.model_sigmas, exact.sigmas)
  rounded = sampler.SamplingPlan.build(50, timestep_dtype=jnp.bfloat16)
  assert rounded.model_timesteps.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
    rounded.model_timesteps, exact.timesteps.astype(jnp.bfloat16)
  )
  assert (
    np.asarray(rounded.model_timesteps, np.float32) != exact.timesteps
  ).any()
  seen = []

  def record(z, t, sigma, step):
    del sigma, step
    jax.debug.callback(lambda v: seen.append(np.asarray(v)), t)
    return jnp.zeros_like(z)

  noise = sampler.initial_noise(0, (1, 2), jnp.float32)
  jax.block_until_ready(
    sampler.sample(record, noise, num_steps=3, timestep_dtype=jnp.float32)
  )
  assert [v.dtype for v in seen] == [np.float32] * 3
  np.testing.assert_array_equal(
    seen, sampler.SamplingPlan.build(3, timestep_dtype=jnp.float32).timesteps
  )
