"""Nothing non-finite is saved or resumed (issue 15, item 1)."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.testing.toy_flow import ToyFlowTask, ToyVelocityNet
from kiwi_jax.train_lib import checkpointing, optimizers, train_step, trainer
from kiwi_jax.train_lib.train_state import ModelSplit, Precision, path_name


def _config(**overrides):
  config = dict(
    seed=0,
    total_steps=3,
    log_every=100,
    log_first_steps=0,
    mesh=dict(data=2, fsdp=2, tensor=2),
    optimizer=dict(learning_rate=1e-2),
    precision=dict(compute_dtype=None),
    tensorboard=False,
    checkpoint=dict(every=1, keep=5, async_save=True),
  )
  config.update(overrides)
  return ml_collections.ConfigDict(config)


def _steps_on_disk(workdir):
  manager = checkpointing.make_manager(workdir / "checkpoints", read_only=True)
  return manager.all_steps()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_an_update_that_makes_the_weights_nan_is_never_saved(tmp_path):
  # The step-1 loss is finite (computed before the update); the update
  # makes the parameters infinite. Saving step 1 must be refused.
  config = _config(optimizer=dict(learning_rate=1e39))
  with pytest.raises(FloatingPointError) as error:
    trainer.train_and_evaluate(config, tmp_path, ToyFlowTask(batch_size=4))
  assert _steps_on_disk(tmp_path) == []
  message = str(error.value)
  assert error.type.__name__ == "NonFiniteStateError", message
  assert "at step 1 " in message, message
  assert "(first: params/" in message, message
  assert "no checkpoint was saved" in message, message


def _toy_state(mesh):
  """A fresh train state split as ``ToyFlowTask`` splits it."""
  task = ToyFlowTask()
  split = ModelSplit.build(
    lambda: ToyVelocityNet(dim=16, rngs=nnx.Rngs(1)),
    task.trainable,
    task.frozen,
    mesh=mesh,
    precision=Precision(compute_dtype=None),
  )
  optimizer = optimizers.make_optimizer(optimizers.OptimizerConfig())
  state = train_step.init_train_state(
    lambda: ToyVelocityNet(dim=16, rngs=nnx.Rngs(1)),
    split,
    optimizer,
    Precision(compute_dtype=None),
    0,
    mesh,
  )
  return state


def _poison_first_moment(state):
  """The state with an inf in one Adam moment (the parameters finite)."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(state.opt_state)
  leaves = [x for _, x in flat]
  index = next(
    i
    for i, (p, x) in enumerate(flat)
    if "mu" in jax.tree_util.keystr(p) and x.ndim == 2
  )
  bad = leaves[index].at[0, 0].set(jnp.inf)
  leaves[index] = jax.device_put(bad, leaves[index].sharding)
  name = path_name(flat[index][0])
  return (
    dataclasses.replace(
      state, opt_state=jax.tree_util.tree_unflatten(treedef, leaves)
    ),
    f"opt_state/{name}",
  )


def test_nonfinite_leaves_names_floating_leaves_only():
  tree = {
    "a": jnp.ones(2),
    "b": {"c": jnp.array([1.0, jnp.nan])},
    "steps": jnp.arange(2),
  }
  assert checkpointing.nonfinite_leaves(tree) == (["b/c"], 2)


class _NoCheckpoints:
  """A checkpoint manager with nothing saved yet."""

  def latest_step(self):
    return None


def test_guard_trusts_the_values_not_an_overflowing_norm(caplog):
  guard = trainer._FiniteGuard(0, _NoCheckpoints())  # pylint: disable=W0212
  metrics = {
    "training_loss": jnp.float32(1.0),
    "l2_params": jnp.float32(jnp.inf),
  }  # 2 * (3e38)^2 overflows
  guard.add(1, metrics, {"params": {"w": jnp.full((2,), 3e38)}})
  guard.check()  # every value is finite: a warning, not a stop
  assert "overflowed" in caplog.text
  guard.add(2, metrics, {"params": {"w": jnp.array([1.0, jnp.nan])}})
  with pytest.raises(
    trainer.NonFiniteStateError,
    match=r"at step 2 .*\(first: params/w\).* no checkpoint",
  ):
    guard.check()


def test_save_refuses_a_non_finite_optimizer_state(tmp_path):
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
  state, bad_leaf = _poison_first_moment(_toy_state(mesh))
  manager = checkpointing.make_manager(
    tmp_path / "checkpoints", checkpointing.CheckpointConfig(every=1)
  )
  assert checkpointing.save(manager, 1, _toy_state(mesh))
  manager.wait_until_finished()
  for force in (True, False):  # final/preemption saves and periodic ones
    with pytest.raises(
      FloatingPointError,
      match=f"step 2: 1 of .* \\(first: {bad_leaf}\\)\\. "
      ".*newest checkpoint is step 1",
    ):
      checkpointing.save(manager, 2, state, force=force)
  manager.wait_until_finished()
  assert manager.all_steps() == [1]
  manager.close()


def test_a_restart_never_resumes_from_a_non_finite_checkpoint(tmp_path):
  # A checkpoint written without the check (e.g. by an older version).
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  state, bad_leaf = _poison_first_moment(_toy_state(mesh))
  manager = checkpointing.make_manager(tmp_path / "checkpoints")
  unchecked = ocp.args.StandardSave(checkpointing._state_dict(state))  # pylint: disable=protected-access
  manager.save(1, force=True, args=ocp.args.Composite(state=unchecked))
  manager.wait_until_finished()
  manager.close()
  with pytest.raises(FloatingPointError) as error:
    trainer.train_and_evaluate(
      _config(optimizer=dict(learning_rate=1e-3)),
      tmp_path,
      ToyFlowTask(batch_size=4),
    )
  message = str(error.value)
  assert error.type.__name__ == "NonFiniteStateError", message
  assert "this workdir's checkpoint at step 1" in message, message
  assert bad_leaf in message and "delete " in message, message
  assert _steps_on_disk(tmp_path) == [1]


def test_read_only_manager_opens_without_orbax_notices(tmp_path, caplog):
  """Reading a previous stage (model_init) opens a read-only manager on
  purpose; Orbax's warnings about it would reach every stage's console."""
  checkpointing.make_manager(tmp_path / "ckpt")  # creates the folder
  with caplog.at_level(logging.WARNING):
    checkpointing.make_manager(tmp_path / "ckpt", read_only=True)
  assert not [
    r
    for r in caplog.records
    if "read only" in r.getMessage() or "read_only" in r.getMessage()
  ], caplog.text
