"""Mesh construction, logical-axis resolution and sharded == unsharded."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from kiwi_jax import sharding
from kiwi_jax.testing.toy import ToyModel, toy_loss

GOLDEN = pathlib.Path(__file__).parent / "golden" / "toy_partition_specs.json"
MESHES = {
  "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2},
  "fsdp8": {"fsdp": 8},
}


def test_make_mesh_fills_minus_one():
  mesh = sharding.make_mesh({"fsdp": 2, "data": -1})
  assert mesh.axis_names == sharding.MESH_AXES
  assert dict(zip(mesh.axis_names, mesh.axis_sizes)) == {
    "data": 4,
    "fsdp": 2,
    "tensor": 1,
    "sequence": 1,
  }
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
  "axes, message",
  [
    ({"data": -1, "fsdp": -1}, "At most one"),
    ({"data": 3}, "needs 3 devices"),
    ({"data": -1, "fsdp": 3}, "not divisible"),
    ({"model": 2}, "Unknown mesh axes"),
  ],
)
def test_make_mesh_errors(axes, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(axes)


def test_logical_to_spec_rules():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  # Batch takes data and fsdp; embed then cannot reuse fsdp.
  spec = sharding.logical_to_spec(("act_batch", "embed"), (8, 8), mesh)
  assert spec == P(("data", "fsdp"), None)
  # Non-dividing axes are dropped (prime sizes stay replicated).
  assert sharding.logical_to_spec(("embed", "mlp"), (7, 6), mesh) == P(
    None, "tensor"
  )
  # Extra leading dims (stacked layers) are replicated.
  assert sharding.logical_to_spec(("embed", "mlp"), (3, 4, 4), mesh) == P(
    None, "fsdp", "tensor"
  )
  with pytest.raises(KeyError, match="no rule"):
    sharding.logical_to_spec(("nonsense",), (4,), mesh)


def test_axis_rules_override():
  mesh = sharding.make_mesh({"fsdp": 8})
  with sharding.axis_rules([("embed", None), ("mlp", "fsdp")]):
    assert sharding.logical_to_spec(("embed", "mlp"), (8, 8), mesh) == P(
      None, "fsdp"
    )
  assert sharding.logical_to_spec(("embed", "mlp"), (8, 8), mesh) == P(
    "fsdp", None
  )


def test_constrain_is_noop_without_mesh():
  x = jnp.ones((3, 5))
  assert sharding.constrain(x, ("act_batch", "act_embed")) is x


def _specs_as_json(model, mesh):
  specs = sharding.state_specs(nnx.state(model), mesh)
  flat = nnx.to_flat_state(specs)
  return {
    "/".join(map(str, path)): [
      list(a) if isinstance(a, tuple) else a for a in v.get_value()
    ]
    for path, v in flat
  }


def test_partition_specs_match_golden():
  abstract = sharding.abstract_model(lambda: ToyModel(rngs=nnx.Rngs(0)))
  got = {
    name: _specs_as_json(abstract, sharding.make_mesh(axes))
    for name, axes in MESHES.items()
  }
  golden = json.loads(GOLDEN.read_text())
  assert got == golden, (
    "Partition specs changed; if intended, regenerate with "
    "`python tests/test_sharding.py --regen`.\n" + json.dumps(got, indent=1)
  )


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_sharded_train_step_equals_single_device(mesh_name):
  mesh = sharding.make_mesh(MESHES[mesh_name])
  ctor = lambda: ToyModel(rngs=nnx.Rngs(0))  # noqa: E731
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 6, 16)).astype(np.float32)
  y = rng.normal(size=(8, 6, 8)).astype(np.float32)

  def run(model, xb, yb):
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, xb, yb):
      loss, grads = nnx.value_and_grad(toy_loss)(model, xb, yb)
      opt.update(model, grads)
      return loss

    losses = [step(model, opt, xb, yb) for _ in range(3)]
    return np.array(losses), model(xb)

  ref_losses, ref_out = run(ctor(), jnp.asarray(x), jnp.asarray(y))
  model = sharding.create_sharded(ctor, mesh)
  kernel = model.fc1.kernel[...]
  assert kernel.sharding.spec == sharding.logical_to_spec(
    ("embed", "mlp"), kernel.shape, mesh
  )
  with sharding.use_mesh(mesh):
    xb, yb = sharding.host_to_global((x, y), mesh)
    losses, out = run(model, xb, yb)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=1e-5)


def test_abstract_state_carries_shardings():
  mesh = sharding.make_mesh({"fsdp": 8})
  _, state = sharding.abstract_state(lambda: ToyModel(rngs=nnx.Rngs(0)), mesh)
  leaf = state["fc1"]["kernel"].get_value()
  assert isinstance(leaf, jax.ShapeDtypeStruct)
  assert leaf.sharding.spec == P("fsdp", None)


def test_host_to_global_and_batch_checks():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  batch = {"video": np.zeros((4, 3, 2), np.float32), "ids": np.arange(4)}
  out = sharding.host_to_global(batch, mesh)
  assert out["video"].shape == (4, 3, 2)
  assert out["video"].sharding.spec == P(("data", "fsdp"), None, None)
  assert sharding.check_global_batch(8, mesh) == 8
  with pytest.raises(ValueError, match="divisible by the 4 batch shards"):
    sharding.check_global_batch(6, mesh)


if __name__ == "__main__":
  import sys

  if "--regen" in sys.argv:
    jax.config.update("jax_num_cpu_devices", 8)
    abstract = sharding.abstract_model(lambda: ToyModel(rngs=nnx.Rngs(0)))
    out = {
      name: _specs_as_json(abstract, sharding.make_mesh(axes))
      for name, axes in MESHES.items()
    }
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print("wrote", GOLDEN)
