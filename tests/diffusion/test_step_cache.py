"""The DiT step cache on a tiny random WanDiT: off and threshold 0 give the
plain loop's latents bit for bit, a large threshold skips blocks and stays
finite, and bad thresholds are refused."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kiwi_jax.diffusion import sampler, step_cache
from kiwi_jax.models.dit import WanDiT, WanDiTConfig

STEPS = 6
CFG = WanDiTConfig.from_variant(
  "tiny", in_channels=4, out_channels=4, source_condition=True
)


@pytest.fixture(scope="module")
def setup():
  graphdef, state = nnx.split(WanDiT(CFG, rngs=nnx.Rngs(0)))
  k = jax.random.split(jax.random.key(1), 3)
  noise = jax.random.normal(k[0], (1, 2, 4, 6, 4))
  source = jax.random.normal(k[1], (1, 2, 4, 6, 4))
  context = jax.random.normal(k[2], (1, 5, CFG.dim))
  plan = jax.device_put(sampler.SamplingPlan.build(STEPS))
  return graphdef, state, noise, (state, context, source), plan


def _velocity(graphdef, z, t, sigma, step, state, context, source):
  del step
  b = z.shape[0]
  dit = nnx.merge(graphdef, state)
  return dit(
    z,
    jnp.full((b,), t),
    context,
    source_latents=source,
    sigma=jnp.full((b,), sigma),
  ).velocity


def _split(graphdef, z, t, sigma, step, state, context, source):
  del step
  b = z.shape[0]
  dit = nnx.merge(graphdef, state)
  parts = dit.embed(
    z,
    jnp.full((b,), t),
    context,
    source_latents=source,
    sigma=jnp.full((b,), sigma),
  )
  return step_cache.SplitStep(
    tokens=parts.tokens,
    indicator=dit.first_block_input(parts),
    blocks=lambda x: dit.run_blocks(parts, x),
    head=lambda x: dit.unembed(parts, x).velocity,
    num_blocks=dit.cfg.num_layers,
  )


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _plain(graphdef, noise, plan, operands):
  return sampler.euler_loop(
    functools.partial(_velocity, graphdef), noise, plan, operands
  )


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _cached(graphdef, noise, plan, operands, threshold):
  return step_cache.cached_euler_loop(
    functools.partial(_split, graphdef),
    noise,
    plan,
    operands,
    threshold=threshold,
  )


def test_split_forward_is_the_call(setup):
  graphdef, _, noise, operands, plan = setup
  t, sigma = plan.model_timesteps[2], plan.model_sigmas[2]
  whole = jax.jit(functools.partial(_velocity, graphdef))(
    noise, t, sigma, 2, *operands
  )

  def split_forward(*args):
    split = _split(graphdef, *args)
    return split.head(split.blocks(split.tokens))

  split = jax.jit(split_forward)(noise, t, sigma, 2, *operands)
  np.testing.assert_array_equal(np.asarray(split), np.asarray(whole))


def test_threshold_zero_is_the_plain_loop_bit_for_bit(setup):
  graphdef, _, noise, operands, plan = setup
  plain = _plain(graphdef, noise, plan, operands)
  latents, stats = _cached(graphdef, noise, plan, operands, 0.0)
  np.testing.assert_array_equal(np.asarray(latents), np.asarray(plain))
  assert int(stats.block_evals) == STEPS * CFG.num_layers
  assert int(stats.steps_evaluated) == STEPS


def test_large_threshold_skips_blocks_and_stays_finite(setup):
  graphdef, _, noise, operands, plan = setup
  plain = np.asarray(_plain(graphdef, noise, plan, operands))
  latents, stats = _cached(graphdef, noise, plan, operands, 1e6)
  # Only step 0 runs the blocks; the later steps reuse its residual.
  assert int(stats.steps_evaluated) == 1
  assert int(stats.block_evals) == CFG.num_layers
  latents = np.asarray(latents)
  assert np.isfinite(latents).all() and not np.array_equal(latents, plain)
  # Between the two: some steps skipped, fewer than all.
  _, mid = _cached(graphdef, noise, plan, operands, 0.3)
  assert 1 <= int(mid.steps_evaluated) <= STEPS


def test_relative_l1():
  old = jnp.array([1.0, -2.0, 3.0])
  np.testing.assert_allclose(
    float(step_cache.relative_l1(old + 0.6, old)), 0.6 / 2.0, rtol=1e-6
  )
  assert float(step_cache.relative_l1(old, jnp.zeros(3))) == 0.0


@pytest.mark.parametrize(
  "bad", [-0.1, float("nan"), float("inf"), "0.1", True, [0.1]]
)
def test_bad_thresholds_are_refused_in_one_line(bad):
  with pytest.raises(ValueError, match="cache_threshold must be") as e:
    step_cache.check_threshold(bad)
  assert "\n" not in str(e.value)


def test_good_thresholds():
  assert step_cache.check_threshold(None) is None
  assert step_cache.check_threshold(0) == 0.0
  assert step_cache.check_threshold(0.25) == 0.25
