"""Gradients land on their FSDP shards; a batch the mesh cannot split stops
with a one-line error that names the mesh to use."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from kiwi_jax import sharding
from kiwi_jax.testing.tpu_collectives import collective_counts

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_indivisible_batch_names_the_mesh_to_use():
  import jax  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh({"fsdp": 4}, jax.devices()[:4])
  with pytest.raises(sharding.IndivisibleBatchError) as info:
    sharding.host_to_global({"latents": np.zeros((1, 3), np.float32)}, mesh)
  message = str(info.value)
  assert "\n" not in message
  assert "Global batch size 1 is not divisible by the 4 batch shards" in (
    message
  )
  assert (
    "--config.mesh.data=1 --config.mesh.fsdp=1 --config.mesh.tensor=1 "
    "--config.mesh.sequence=4"
  ) in message
  assert "FSDP_OVER_SEQUENCE_RULES" in message
  out = sharding.host_to_global({"latents": np.zeros((4, 3))}, mesh)
  assert out["latents"].sharding.spec[0] == "fsdp"


def test_suggested_mesh_keeps_what_the_batch_divides():
  import jax  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh({"data": 2, "fsdp": 4}, jax.devices())
  text = sharding.suggest_batch_mesh(2, mesh)
  assert "--config.mesh.data=2 --config.mesh.fsdp=1" in text
  assert "--config.mesh.sequence=4" in text


def test_collective_counts_reads_fused_reduce_scatters():
  hlo = "\n".join(
    [
      "%all-reduce-scatter (input: f32[8,4]) -> f32[2,4] {",
      "  %ar = f32[8,4]{1,0} all-reduce(%input), replica_groups={}",
      "}",
      "ENTRY %main (p: f32[8,4]) -> f32[2,4] {",
      "  %fusion = f32[2,4]{1,0} fusion(%p), kind=kCustom, "
      "calls=%all-reduce-scatter",
      "  %rs = f32[2,4]{1,0} reduce-scatter(%p), dimensions={0}",
      "  %s = f32[]{:T(128)} all-reduce-start(%x), to_apply=%add",
      "  %g = f32[8,4]{1,0} all-gather(%rs), dimensions={0}",
      "}",
    ]
  )
  assert collective_counts(hlo) == {
    "reduce-scatter": 2,
    "all-reduce": 1,
    "all-gather": 1,
    "all-to-all": 0,
    "collective-permute": 0,
  }


@pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None,
  reason="libtpu is not importable (pip install libtpu, "
  "matching jax[tpu]); it compiles the TPU program",
)
def test_toy_step_reduce_scatters_its_weight_gradients():
  libtpu = pathlib.Path(importlib.util.find_spec("libtpu").origin).parents[1]
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": os.pathsep.join([str(ROOT), str(libtpu)]),
  }
  out = subprocess.run(
    [sys.executable, "-m", "kiwi_jax.testing.tpu_collectives"],
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    check=True,
  )
  counts = json.loads(out.stdout.strip().splitlines()[-1])
  # The toy model's three weight matrices (fc1, fc2, readout) are sharded
  # over fsdp: each gradient is reduce-scattered onto its shard. What is
  # all-reduced is replicated: the biases and the scalar norms and loss.
  assert counts["reduce-scatter"] == 3, counts
  assert counts["all-reduce"] <= 4, counts
