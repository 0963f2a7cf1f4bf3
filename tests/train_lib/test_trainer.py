"""The trainer: non-finite stop, restore order (resume, model_init)."""

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.testing.toy_flow import ToyFlowTask, ToyVelocityNet, toy_examples
from kiwi_jax.train_lib import checkpointing, optimizers, train_step, trainer
from kiwi_jax.train_lib.train_state import ModelSplit, Precision


def _config(**overrides):
  config = dict(
    seed=0,
    total_steps=2,
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


class PoisonTask(ToyFlowTask):
  """Unshuffled data; the loss turns NaN on the batch holding example 9
  (batch size 4: the third batch, so step 3)."""

  def dataset(self, shard_index=0, shard_count=1):
    return (
      grain.MapDataset.source(toy_examples(self.num_examples))
      .repeat(None)
      .batch(self.batch_size)
    )

  def loss_fn(self, model, batch, rng):
    loss, aux = super().loss_fn(model, batch, rng)
    return jnp.where(jnp.any(batch["index"] == 9), jnp.nan, loss), aux


def test_preemption_then_non_finite_loss(tmp_path, monkeypatch):
  config = _config(total_steps=5, checkpoint=dict(every=100, keep=5))
  # A preemption notice at step 2: save it, exit cleanly.
  monkeypatch.setattr(
    ocp.CheckpointManager, "reached_preemption", lambda self, step: step == 2
  )
  state = trainer.train_and_evaluate(config, tmp_path, PoisonTask(batch_size=4))
  assert int(state.step) == 2
  monkeypatch.undo()
  # The restart continues at step 3, whose loss is NaN: the run stops naming
  # it and saves nothing from then on.
  with pytest.raises(trainer.NonFiniteLossError, match="at step 3 "):
    trainer.train_and_evaluate(
      _config(total_steps=5, checkpoint=dict(every=1, keep=5)),
      tmp_path,
      PoisonTask(batch_size=4),
    )
  manager = checkpointing.make_manager(tmp_path / "checkpoints", read_only=True)
  assert manager.all_steps() == [2]


class HookTask(ToyFlowTask):
  """Records its sample/eval hook calls; samples a tiny video."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.calls = []

  def sample(self, model, step, writer):
    video = np.linspace(0, 1, 5 * 16 * 16 * 3).reshape(5, 16, 16, 3)
    writer.write_videos(step, {"sample": video})
    self.calls.append(("sample", step, type(model).__name__))

  def evaluate(self, model, step):
    self.calls.append(("evaluate", step, type(model).__name__))
    return {"eval/kernel_mean": float(jnp.mean(model.mlp.fc1.kernel[...]))}


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory):
  """A short 'stage 1' run that trains only the MLP, with hooks."""
  workdir = tmp_path_factory.mktemp("stage1")
  task = HookTask(batch_size=4, trainable=("^mlp/",), frozen=())
  config = _config(sample_every=2, eval_every=1)
  state = trainer.train_and_evaluate(config, workdir, task)
  assert task.calls == [
    ("evaluate", 1, "ToyVelocityNet"),
    ("sample", 2, "ToyVelocityNet"),
    ("evaluate", 2, "ToyVelocityNet"),
  ]
  # A restart that finds the final checkpoint redoes the final hooks only.
  task.calls.clear()
  trainer.train_and_evaluate(config, workdir, task)
  assert [c[:2] for c in task.calls] == [("sample", 2), ("evaluate", 2)]
  assert list((workdir / "videos").glob("sample_2.mp4"))
  return workdir, jax.device_get(state)


def _split(trainable, frozen=(), dim=16, mesh=None):
  return ModelSplit.build(
    lambda: ToyVelocityNet(dim=dim, rngs=nnx.Rngs(1)),
    trainable,
    frozen,
    mesh=mesh,
    precision=Precision(compute_dtype=None),
  )


def test_model_init_resplits_weights_for_the_next_stage(stage_one):
  workdir, final = stage_one
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
  split = _split(trainable=(".*",), frozen=("^source_proj/",), mesh=mesh)
  params, frozen = checkpointing.restore_weights(workdir / "checkpoints", split)
  # Stage 1 trained mlp/*; stage 2 trains everything but source_proj.
  np.testing.assert_array_equal(
    params["mlp"]["fc1"]["kernel"], final.params["mlp"]["fc1"]["kernel"]
  )
  np.testing.assert_array_equal(
    params["in_proj"]["kernel"], final.frozen["in_proj"]["kernel"]
  )
  np.testing.assert_array_equal(
    frozen["source_proj"]["kernel"], final.frozen["source_proj"]["kernel"]
  )
  assert params["mlp"]["fc1"]["kernel"].sharding.spec == (
    jax.sharding.PartitionSpec("fsdp", "tensor")
  )
  # A fresh optimiser and step 0 around those weights.
  optimizer = optimizers.make_optimizer(optimizers.OptimizerConfig())
  state = train_step.state_from_weights(
    params, frozen, split, optimizer, 0, mesh
  )
  assert int(state.step) == 0


def test_model_init_mismatch_lists_every_problem(stage_one):
  workdir, _ = stage_one
  with pytest.raises(ValueError, match="mis-shaped") as error:
    checkpointing.restore_weights(
      workdir / "checkpoints", _split((".*",), dim=8)
    )
  assert "in_proj/kernel" in str(error.value)


class _ToyWithAdapter(ToyVelocityNet):
  """The toy net plus a parameter a stage-1 checkpoint does not have."""

  def __init__(self, *, rngs):
    super().__init__(dim=16, rngs=rngs)
    self.adapter = nnx.Param(jnp.ones((3,)))


def test_model_init_starts_named_missing_parameters_fresh(stage_one):
  workdir, final = stage_one
  split = ModelSplit.build(
    lambda: _ToyWithAdapter(rngs=nnx.Rngs(1)),
    (".*",),
    precision=Precision(compute_dtype=None),
  )
  with pytest.raises(ValueError, match="adapter"):
    checkpointing.restore_weights(workdir / "checkpoints", split)
  asked = []

  def fresh(names):
    asked.extend(names)
    return {"adapter": jnp.full((3,), 7.0)}

  params, _ = checkpointing.restore_weights(
    workdir / "checkpoints", split, fresh=fresh
  )
  assert asked == ["adapter"]
  np.testing.assert_array_equal(params["adapter"], 7.0)
  np.testing.assert_array_equal(
    params["mlp"]["fc1"]["kernel"], final.params["mlp"]["fc1"]["kernel"]
  )


def test_resume_restores_the_full_state_from_another_run(stage_one, tmp_path):
  workdir, final = stage_one
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  split = _split(trainable=("^mlp/",), mesh=mesh)
  optimizer = optimizers.make_optimizer(
    optimizers.OptimizerConfig(learning_rate=1e-2)
  )
  abstract = train_step.abstract_train_state(split, optimizer, mesh)
  manager = checkpointing.make_manager(tmp_path / "checkpoints")

  def fail(*_):
    raise AssertionError("must not initialise")

  state, source = checkpointing.restore_or_initialize(
    manager,
    abstract,
    init_from_scratch=fail,
    init_from_weights=fail,
    split=split,
    resume=str(workdir / "checkpoints"),
    model_init="/nonexistent",
  )
  assert source.startswith("resume") and int(state.step) == 2
  jax.tree.map(
    np.testing.assert_array_equal, jax.device_get(state.params), final.params
  )
  jax.tree.map(
    np.testing.assert_array_equal,
    jax.device_get(state.opt_state),
    final.opt_state,
  )
