"""The generic train step on the toy flow-matching model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.testing.toy_flow import ToyVelocityNet, toy_batch, toy_training
from kiwi_jax.train_lib import optimizers
from kiwi_jax.train_lib.train_state import ModelSplit, Precision, path_name

FP32 = Precision(master_dtype="float32", compute_dtype=None)


def _setup(opt_config, precision=FP32, mesh=None, loss_fn=None):
  return toy_training(opt_config, precision, mesh=mesh, loss_fn=loss_fn)


@pytest.fixture(scope="module")
def flow_setup():
  """One compiled toy step (and initial state) shared by the tests."""
  config = optimizers.OptimizerConfig(learning_rate=1e-2)
  split, state, step = _setup(config)
  return split, state, step


def _fresh(state):
  return jax.tree.map(jnp.copy, state)  # the step donates its input


BATCH = list(range(8))


def test_step_runs_and_frozen_params_are_untouched(flow_setup):
  split, state, step = flow_setup
  state = _fresh(state)
  frozen_before = jax.tree.map(np.asarray, state.frozen)
  params_before = jax.tree.map(np.asarray, state.params)
  # No optimiser state for frozen parameters: every parameter-shaped slot in
  # the optimiser state belongs to a trainable path.
  trainable = set(split.trainable_names())
  assert "source_proj/kernel" not in trainable and "in_proj/kernel" in (
    trainable
  )
  slots = [
    path_name(p)
    for p, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
    if np.ndim(x) > 0
  ]
  assert slots and not any("source_proj" in s for s in slots)
  assert len(slots) == 2 * len(trainable)  # Adam mu and nu
  batch = toy_batch(BATCH)
  # The step moves nothing between host and device by itself.
  with jax.transfer_guard("disallow"):
    for _ in range(2):
      state, metrics = step(state, batch)
  assert int(state.step) == 2
  for name in (
    "training_loss",
    "l2_grads",
    "l2_params",
    "l2_updates",
    "learning_rate",
    "mse",
    "sigma",
    "weight",
  ):
    assert np.isfinite(metrics[name]), name
  assert float(metrics["learning_rate"]) == pytest.approx(1e-2 / 3)
  jax.tree.map(
    np.testing.assert_array_equal,
    frozen_before,
    jax.tree.map(np.asarray, state.frozen),
  )
  changed = jax.tree.map(
    lambda a, b: bool(np.any(a != np.asarray(b))), params_before, state.params
  )
  assert all(jax.tree.leaves(changed))


def test_loss_falls_when_overfitting(flow_setup):
  _, state, step = flow_setup
  state = _fresh(state)
  batch = toy_batch([0, 1, 2, 3, 0, 1, 2, 3])
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["mse"]))
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_regex_that_matches_nothing_is_an_error():
  with pytest.raises(ValueError, match="matches no parameter"):
    ModelSplit.build(lambda: ToyVelocityNet(rngs=nnx.Rngs(0)), ["^dit/"])


def test_sharded_step_equals_single_device(flow_setup):
  """data x fsdp x tensor = 2 x 2 x 2: the batch splits over data+fsdp, the
  MLP kernels over fsdp and tensor."""
  _, single, single_step = flow_setup
  single = _fresh(single)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  _, sharded, sharded_step = _setup(
    optimizers.OptimizerConfig(learning_rate=1e-2), mesh=mesh
  )
  kernel = sharded.params["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert jax.tree.leaves(sharded.opt_state)[1].sharding.mesh == mesh
  indices = BATCH
  for _ in range(2):
    single, m1 = single_step(single, toy_batch(indices))
    sharded, m2 = sharded_step(
      sharded,
      sharding.host_to_global(
        jax.tree.map(np.asarray, toy_batch(indices)), mesh
      ),
    )
  assert sharded.params["mlp"]["fc1"]["kernel"].sharding == kernel.sharding
  np.testing.assert_allclose(
    m1["training_loss"], m2["training_loss"], rtol=1e-5
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    single.params,
    jax.device_get(sharded.params),
  )
