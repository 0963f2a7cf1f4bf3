"""The GPU suite's random weights (``bench/suite/common.random_module``):
drawn on the device in each parameter's dtype with its sharding, or on the
host; kernels scaled by 1/sqrt(fan-in) without the stacked layer axis."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bench.suite import common
from kiwi_jax import sharding
from kiwi_jax.layers import Dense


class _Tiny(nnx.Module):
  def __init__(self, rngs):
    kw = dict(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=rngs)
    self.a = Dense(64, 32, kernel_axes=("embed", "mlp"), **kw)
    self.b = Dense(64, 32, kernel_axes=("embed", "mlp"), **kw)


@pytest.mark.parametrize("on_host", [False, True])
def test_random_module_dtypes_shardings_and_scale(on_host):
  mesh = sharding.make_mesh({"fsdp": -1})
  model = common.random_module(
    lambda: _Tiny(nnx.Rngs(0)), mesh, on_host=on_host
  )
  expected = sharding.state_shardings(nnx.state(model), mesh)
  for (path, var), (_, want) in zip(
    nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(expected)
  ):
    value = var.get_value()
    assert value.dtype == jnp.bfloat16, path
    assert value.sharding.is_equivalent_to(want.get_value(), value.ndim)
  kernel = np.asarray(model.a.kernel[...], np.float32)
  assert kernel.std() == pytest.approx(1 / 8, rel=0.1)  # fan-in 64
  assert abs(kernel.mean()) < 0.02
  bias = np.asarray(model.a.bias[...], np.float32)
  assert bias.std() == pytest.approx(0.02, rel=0.3)
  # Each parameter gets its own draw, even with the same shape.
  assert not np.array_equal(kernel, np.asarray(model.b.kernel[...], np.float32))


def test_init_stats_leave_stacked_axes_out_of_the_fan_in():
  # A stacked kernel [layers, in, out] names only (in, out).
  assert common._init_stats("kernel", (30, 16, 8), ("embed", "mlp")) == (
    0.0,
    0.25,
  )
  conv = common._init_stats("kernel", (3, 3, 3, 4, 8), (None,) * 5)
  assert conv == (0.0, pytest.approx(1 / np.sqrt(108)))
  assert common._init_stats("weight", (30, 16), ("norm",)) == (1.0, 0.02)
  assert common._init_stats("bias", (16,), ("embed",)) == (0.0, 0.02)
