"""Learnable queries and connectors: init, forward, logical axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.models.kiwi.connectors import Connector, LearnableQueries


def test_connector_starts_at_zero_and_matches_gelu_tanh_mlp():
  c = Connector(7, 11, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(2, 5, 7)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(c(x)), 0.0)
  c.fc2.kernel[...] = jax.random.normal(jax.random.key(1), (11, 11))
  c.fc2.bias[...] = jnp.arange(11.0)
  w1, b1 = np.asarray(c.fc1.kernel[...]), np.asarray(c.fc1.bias[...])
  w2, b2 = np.asarray(c.fc2.kernel[...]), np.asarray(c.fc2.bias[...])
  h = x @ w1 + b1
  h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
  np.testing.assert_allclose(
    np.asarray(c(x)), h @ w2 + b2, rtol=1e-5, atol=1e-5
  )
  with pytest.raises(ValueError, match="width 7"):
    c(np.zeros((1, 2, 5), np.float32))


def test_queries_init_scale_and_axes():
  q = LearnableQueries(257, 64, rngs=nnx.Rngs(3))
  values = np.asarray(q())
  assert values.shape == (257, 64)
  assert 0.017 < values.std() < 0.023
  assert q(jnp.bfloat16).dtype == jnp.bfloat16
  assert sharding.variable_logical_axes(q.q) == ("queries", "embed")
  c = Connector(7, 11, rngs=nnx.Rngs(0))
  assert sharding.variable_logical_axes(c.fc1.kernel) == ("embed_in", "mlp")
  assert sharding.variable_logical_axes(c.fc2.kernel) == ("mlp", "embed")
  with pytest.raises(ValueError, match="positive sizes"):
    LearnableQueries(0, 4, rngs=nnx.Rngs(0))
