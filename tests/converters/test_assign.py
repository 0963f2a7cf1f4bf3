"""The generic converter: lazy checkpoints, loud plans, streaming assign."""

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.converters import assign as A
from kiwi_jax.converters.checkpoint_io import CheckpointError, open_checkpoint
from kiwi_jax.testing.toy import ToyModel

pytestmark = pytest.mark.torch
RNG = np.random.default_rng(0)


def _toy_torch_state():
  return {
    "norm.weight": RNG.normal(size=(16,)).astype(np.float32),
    "fc1.weight": RNG.normal(size=(32, 16)).astype(np.float32),
    "fc1.bias": RNG.normal(size=(32,)).astype(np.float32),
    "fc2.weight": RNG.normal(size=(16, 32)).astype(np.float32),
    "fc2.bias": RNG.normal(size=(16,)).astype(np.float32),
    "readout.weight": RNG.normal(size=(8, 16)).astype(np.float32),
    "readout.bias": RNG.normal(size=(8,)).astype(np.float32),
  }


def _plan():
  maps = [A.KeyMap("norm.weight", ("norm", "weight"))]
  for name in ("fc1", "fc2", "readout"):
    maps.append(A.KeyMap(f"{name}.weight", (name, "kernel"), A.LINEAR))
    maps.append(A.KeyMap(f"{name}.bias", (name, "bias")))
  return maps


def _abstract():
  return nnx.split(nnx.eval_shape(lambda: ToyModel(rngs=nnx.Rngs(0))))


def test_assign_export_round_trip_sharded(tmp_path):
  sd = _toy_torch_state()
  path = A.save_safetensors(sd.items(), tmp_path / "toy.safetensors")
  ckpt = open_checkpoint(path)
  graphdef, abstract = _abstract()
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
  state = A.assign(abstract, _plan(), ckpt, mesh=mesh)
  model = nnx.merge(graphdef, state)
  np.testing.assert_array_equal(model.fc1.kernel[...], sd["fc1.weight"].T)
  assert model.fc1.kernel[...].sharding.spec == jax.sharding.PartitionSpec(
    "fsdp", "tensor"
  )
  back = dict(A.export(nnx.state(model), _plan()))
  assert set(back) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v)


def test_mismatches_are_reported_together(tmp_path):
  sd = _toy_torch_state()
  del sd["fc2.bias"]
  sd["fc1.weight"] = sd["fc1.weight"][:, :15]
  sd["extra.weight"] = np.zeros(3, np.float32)
  ckpt = open_checkpoint(
    A.save_safetensors(sd.items(), tmp_path / "x.safetensors")
  )
  _, abstract = _abstract()
  with pytest.raises(A.CheckpointMismatchError) as err:
    A.assign(abstract, _plan(), ckpt)
  e = err.value
  assert e.missing == ["fc2.bias"]
  assert e.unexpected == ["extra.weight"]
  assert len(e.misshaped) == 1 and "fc1.weight" in e.misshaped[0]
  assert "1 missing keys" in str(e) and "1 unexpected keys" in str(e)
  # Ignored extras are fine; an uncovered parameter is reported.
  plan = [km for km in _plan() if km.jax_path != ("norm", "weight")]
  sd = _toy_torch_state()
  ckpt = open_checkpoint(
    A.save_safetensors(sd.items(), tmp_path / "y.safetensors")
  )
  with pytest.raises(A.CheckpointMismatchError, match="norm/weight"):
    A.assign(abstract, plan, ckpt, ignore_unused=["norm\\..*"])


def test_stacked_layers_and_conv_and_pth(tmp_path):
  import torch

  conv = RNG.normal(size=(5, 3, 1, 2, 2)).astype(np.float32)
  layers = [RNG.normal(size=(4, 6)).astype(np.float32) for _ in range(3)]
  sd = {"model.conv.weight": torch.from_numpy(conv)}
  sd.update(
    {f"model.blocks.{i}.w": torch.from_numpy(w) for i, w in enumerate(layers)}
  )
  torch.save({"model_state": sd}, tmp_path / "m.pth")
  ckpt = open_checkpoint(tmp_path / "m.pth", strip_prefixes=("model.",))
  assert sorted(ckpt) == [
    "blocks.0.w",
    "blocks.1.w",
    "blocks.2.w",
    "conv.weight",
  ]

  class M(nnx.Module):
    def __init__(self):
      self.conv = nnx.Param(np.zeros((1, 2, 2, 3, 5), np.float32))
      self.w = nnx.Param(np.zeros((3, 6, 4), np.float32))

  graphdef, abstract = nnx.split(nnx.eval_shape(M))
  plan = [A.KeyMap("conv.weight", ("conv",), A.CONV)] + [
    A.KeyMap(f"blocks.{i}.w", ("w",), A.LINEAR, layer=i) for i in range(3)
  ]
  state = A.assign(abstract, plan, ckpt, mesh=sharding.make_mesh({"data": 8}))
  m = nnx.merge(graphdef, state)
  np.testing.assert_array_equal(
    m.conv[...], np.transpose(conv, (2, 3, 4, 1, 0))
  )
  np.testing.assert_array_equal(m.w[...][1], layers[1].T)
  back = dict(A.export(nnx.state(m), plan))
  np.testing.assert_array_equal(back["conv.weight"], conv)
  np.testing.assert_array_equal(back["blocks.2.w"], layers[2])


def test_bf16_and_errors(tmp_path):
  x = RNG.normal(size=(4, 3)).astype(ml_dtypes.bfloat16)
  p = A.save_safetensors([("a", x)], tmp_path / "b.safetensors")
  ckpt = open_checkpoint(tmp_path)
  assert ckpt.read("a").dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(ckpt.read("a"), x)
  np.testing.assert_array_equal(ckpt.read_slice("a", (slice(1, 3),)), x[1:3])
  assert ckpt.shape("a") == (4, 3) and p.exists()
  with pytest.raises(CheckpointError, match="does not exist"):
    open_checkpoint(tmp_path / "nope.safetensors")
  (tmp_path / "bad.safetensors").write_bytes(b"garbage")
  with pytest.raises(CheckpointError, match="not a readable"):
    open_checkpoint(tmp_path / "bad.safetensors")
  (tmp_path / "w.npz").write_bytes(b"")
  with pytest.raises(CheckpointError, match="unknown checkpoint format"):
    open_checkpoint(tmp_path / "w.npz")
  assert not list(tmp_path.glob("*.tmp"))
