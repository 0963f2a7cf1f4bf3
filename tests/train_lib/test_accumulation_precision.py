"""Gradient accumulation and reduced-precision master weights."""

import jax
import jax.numpy as jnp
import numpy as np

from kiwi_jax.testing.toy_flow import (
  deterministic_toy_loss,
  toy_batch,
  toy_training,
)
from kiwi_jax.train_lib import optimizers
from kiwi_jax.train_lib.train_state import Precision

FP32 = Precision(master_dtype="float32", compute_dtype=None)


def _setup(opt_config, precision=FP32, mesh=None, loss_fn=None):
  return toy_training(opt_config, precision, mesh=mesh, loss_fn=loss_fn)


def test_gradient_accumulation_equals_one_big_batch():
  base = dict(learning_rate=1e-2, warmup_steps=0)
  _, big_state, big_step = _setup(
    optimizers.OptimizerConfig(**base), loss_fn=deterministic_toy_loss
  )
  _, acc_state, acc_step = _setup(
    optimizers.OptimizerConfig(grad_accum_steps=3, **base),
    loss_fn=deterministic_toy_loss,
  )
  big_state, _ = big_step(big_state, toy_batch(range(6)))
  for k in range(3):
    acc_state, metrics = acc_step(acc_state, toy_batch([2 * k, 2 * k + 1]))
    if k < 2:
      assert float(metrics["l2_updates"]) == 0.0
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    big_state.params,
    acc_state.params,
  )


def test_bf16_master_and_bf16_compute():
  precision = Precision(master_dtype="bfloat16", compute_dtype="bfloat16")
  _, state, step = _setup(
    optimizers.OptimizerConfig(learning_rate=1e-2), precision=precision
  )
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {
    jnp.dtype(jnp.bfloat16)
  }
  state, metrics = step(state, toy_batch([0, 1]))
  assert np.isfinite(float(metrics["training_loss"]))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {
    jnp.dtype(jnp.bfloat16)
  }
