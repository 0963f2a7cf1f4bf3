"""WanDiT with LoRA (the 14B stage-2 DiT LoRA): the tree, zero-B identity,
merge == unmerged, gradients and sharded stacked factors."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from kiwi_jax import sharding
from kiwi_jax.layers import lora
from kiwi_jax.models.dit import WanDiT, WanDiTConfig

CFG = WanDiTConfig.from_variant("tiny", source_condition=True)
RANK = 3
# The block linears that carry LoRA (DiffSynth self_attn/cross_attn
# q,k,v,o and ffn.0 / ffn.2).
TARGETS = {
  (attn, p)
  for attn in ("self_attn", "cross_attn")
  for p in ("q", "k", "v", "o")
} | {("ffn", "fc1"), ("ffn", "fc2")}


@nnx.jit
def _velocity(model, latents, timestep, context):
  return model(latents, timestep, context).velocity


def _inputs():
  k = jax.random.split(jax.random.key(7), 2)
  latents = jax.random.normal(k[0], (1, 1, 4, 6, CFG.in_channels))
  context = jax.random.normal(k[1], (1, 5, CFG.dim))
  return latents, jnp.array([300.0]), context


def _models():
  """A plain model and a LoRA model with the same base weights."""
  base = WanDiT(CFG, rngs=nnx.Rngs(0))
  adapted = WanDiT(CFG.replace(lora_rank=RANK), rngs=nnx.Rngs(1))
  nnx.update(adapted, nnx.state(base))
  return base, adapted


def test_lora_tree_is_the_base_tree_plus_stacked_factors():
  base, adapted = _models()
  flat = dict(nnx.to_flat_state(nnx.state(adapted)))
  plain = dict(nnx.to_flat_state(nnx.state(base)))
  extra = set(flat) - set(plain)
  assert set(plain) <= set(flat)
  assert extra == {
    ("blocks",) + t + (ab,) for t in TARGETS for ab in ("lora_a", "lora_b")
  }
  assert {
    p for p, _ in nnx.to_flat_state(nnx.state(adapted, nnx.LoRAParam))
  } == extra
  fc1 = adapted.blocks.ffn.fc1
  assert fc1.lora_a.shape == (CFG.num_layers, CFG.dim, RANK)
  assert fc1.lora_b.shape == (CFG.num_layers, RANK, CFG.ffn_dim)
  # Factors of different layers are drawn independently; B starts at zero.
  a = np.asarray(adapted.blocks.self_attn.q.lora_a[...])
  assert not np.allclose(a[0], a[1])
  for layer in lora.lora_layers(adapted):
    np.testing.assert_array_equal(layer.lora_b[...], 0)
  # lora_rank 0 is exactly today's model: same tree, same random weights.
  again = WanDiT(CFG.replace(lora_rank=0), rngs=nnx.Rngs(0))
  for path, v in nnx.to_flat_state(nnx.state(again)):
    np.testing.assert_array_equal(v.get_value(), plain[path].get_value())


def test_zero_b_is_identity_then_merge_equals_unmerged():
  base, adapted = _models()
  inputs = _inputs()
  want = np.asarray(_velocity(base, *inputs))
  np.testing.assert_array_equal(np.asarray(_velocity(adapted, *inputs)), want)
  key = jax.random.key(3)
  for layer in lora.lora_layers(adapted):
    key, sub = jax.random.split(key)
    layer.lora_b[...] = 0.3 * jax.random.normal(sub, layer.lora_b.shape)
  lora_out = np.asarray(_velocity(adapted, *inputs))
  assert np.max(np.abs(lora_out - want)) > 1e-3
  kernel = np.asarray(adapted.blocks.ffn.fc2.kernel[...])
  lora.merge_lora(adapted)
  merged_kernel = np.asarray(adapted.blocks.ffn.fc2.kernel[...])
  # Layer by layer: W + B @ A with the layer's own factors.
  blk = adapted.blocks.ffn.fc2
  for i in range(CFG.num_layers):
    np.testing.assert_allclose(
      merged_kernel[i],
      kernel[i]
      + np.asarray(blk.lora_a[...])[i] @ np.asarray(blk.lora_b[...])[i],
      atol=1e-6,
    )
  np.testing.assert_allclose(
    np.asarray(_velocity(adapted, *inputs)), lora_out, atol=2e-5
  )
  lora.unmerge_lora(adapted)
  np.testing.assert_allclose(
    np.asarray(adapted.blocks.ffn.fc2.kernel[...]), kernel, atol=1e-6
  )


def test_gradients_reach_the_factors_only_through_lora_state():
  _, adapted = _models()
  graphdef, factors, rest = nnx.split(adapted, nnx.LoRAParam, ...)
  latents, timestep, context = _inputs()
  target = jax.random.normal(jax.random.key(4), latents.shape)

  def loss(factors):
    model = nnx.merge(graphdef, factors, rest)
    return jnp.sum(model(latents, timestep, context).velocity * target)

  grads = nnx.to_flat_state(jax.jit(jax.grad(loss))(factors))
  assert {p[-1] for p, _ in grads} == {"lora_a", "lora_b"}
  # B is zero, so only B gets a gradient at the start (as with peft).
  for path, g in grads:
    norm = float(jnp.abs(g.get_value()).max())
    assert (norm > 0) == (path[-1] == "lora_b"), path


def test_stacked_factors_shard_and_forward_matches():
  _, adapted = _models()
  for layer in lora.lora_layers(adapted):
    layer.lora_b[...] = 0.3 * jnp.ones(layer.lora_b.shape)
  inputs = _inputs()
  want = np.asarray(_velocity(adapted, *inputs))
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
  sharded = sharding.reshard_module(adapted, mesh)
  fc1 = sharded.blocks.ffn.fc1
  assert fc1.lora_a[...].sharding.spec == P(
    None,
    *sharding.logical_to_spec(
      ("embed", "lora_rank"), fc1.lora_a.shape[1:], mesh
    ),
  )
  assert fc1.lora_b[...].sharding.spec == P(
    None,
    *sharding.logical_to_spec(("lora_rank", "mlp"), fc1.lora_b.shape[1:], mesh),
  )
  with sharding.use_mesh(mesh):
    got = _velocity(sharded, *inputs)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
