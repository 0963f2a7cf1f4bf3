"""WanDiT on 8 fake CPU devices: sharded forward equals the unsharded one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from kiwi_jax import sharding
from kiwi_jax.models.dit import WanDiT, WanDiTConfig

CFG = WanDiTConfig.from_variant(
  "tiny", source_condition=True, reference_condition=True
)


@nnx.jit
def _velocity(model, latents, timestep, context, source, sigma, ref):
  return model(
    latents,
    timestep,
    context,
    source_latents=source,
    sigma=sigma,
    ref_latents=ref,
  ).velocity


def _inputs(per_token: bool):
  k = jax.random.split(jax.random.key(7), 4)
  b, t, h, w = 4, 2, 8, 12
  latents = jax.random.normal(k[0], (b, t, h, w, CFG.in_channels))
  source = jax.random.normal(k[1], latents.shape)
  ref = jax.random.normal(k[2], (b, 1, h, w, CFG.in_channels))
  context = jax.random.normal(k[3], (b, 6, CFG.dim))
  seq = (t + 1) * (h // 2) * (w // 2)  # 48 video + 24 reference tokens
  timestep = (
    jnp.linspace(0.0, 999.0, b * seq).reshape(b, seq)
    if per_token
    else jnp.array([10.0, 250.0, 600.0, 990.0])
  )
  sigma = jnp.array([0.01, 0.25, 0.6, 0.99])
  return latents, timestep, context, source, sigma, ref


@pytest.mark.parametrize(
  "axes,per_token",
  [
    ({"fsdp": 2, "tensor": 2, "sequence": 2}, False),
    ({"data": 2, "fsdp": 2, "tensor": 2}, True),
    ({"sequence": 8}, True),
  ],
)
def test_sharded_forward_matches_unsharded(axes, per_token):
  model = WanDiT(CFG, rngs=nnx.Rngs(0))
  # Make the Kiwi embedders non-trivial (they are zero-initialised).
  for cond in (model.vae_condition, model.ref_vae_condition):
    kernel = cond.patch_embedding.proj.kernel
    kernel[...] = 0.05 * jax.random.normal(jax.random.key(1), kernel.shape)
  inputs = _inputs(per_token)
  want = _velocity(model, *inputs)

  mesh = sharding.make_mesh(axes)
  sharded = sharding.reshard_module(model, mesh)
  q_kernel = sharded.blocks.self_attn.q.kernel[...]
  expected = sharding.logical_to_spec(
    ("embed", "heads"), q_kernel.shape[1:], mesh
  )
  assert q_kernel.sharding.spec == P(None, *expected)
  with sharding.use_mesh(mesh):
    got = _velocity(sharded, *inputs)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)


def test_partition_specs_of_the_5b_model():
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  _, state = sharding.abstract_state(
    lambda: WanDiT(
      WanDiTConfig.from_variant("wan2.2-ti2v-5b"), rngs=nnx.Rngs(0)
    ),
    mesh,
  )
  spec = lambda v: v.get_value().sharding.spec
  blocks = state["blocks"]
  assert spec(blocks["self_attn"]["q"]["kernel"]) == P(None, "fsdp", "tensor")
  assert spec(blocks["self_attn"]["o"]["kernel"]) == P(None, "tensor", "fsdp")
  assert spec(blocks["ffn"]["fc1"]["kernel"]) == P(None, "fsdp", "tensor")
  assert spec(blocks["self_attn"]["norm_q"]["weight"]) == P(None, "tensor")
  assert spec(state["patch_embedding"]["proj"]["kernel"]) == P(None, "fsdp")


def test_every_parameter_has_logical_axes():
  model = nnx.eval_shape(lambda: WanDiT(CFG, rngs=nnx.Rngs(0)))
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    axes = var.get_metadata().get(sharding.LOGICAL_AXES_KEY)
    ndim = len(var.get_value().shape)
    stacked = 1 if path[0] == "blocks" else 0
    assert axes is not None and len(axes) == ndim - stacked, path
