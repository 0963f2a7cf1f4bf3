"""Meshes fitted to the global batch: the batch axes keep what the batch
divides, the rest of their devices shard the sequence."""

import jax
import ml_collections
import pytest

from kiwi_jax import sharding
from kiwi_jax.plan import run as plan_run
from kiwi_jax.testing.toy_flow import ToyFlowTask
from kiwi_jax.train_lib import run_config, trainer


@pytest.mark.parametrize(
  "sizes, batch, fitted",
  [
    ({"fsdp": 4}, 1, {"fsdp": 1, "sequence": 4}),
    ({"fsdp": 4}, 4, {"fsdp": 4}),
    ({"fsdp": 4}, 8, {"fsdp": 4}),
    ({"fsdp": 4}, 6, {"fsdp": 2, "sequence": 2}),
    ({"data": 2, "fsdp": 4}, 2, {"data": 2, "sequence": 4}),
    ({"fsdp": 8, "sequence": 2}, 1, {"sequence": 16}),
    ({"fsdp": 2, "tensor": 2}, 1, {"tensor": 2, "sequence": 2}),
  ],
)
def test_fit_batch_axes(sizes, batch, fitted):
  full = sharding.resolve_mesh_axes(sizes, _count(sizes))
  expected = {name: fitted.get(name, 1) for name in sharding.MESH_AXES}
  got = sharding.fit_batch_axes(full, batch)
  assert got == expected
  assert _count(got) == _count(full)


def _count(sizes):
  out = 1
  for v in sizes.values():
    out *= v
  return out


def test_resolve_mesh_axes_fills_and_names_errors():
  assert sharding.resolve_mesh_axes({"fsdp": -1, "tensor": 2}, 8) == {
    "data": 1,
    "fsdp": 4,
    "tensor": 2,
    "sequence": 1,
  }
  assert sharding.resolve_mesh_axes(None, 4)["data"] == 4
  with pytest.raises(ValueError, match="Unknown mesh axes"):
    sharding.resolve_mesh_axes({"model": 2}, 2)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.resolve_mesh_axes({"fsdp": -1, "tensor": 3}, 8)
  with pytest.raises(ValueError, match="needs 4 devices"):
    sharding.resolve_mesh_axes({"fsdp": 4}, 8)


def _config(fit):
  return ml_collections.ConfigDict(
    dict(
      seed=0,
      total_steps=2,
      log_every=100,
      log_first_steps=0,
      mesh=dict(fsdp=-1),
      fit_mesh_to_batch=fit,
      optimizer=dict(learning_rate=1e-2),
      precision=dict(compute_dtype=None),
      tensorboard=False,
      checkpoint=dict(every=100, keep=1, async_save=False),
    )
  )


def test_trainer_fits_the_mesh_to_a_small_batch(tmp_path):
  assert jax.device_count() == 8
  # fsdp=8 cannot shard a batch of 2: as configured, a named error ...
  with pytest.raises(sharding.IndivisibleBatchError, match="sequence=4"):
    trainer.train_and_evaluate(
      _config(False), tmp_path / "plain", ToyFlowTask(batch_size=2)
    )
  # ... fitted, fsdp=2 x sequence=4 trains.
  state = trainer.train_and_evaluate(
    _config(True), tmp_path / "fit", ToyFlowTask(batch_size=2)
  )
  assert int(state.step) == 2
  leaf = jax.tree.leaves(state.params)[0]
  assert dict(leaf.sharding.mesh.shape) == {
    "data": 1,
    "fsdp": 2,
    "tensor": 1,
    "sequence": 4,
  }


def test_fit_needs_a_task_that_knows_its_batch(tmp_path):
  class NoBatch(ToyFlowTask):
    global_batch_size = None

  with pytest.raises(run_config.ConfigError, match="global_batch_size"):
    trainer.train_and_evaluate(_config(True), tmp_path, NoBatch())


def test_plan_mesh_is_the_trainers_unless_mesh_is_given():
  from configs import kiwi_wan22_5b  # pylint: disable=g-import-not-at-top

  config = kiwi_wan22_5b.get_config("stage=2")
  assert config.fit_mesh_to_batch and config.kiwi.data.batch_size == 1
  fitted = plan_run.fitted_mesh_sizes(config, None, 4)
  assert fitted == {"data": 1, "fsdp": 1, "tensor": 1, "sequence": 4}
  # The command without --mesh: the flag's empty string parses to {}.
  no_flag = plan_run.fitted_mesh_sizes(config, plan_run.parse_mesh(""), 4)
  assert no_flag == fitted
  given = plan_run.fitted_mesh_sizes(config, {"fsdp": 4}, 4)
  assert given["fsdp"] == 4 and given["sequence"] == 1
