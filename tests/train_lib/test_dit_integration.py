"""The tiny Wan DiT plugged into the generic step and the sampler.

Training Kiwi's DiT is a loss function away: the reference flow-matching
loss around ``WanDiT`` with source injection, stage-2-like trainable set
(everything but the unused ``text_embedding``), then Euler sampling with
the trained weights.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax.diffusion import flow_matching, sampler
from kiwi_jax.models.dit import WanDiT, WanDiTConfig
from kiwi_jax.train_lib import optimizers, train_step
from kiwi_jax.train_lib.train_state import ModelSplit, Precision

GRID = flow_matching.TrainingGrid.from_schedule("diffsynth")
CFG = WanDiTConfig.from_variant("tiny", source_condition=True)


def kiwi_dit_loss(model, batch, rng):
  def velocity(noisy, timestep, sigma):
    return model(
      noisy,
      timestep,
      batch["context"],
      source_latents=batch["source"],
      sigma=sigma,
    ).velocity

  return flow_matching.flow_matching_loss(velocity, batch["target"], rng, GRID)


def test_tiny_dit_trains_and_samples():
  precision = Precision(master_dtype="float32", compute_dtype=None)
  opt_config = optimizers.OptimizerConfig(learning_rate=1e-3)
  optimizer = optimizers.make_optimizer(opt_config)

  def ctor():
    return WanDiT(CFG, rngs=nnx.Rngs(0))

  split = ModelSplit.build(
    ctor, (".*",), ("^text_embedding/",), precision=precision
  )
  assert "vae_condition/patch_embedding/proj/kernel" in (
    split.trainable_names()
  )
  state = train_step.init_train_state(ctor, split, optimizer, precision, 0)
  step = train_step.make_train_step(
    split, kiwi_dit_loss, optimizer, opt_config, precision
  )
  keys = jax.random.split(jax.random.key(3), 3)
  batch = {
    "target": jax.random.normal(keys[0], (1, 2, 4, 4, 48)),
    "source": jax.random.normal(keys[1], (1, 2, 4, 4, 48)),
    "context": jax.random.normal(keys[2], (1, 5, 48)),
  }
  frozen_before = jax.tree.map(np.asarray, state.frozen)
  state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["training_loss"]))
  assert float(metrics["l2_updates"]) > 0
  jax.tree.map(
    np.testing.assert_array_equal,
    frozen_before,
    jax.tree.map(np.asarray, state.frozen),
  )

  def velocity_fn(latents, timestep, sigma, step_index, params, frozen):
    del step_index
    model = split.merge(params, frozen)
    b = latents.shape[0]
    return model(
      latents,
      jnp.full((b,), timestep),
      batch["context"],
      source_latents=batch["source"],
      sigma=jnp.full((b,), sigma),
    ).velocity

  noise = sampler.initial_noise(0, (1, 2, 4, 4, 48), jnp.float32)
  out = sampler.sample(
    velocity_fn, noise, state.params, state.frozen, num_steps=3
  )
  assert out.shape == noise.shape and bool(jnp.all(jnp.isfinite(out)))
