"""RMSNorm, LayerNorm, Dense and the MLPs against numpy / torch."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kiwi_jax import layers

RNG = np.random.default_rng(0)


def _np_rms(x, w, eps):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w


def test_rmsnorm_matches_numpy_prime_shapes():
  x = RNG.normal(size=(3, 7, 13)).astype(np.float32) * 5
  norm = layers.RMSNorm(13, eps=1e-6)
  norm.weight[...] = RNG.normal(size=(13,)).astype(np.float32)
  got = norm(jnp.asarray(x))
  np.testing.assert_allclose(
    got, _np_rms(x, np.asarray(norm.weight[...]), 1e-6), rtol=1e-5, atol=1e-6
  )


def test_rmsnorm_bf16_keeps_fp32_statistics():
  # Large values whose squares overflow bf16 precision: fp32 stats stay exact.
  x = (RNG.normal(size=(5, 11)) * 300).astype(np.float32)
  norm = layers.RMSNorm(11, use_weight=False)
  got = norm(jnp.asarray(x, jnp.bfloat16))
  assert got.dtype == jnp.bfloat16
  want = _np_rms(
    np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), 1.0, 1e-6
  )
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2)


def test_layernorm_matches_numpy():
  x = RNG.normal(size=(2, 5, 17)).astype(np.float32) + 3
  ln = layers.LayerNorm(17, eps=1e-6)
  ln.weight[...] = RNG.normal(size=(17,)).astype(np.float32)
  ln.bias[...] = RNG.normal(size=(17,)).astype(np.float32)
  mu = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  want = (x - mu) / np.sqrt(var + 1e-6) * np.asarray(
    ln.weight[...]
  ) + np.asarray(ln.bias[...])
  np.testing.assert_allclose(ln(jnp.asarray(x)), want, rtol=1e-5, atol=1e-5)
  plain = layers.LayerNorm(17, use_scale=False, use_bias=False)
  assert plain.weight is None and plain.bias is None


def test_dense_logical_axes_and_math():
  dense = layers.Dense(7, 11, kernel_axes=("embed", "mlp"), rngs=nnx.Rngs(0))
  assert dense.kernel.get_metadata()["logical_axes"] == ("embed", "mlp")
  assert dense.bias.get_metadata()["logical_axes"] == ("mlp",)
  x = RNG.normal(size=(3, 7)).astype(np.float32)
  want = x @ np.asarray(dense.kernel[...]) + np.asarray(dense.bias[...])
  np.testing.assert_allclose(dense(jnp.asarray(x)), want, rtol=1e-5, atol=1e-6)
  # torch-like init bound 1/sqrt(fan_in)
  assert np.abs(np.asarray(dense.kernel[...])).max() <= 1 / np.sqrt(7)


@pytest.mark.torch
def test_mlps_match_torch():
  import torch

  x = RNG.normal(size=(2, 5, 7)).astype(np.float32)
  mlp = layers.GeluTanhMLP(7, 13, 11, rngs=nnx.Rngs(1))
  ref = torch.nn.Sequential(
    torch.nn.Linear(7, 13),
    torch.nn.GELU(approximate="tanh"),
    torch.nn.Linear(13, 11),
  )
  with torch.no_grad():
    for i, d in ((0, mlp.fc1), (2, mlp.fc2)):
      ref[i].weight.copy_(torch.from_numpy(np.array(d.kernel[...]).T))
      ref[i].bias.copy_(torch.from_numpy(np.array(d.bias[...])))
    want = ref(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(mlp(jnp.asarray(x)), want, atol=1e-5)

  glu = layers.SwiGLU(7, 13, rngs=nnx.Rngs(2))
  g, u, d = (
    np.array(m.kernel[...]) for m in (glu.gate_proj, glu.up_proj, glu.down_proj)
  )
  xt = torch.from_numpy(x)
  with torch.no_grad():
    want = (
      torch.nn.functional.silu(xt @ torch.from_numpy(g))
      * (xt @ torch.from_numpy(u))
    ) @ torch.from_numpy(d)
  np.testing.assert_allclose(glu(jnp.asarray(x)), want.numpy(), atol=1e-5)


def test_zero_init_out():
  mlp = layers.GeluTanhMLP(5, 7, 3, zero_init_out=True, rngs=nnx.Rngs(0))
  assert not np.any(np.asarray(mlp.fc2.kernel[...]))
  assert not np.any(mlp(jnp.ones((2, 5))))
