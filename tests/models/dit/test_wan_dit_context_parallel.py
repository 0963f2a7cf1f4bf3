"""WanDiT with context-parallel self-attention equals one device.

A tiny DiT (4 heads) with reference tokens, on 8 fake CPU devices: the
velocity of Ulysses and ring meshes, and the parameter gradients of a ring
mesh with fsdp, match the unsharded model.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from kiwi_jax import sharding
from kiwi_jax.models.dit import WanDiT, WanDiTConfig

CFG = WanDiTConfig.from_variant(
  "tiny", num_heads=4, num_layers=1, reference_condition=True
)


def _inputs():
  k = jax.random.split(jax.random.key(5), 3)
  b, t, h, w = 2, 2, 8, 8  # 32 video + 16 reference tokens
  latents = jax.random.normal(k[0], (b, t, h, w, CFG.in_channels))
  ref = jax.random.normal(k[1], (b, 1, h, w, CFG.in_channels))
  context = jax.random.normal(k[2], (b, 6, CFG.dim))
  return latents, jnp.array([100.0, 700.0]), context, ref


def _model(cfg):
  model = WanDiT(cfg, rngs=nnx.Rngs(0))
  kernel = model.ref_vae_condition.patch_embedding.proj.kernel
  kernel[...] = 0.05 * jax.random.normal(jax.random.key(1), kernel.shape)
  return model


def _velocity_fn(model, inputs):
  latents, timestep, context, ref = inputs
  graphdef, state = nnx.split(model)

  def velocity(state):
    return nnx.merge(graphdef, state)(
      latents, timestep, context, ref_latents=ref
    ).velocity

  return velocity, state


def _run(fn, state):
  """Result and StableHLO text of ``jit(fn)(state)``, traced once."""
  lowered = jax.jit(fn).lower(state)
  return lowered.compile()(state), lowered.as_text()


def _loss_grads(model, inputs):
  velocity, state = _velocity_fn(model, inputs)
  loss = lambda s: jnp.mean(jnp.square(velocity(s) - inputs[0]))
  return _run(jax.value_and_grad(loss), state)


@functools.cache
def _one_device_velocity():
  velocity, state = _velocity_fn(_model(CFG), _inputs())
  return jax.jit(velocity)(state)


@pytest.mark.parametrize(
  "axes,mode,remat,collective",
  [
    ({"data": -1, "sequence": 2}, "ulysses", "none", "all_to_all"),
    ({"data": -1, "sequence": 4}, "auto", "full", "all_to_all"),
    ({"fsdp": 2, "sequence": 4}, "ring", "full", "collective_permute"),
    ({"tensor": 2, "sequence": 4}, "auto", "none", "collective_permute"),
  ],
)
def test_forward_matches_one_device(axes, mode, remat, collective):
  model = _model(CFG.replace(context_parallel=mode, remat_policy=remat))
  mesh = sharding.make_mesh(axes)
  sharded = sharding.reshard_module(model, mesh)
  with sharding.use_mesh(mesh):
    got, hlo = _run(*_velocity_fn(sharded, _inputs()))
  assert collective in hlo
  np.testing.assert_allclose(got, _one_device_velocity(), atol=2e-5)


@pytest.mark.parametrize(
  "axes,mode",
  [
    ({"fsdp": 2, "sequence": 4}, "ring"),
  ],
)
def test_gradients_match_one_device(axes, mode):
  model = _model(CFG.replace(context_parallel=mode, remat_policy="full"))
  (want_loss, want_grads), _ = _loss_grads(model, _inputs())
  mesh = sharding.make_mesh(axes)
  rules = sharding.FSDP_OVER_SEQUENCE_RULES  # weights over fsdp x sequence
  sharded = sharding.reshard_module(model, mesh, rules)
  with sharding.use_mesh(mesh, rules):
    (got_loss, got_grads), hlo = _loss_grads(sharded, _inputs())
  assert "collective_permute" in hlo
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  want = dict(nnx.to_flat_state(want_grads))
  for path, grad in nnx.to_flat_state(got_grads):
    np.testing.assert_allclose(
      grad.get_value(),
      want[path].get_value(),
      atol=2e-5,
      rtol=1e-4,
      err_msg=str(path),
    )


def test_none_keeps_gathering_keys_and_values():
  model = _model(CFG.replace(context_parallel="none"))
  mesh = sharding.make_mesh({"data": -1, "sequence": 4})
  sharded = sharding.reshard_module(model, mesh)
  with sharding.use_mesh(mesh):
    velocity, state = _velocity_fn(sharded, _inputs())
    hlo = jax.jit(velocity).lower(state).as_text()
  assert "all_to_all" not in hlo and "collective_permute" not in hlo


def test_config_rejects_an_unknown_mode():
  with pytest.raises(ValueError, match="context_parallel mode 'rings'"):
    CFG.replace(context_parallel="rings")


def test_weights_can_shard_over_sequence_too():
  # Context parallelism splits tokens, not samples: with these rules no
  # sequence shard holds its fsdp shard's full weights.
  mesh = sharding.make_mesh({"fsdp": 2, "sequence": 4})
  _, state = sharding.abstract_state(
    lambda: WanDiT(CFG, rngs=nnx.Rngs(0)),
    mesh,
    sharding.FSDP_OVER_SEQUENCE_RULES,
  )
  q_kernel = state["blocks"]["self_attn"]["q"]["kernel"].get_value()
  assert q_kernel.sharding.spec == P(None, ("fsdp", "sequence"), None)
