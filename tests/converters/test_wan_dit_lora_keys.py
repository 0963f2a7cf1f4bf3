"""Wan DiT converter with the 14B DiT LoRA: peft keys
``blocks.{i}.{self_attn,cross_attn}.{q,k,v,o}.lora_{A,B}.default.weight`` and
``blocks.{i}.ffn.{0,2}.lora_*`` kept as stacked factors or merged, fresh
factors over a base checkpoint, and export with the LoRA merged."""

import numpy as np
import pytest
from flax import nnx

from kiwi_jax.layers import lora
from kiwi_jax.models.dit import WanDiT, WanDiTConfig

pytestmark = pytest.mark.torch

STOCK = WanDiTConfig.from_variant("tiny")
RANK = 3
LINEARS = [f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"] + [
  "ffn.0",
  "ffn.2",
]


def _save(tensors, path):
  from safetensors.numpy import save_file

  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
  return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """Base Wan tensors and a Kiwi 14B-style LoRA-only DiT checkpoint."""
  from kiwi_jax.converters import assign, wan_dit

  root = tmp_path_factory.mktemp("dit_lora")
  model = WanDiT(STOCK, rngs=nnx.Rngs(0))
  base = dict(
    assign.export(nnx.state(model, nnx.Param), wan_dit.keymaps(STOCK, "wan"))
  )
  rng = np.random.default_rng(0)
  factors = {}
  for i in range(STOCK.num_layers):
    for name in LINEARS:
      out, fan_in = base[f"blocks.{i}.{name}.weight"].shape
      factors[f"dit.blocks.{i}.{name}.lora_A.default.weight"] = (
        0.3 * rng.standard_normal((RANK, fan_in))
      ).astype(np.float32)
      factors[f"dit.blocks.{i}.{name}.lora_B.default.weight"] = (
        0.3 * rng.standard_normal((out, RANK))
      ).astype(np.float32)
  return (
    base,
    factors,
    _save(
      {"model." + k: v for k, v in base.items()}, root / "base.safetensors"
    ),
    _save(factors, root / "kiwi_lora.safetensors"),
  )


def test_lora_keymaps_name_every_block_linear():
  from kiwi_jax.converters import wan_dit

  cfg = STOCK.replace(lora_rank=RANK)
  keys = {m.torch_key for m in wan_dit.lora_keymaps(cfg)}
  assert len(keys) == STOCK.num_layers * len(LINEARS) * 2
  assert "blocks.1.cross_attn.o.lora_B.default.weight" in keys
  assert "blocks.0.ffn.2.lora_A.default.weight" in keys
  bare = {m.torch_key for m in wan_dit.lora_keymaps(cfg, adapter=None)}
  assert "blocks.0.ffn.0.lora_A.weight" in bare
  diffusers = {m.torch_key for m in wan_dit.lora_keymaps(cfg, "diffusers")}
  assert "blocks.1.attn2.to_out.0.lora_B.default.weight" in diffusers


def test_kept_factors_load_per_layer_and_merge_like_the_reference(
  checkpoints, tmp_path
):
  from kiwi_jax.converters import wan_dit

  base, factors, base_path, kiwi_path = checkpoints
  kept = wan_dit.load_wan_dit(
    kiwi_path, STOCK.replace(lora_rank=RANK), base=base_path
  )
  a = factors["dit.blocks.1.ffn.0.lora_A.default.weight"]
  b = factors["dit.blocks.1.ffn.0.lora_B.default.weight"]
  np.testing.assert_array_equal(kept.blocks.ffn.fc1.lora_a[...][1], a.T)
  np.testing.assert_array_equal(kept.blocks.ffn.fc1.lora_b[...][1], b.T)
  np.testing.assert_array_equal(
    kept.blocks.ffn.fc1.kernel[...][1], base["blocks.1.ffn.0.weight"].T
  )
  # rank 0: the converter merges W + B @ A (fp32) instead.
  merged = wan_dit.load_wan_dit(kiwi_path, STOCK, base=base_path)
  np.testing.assert_allclose(
    merged.blocks.ffn.fc1.kernel[...][1],
    (base["blocks.1.ffn.0.weight"] + b @ a).T,
    atol=1e-5,
  )
  lora.merge_lora(kept)
  kept_state = dict(
    nnx.to_flat_state(
      nnx.state(kept, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    )
  )
  for path, v in nnx.to_flat_state(nnx.state(merged)):
    np.testing.assert_allclose(
      kept_state[path].get_value(), v.get_value(), atol=1e-5, err_msg=str(path)
    )
  # Export merges the factors (diffusers has no LoRA keys) and round trips.
  unmerged = wan_dit.load_wan_dit(
    kiwi_path, STOCK.replace(lora_rank=RANK), base=base_path
  )
  wan_dit.save_diffusers(unmerged, tmp_path / "transformer")
  back = wan_dit.load_wan_dit(tmp_path / "transformer", STOCK)
  for path, v in nnx.to_flat_state(nnx.state(back)):
    np.testing.assert_allclose(
      v.get_value(), kept_state[path].get_value(), atol=1e-5, err_msg=str(path)
    )


def test_base_only_checkpoint_gets_fresh_zero_b_factors(checkpoints):
  from kiwi_jax.converters import wan_dit

  base, _, base_path, _ = checkpoints
  model = wan_dit.load_wan_dit(base_path, STOCK.replace(lora_rank=RANK))
  for layer in lora.lora_layers(model):
    np.testing.assert_array_equal(layer.lora_b[...], 0)
    assert np.abs(np.asarray(layer.lora_a[...])).max() > 0
  np.testing.assert_array_equal(
    model.blocks.self_attn.q.kernel[...][0],
    base["blocks.0.self_attn.q.weight"].T,
  )


def test_half_a_pair_is_named(checkpoints, tmp_path):
  from kiwi_jax.converters import wan_dit
  from kiwi_jax.converters.assign import CheckpointMismatchError

  _, factors, base_path, _ = checkpoints
  partial = {
    k: v
    for k, v in factors.items()
    if k != "dit.blocks.0.self_attn.k.lora_B.default.weight"
  }
  path = _save(partial, tmp_path / "partial.safetensors")
  with pytest.raises(
    CheckpointMismatchError, match=r"blocks\.0\.self_attn\.k\.lora_B\.default"
  ):
    wan_dit.load_wan_dit(path, STOCK.replace(lora_rank=RANK), base=base_path)
