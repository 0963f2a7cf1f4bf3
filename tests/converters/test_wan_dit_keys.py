"""Wan DiT converter: key maps, prefixes, layouts, loud failures."""

import numpy as np
import pytest
from flax import nnx

from kiwi_jax.models.dit import WanDiT, WanDiTConfig

pytestmark = pytest.mark.torch

CFG = WanDiTConfig.from_variant(
  "tiny", num_layers=2, source_condition=True, reference_condition=True
)


def _wan_tensors(cfg, seed=0):
  """A random JAX model exported to original Wan / DiffSynth names."""
  from kiwi_jax.converters import assign, wan_dit

  model = WanDiT(cfg, rngs=nnx.Rngs(seed))
  maps = wan_dit.keymaps(cfg, "wan")
  tensors = dict(assign.export(nnx.state(model, nnx.Param), maps))
  return model, {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def _save(tensors, path):
  from safetensors.numpy import save_file

  save_file(tensors, str(path))
  return path


def _assert_same_params(a, b):
  sa, sb = nnx.state(a, nnx.Param), nnx.state(b, nnx.Param)
  for (path, va), (_, vb) in zip(nnx.to_flat_state(sa), nnx.to_flat_state(sb)):
    np.testing.assert_array_equal(
      va.get_value(), vb.get_value(), err_msg=str(path)
    )


def test_keymaps_cover_reference_names():
  from kiwi_jax.converters import wan_dit

  keys = {m.torch_key for m in wan_dit.keymaps(CFG, "wan")}
  # 15 top-level tensors + 27 per block + 2 per conditional embedder.
  assert len(keys) == 15 + 27 * CFG.num_layers + 4
  for name in (
    "blocks.1.self_attn.norm_q.weight",
    "blocks.0.norm3.bias",
    "blocks.1.ffn.2.weight",
    "head.head.weight",
    "time_projection.1.bias",
    "vae_condition.patch_embedding.weight",
    "ref_vae_condition.patch_embedding.bias",
  ):
    assert name in keys
  diffusers = {m.torch_key for m in wan_dit.keymaps(CFG, "diffusers")}
  for name in (
    "blocks.1.attn2.to_out.0.weight",
    "blocks.0.norm2.weight",
    "blocks.0.ffn.net.0.proj.bias",
    "scale_shift_table",
    "blocks.1.scale_shift_table",
    "proj_out.weight",
    "condition_embedder.time_proj.weight",
    "condition_embedder.text_embedder.linear_2.bias",
  ):
    assert name in diffusers


def test_kiwi_checkpoint_with_prefixes_and_mllm_keys(tmp_path):
  from kiwi_jax.converters import wan_dit

  model, tensors = _wan_tensors(CFG)
  # Kiwi training checkpoint: DiT under ``dit.``, embedders top level, MLLM
  # tensors alongside (skipped by this converter).
  kiwi = {
    (k if "vae_condition" in k else "dit." + k): v for k, v in tensors.items()
  }
  kiwi["mllm.image_queries.q"] = np.zeros((4, 8), np.float32)
  loaded = wan_dit.load_wan_dit(_save(kiwi, tmp_path / "k.safetensors"), CFG)
  _assert_same_params(model, loaded)
  # Original Wan release: ``model.`` prefix, no Kiwi embedders.
  stock = CFG.replace(source_condition=False, reference_condition=False)
  wan = {
    "model." + k: v for k, v in tensors.items() if "vae_condition" not in k
  }
  loaded = wan_dit.load_wan_dit(_save(wan, tmp_path / "w.safetensors"), stock)
  assert loaded.vae_condition is None
  np.testing.assert_array_equal(
    loaded.blocks.ffn.fc1.kernel[...], model.blocks.ffn.fc1.kernel[...]
  )


def test_kiwi_diffusers_folders_roundtrip(tmp_path):
  from kiwi_jax.converters import wan_dit

  cfg = CFG.replace(ref_pad_first=True)
  model, tensors = _wan_tensors(cfg, seed=1)
  src = _save(tensors, tmp_path / "kiwi.safetensors")
  out = wan_dit.convert_to_diffusers(src, tmp_path / "diffusers", cfg)
  assert sorted(p.name for p in out.iterdir()) == [
    "ref_embedder",
    "source_embedder",
    "transformer",
  ]
  loaded = wan_dit.load_kiwi_diffusers(out)
  assert loaded.cfg.ref_pad_first and loaded.cfg.source_condition
  _assert_same_params(model, loaded)


def test_mismatches_reported_together_and_nothing_written(tmp_path):
  from kiwi_jax.converters import assign, wan_dit

  _, tensors = _wan_tensors(CFG)
  del tensors["blocks.1.cross_attn.v.bias"]
  tensors["blocks.0.self_attn.q.weight"] = np.zeros((5, 5), np.float32)
  tensors["blocks.0.self_attn.lora_A.weight"] = np.zeros((2, 2), np.float32)
  src = _save(tensors, tmp_path / "bad.safetensors")
  dst = tmp_path / "out"
  with pytest.raises(assign.CheckpointMismatchError) as info:
    wan_dit.convert_to_diffusers(src, dst, CFG)
  message = str(info.value)
  assert "blocks.1.cross_attn.v.bias" in message
  assert "blocks.0.self_attn.q.weight: checkpoint (5, 5)" in message
  assert "blocks.0.self_attn.lora_A.weight" in message
  assert info.value.missing == ["blocks.1.cross_attn.v.bias"]
  assert not dst.exists()


def test_unknown_layout_is_named(tmp_path):
  from kiwi_jax.converters import checkpoint_io, wan_dit

  src = _save(
    {"encoder.conv1.weight": np.zeros((2, 2), np.float32)},
    tmp_path / "vae.safetensors",
  )
  with pytest.raises(checkpoint_io.CheckpointError, match="vae.safetensors"):
    wan_dit.load_wan_dit(src, CFG)


def test_lora_only_checkpoint_merges_into_base(tmp_path):
  from kiwi_jax.converters import checkpoint_io, wan_dit

  stock = CFG.replace(source_condition=False, reference_condition=False)
  _, base = _wan_tensors(stock, seed=2)
  rng = np.random.default_rng(0)
  d = stock.dim
  a = rng.standard_normal((4, d), dtype=np.float32)
  b = rng.standard_normal((d, 4), dtype=np.float32)
  # Kiwi 14B-style checkpoint: DiT LoRA pairs, embedders, MLLM tensors.
  kiwi = {
    "dit.blocks.1.cross_attn.o.lora_A.default.weight": a,
    "dit.blocks.1.cross_attn.o.lora_B.default.weight": b,
    "mllm.connetor.0.bias": np.zeros((d,), np.float32),
  }
  kiwi_path = _save(kiwi, tmp_path / "kiwi_lora.safetensors")
  base_path = _save(
    {"model." + k: v for k, v in base.items()}, tmp_path / "base.safetensors"
  )
  model = wan_dit.load_wan_dit(kiwi_path, stock, base=base_path)
  merged = base["blocks.1.cross_attn.o.weight"] + b @ a
  np.testing.assert_allclose(
    model.blocks.cross_attn.o.kernel[1], merged.T, rtol=1e-6, atol=1e-5
  )
  np.testing.assert_array_equal(
    model.blocks.cross_attn.o.kernel[0], base["blocks.0.cross_attn.o.weight"].T
  )
  with pytest.raises(checkpoint_io.CheckpointError, match="without a base"):
    wan_dit.load_wan_dit(kiwi_path, stock)
