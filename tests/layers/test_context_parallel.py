"""Context-parallel attention on 8 fake CPU devices equals one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kiwi_jax import sharding
from kiwi_jax.layers import context_parallel as cp
from kiwi_jax.layers import dot_product_attention


def _qkv(heads=4, kv_heads=4, batch=2, tokens=16, head_dim=8):
  ks = jax.random.split(jax.random.key(3), 3)
  q = jax.random.normal(ks[0], (batch, tokens, heads, head_dim))
  k = jax.random.normal(ks[1], (batch, tokens, kv_heads, head_dim))
  v = jax.random.normal(ks[2], (batch, tokens, kv_heads, head_dim))
  return q, k, v


def _loss(attend):
  # A loss that weighs every output element differently.
  def loss(q, k, v):
    out = attend(q, k, v)
    return jnp.sum(
      jnp.sin(out) * jnp.arange(out.size).reshape(out.shape) / out.size
    )

  return loss


def _value_and_grads(attend, q, k, v):
  fn = jax.jit(jax.value_and_grad(_loss(attend), argnums=(0, 1, 2)))
  return fn(q, k, v), fn.lower(q, k, v).compile().as_text()


@pytest.mark.parametrize(
  "axes,mode,scheme,kv_heads",
  [
    ({"data": -1, "sequence": 2}, "ulysses", "ulysses", 4),
    ({"data": -1, "sequence": 4}, "auto", "ulysses", 4),
    ({"fsdp": 2, "sequence": 4}, "ulysses", "ulysses", 4),
    ({"fsdp": 2, "tensor": 2, "sequence": 2}, "auto", "ulysses", 4),
    ({"data": -1, "sequence": 2}, "ring", "ring", 4),
    ({"data": -1, "sequence": 4}, "ring", "ring", 2),  # grouped queries
    ({"fsdp": 2, "sequence": 4}, "ring", "ring", 4),
    ({"tensor": 2, "sequence": 4}, "auto", "ring", 4),  # 2 heads per device
    ({"sequence": 8}, "auto", "ring", 4),  # more shards than heads
  ],
)
def test_matches_one_device_forward_and_gradients(axes, mode, scheme, kv_heads):
  q, k, v = _qkv(kv_heads=kv_heads)
  (want, want_grads), _ = _value_and_grads(dot_product_attention, q, k, v)
  mesh = sharding.make_mesh(axes)
  # chunk_size 2 splits each ring block into key chunks too.
  attend = lambda q, k, v: cp.context_parallel_attention(
    q, k, v, mode=mode, chunk_size=2
  )
  with sharding.use_mesh(mesh):
    assert cp.resolve_mode(mode, q.shape, k.shape) == scheme
    (got, got_grads), hlo = _value_and_grads(attend, q, k, v)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)
  collective = "all-to-all" if scheme == "ulysses" else "collective-permute"
  assert collective in hlo


def test_output_keeps_the_token_sharding():
  q, k, v = _qkv()
  mesh = sharding.make_mesh({"fsdp": 2, "sequence": 4})
  with sharding.use_mesh(mesh):
    out = jax.jit(
      lambda q, k, v: cp.context_parallel_attention(q, k, v, mode="ring")
    )(q, k, v)
  assert out.sharding.spec[:2] == ("fsdp", "sequence")


def test_bfloat16_ring_is_close_to_xla():
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv())
  want = dot_product_attention(q, k, v).astype(jnp.float32)
  with sharding.use_mesh(sharding.make_mesh({"data": -1, "sequence": 4})):
    got = jax.jit(
      lambda q, k, v: cp.context_parallel_attention(
        q, k, v, mode="ring", chunk_size=2
      )
    )(q, k, v)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), want, atol=2e-2)


def test_without_a_sharded_token_axis_it_is_plain_attention():
  q, k, v = _qkv()
  assert cp.resolve_mode("ring", q.shape, k.shape) == "none"
  with sharding.use_mesh(sharding.make_mesh({"data": -1})):
    assert cp.resolve_mode("auto", q.shape, k.shape) == "none"
  with sharding.use_mesh(sharding.make_mesh({"data": -1, "sequence": 2})):
    assert cp.resolve_mode("none", q.shape, k.shape) == "none"
    # Cross-attention shapes (a short context) are not context-parallel.
    assert cp.resolve_mode("auto", q.shape, (2, 6, 4, 8)) == "none"
  with sharding.use_mesh(sharding.make_mesh({"data": -1, "sequence": 4})):
    # 18 tokens do not divide by 4: the token axis is not sharded.
    assert cp.resolve_mode("auto", (2, 18, 4, 8), (2, 18, 4, 8)) == "none"
  np.testing.assert_allclose(
    cp.context_parallel_attention(q, k, v),
    dot_product_attention(q, k, v),
    rtol=1e-6,
  )


def test_ulysses_with_heads_that_do_not_divide_is_a_clear_error():
  q, k, v = _qkv(heads=4)
  with sharding.use_mesh(sharding.make_mesh({"sequence": 8})):
    with pytest.raises(ValueError, match="4 query .* 8 sequence shards"):
      cp.resolve_mode("ulysses", q.shape, k.shape)


def test_unknown_mode_is_rejected():
  with pytest.raises(ValueError, match="'ringg'.*'ulysses'"):
    cp.check_mode("ringg")


@pytest.mark.parametrize(
  "block,chunk,want",
  [
    (16, 32, 16),
    (4620, 1024, 924),
    (4096, 1024, 1024),
    (2 * 1009, 1024, 1009),
    (7919, 1024, 7919),  # prime: no useful divisor, the block stays whole
  ],
)
def test_key_chunk(block, chunk, want):
  assert cp.key_chunk(block, chunk) == want
