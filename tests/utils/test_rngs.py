"""``cheap_draws``: the same keys as plain ``nnx.Rngs``, and no traced
counter probes (which made building the 5B model quadratic in its size)."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax._src.interpreters import partial_eval

from kiwi_jax.utils.rngs import cheap_draws


class _Plain(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(3, 5, rngs=rngs) for _ in range(4)])
    self.noise = nnx.Param(rngs.params.normal((2,)))
    self.other = nnx.Param(rngs.dropout.uniform((3,)))


class _Cheap(_Plain):
  __init__ = cheap_draws(_Plain.__init__)


def _build(cls):
  rngs = nnx.Rngs(params=7, dropout=11)
  model = cls(rngs=rngs)
  return nnx.state(model), rngs.params(), rngs.dropout()


def test_same_parameters_and_caller_counts_eager_and_jitted():
  for build in (_build, jax.jit(_build, static_argnums=0)):
    plain, cheap = build(_Plain), build(_Cheap)
    flat_p, flat_c = nnx.to_flat_state(plain[0]), nnx.to_flat_state(cheap[0])
    assert [p for p, _ in flat_p] == [p for p, _ in flat_c]
    for (_, a), (_, b) in zip(flat_p, flat_c):
      np.testing.assert_array_equal(a.get_value(), b.get_value())
    for a, b in zip(plain[1:], cheap[1:]):  # the next keys drawn after
      np.testing.assert_array_equal(
        jax.random.key_data(a), jax.random.key_data(b)
      )


def test_abstract_build_never_builds_tracer_error_messages(monkeypatch):
  tracer = partial_eval.DynamicJaxprTracer
  if not hasattr(tracer, "_origin_msg"):
    pytest.skip("this JAX has no DynamicJaxprTracer._origin_msg")
  calls = []
  original = tracer._origin_msg
  monkeypatch.setattr(
    tracer, "_origin_msg", lambda self: calls.append(1) or original(self)
  )
  nnx.eval_shape(lambda: _Cheap(rngs=nnx.Rngs(0)))
  assert not calls
  nnx.eval_shape(lambda: _Plain(rngs=nnx.Rngs(0)))
  if not calls:
    pytest.skip("this JAX no longer walks the trace on counter probes")
