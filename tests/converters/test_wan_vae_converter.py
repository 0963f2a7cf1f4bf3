"""Wan VAE converter: key layouts, wrappers, loud mismatches, export."""

import os
import re

import numpy as np
import pytest
import torch
import wan_vae_reference as ref
from flax import nnx

from kiwi_jax.converters.assign import CheckpointMismatchError
from kiwi_jax.converters.wan_vae import (
  diffusers_config,
  export_tensors,
  keymaps,
  load_wan_vae,
  save_wan_vae,
)
from kiwi_jax.models.vae import WanVAE, WanVAEConfig

pytestmark = pytest.mark.torch


def _original_to_diffusers_22(key: str) -> str:
  """Wan2.2_VAE.pth -> diffusers names, re-stated from diffusers'
  ``scripts/convert_wan_to_diffusers.py::convert_vae_22`` (facts only)."""
  fixed = {
    "conv1": "quant_conv",
    "conv2": "post_quant_conv",
    "encoder.conv1": "encoder.conv_in",
    "decoder.conv1": "decoder.conv_in",
    "encoder.head.0": "encoder.norm_out",
    "encoder.head.2": "encoder.conv_out",
    "decoder.head.0": "decoder.norm_out",
    "decoder.head.2": "decoder.conv_out",
  }
  module, leaf = key.rsplit(".", 1)
  if module in fixed:
    return f"{fixed[module]}.{leaf}"
  m = re.fullmatch(r"(encoder|decoder)\.middle\.(\d)\.(.*)", module)
  if m:
    part, idx, rest = m.groups()
    inner = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}[idx]
    module = f"{part}.mid_block.{inner}.{rest}"
  m = re.fullmatch(
    r"(encoder|decoder)\.(down|up)samples\.(\d+)\."
    r"(?:down|up)samples\.(\d+)\.(.*)",
    module,
  )
  if m:
    part, kind, stage, idx, rest = m.groups()
    if rest.startswith(("resample", "time_conv")):
      sampler = "downsampler" if kind == "down" else "upsampler"
      module = f"{part}.{kind}_blocks.{stage}.{sampler}.{rest}"
    else:
      module = f"{part}.{kind}_blocks.{stage}.resnets.{idx}.{rest}"
  for old, new in (
    ("residual.0", "norm1"),
    ("residual.2", "conv1"),
    ("residual.3", "norm2"),
    ("residual.6", "conv2"),
    ("shortcut", "conv_shortcut"),
  ):
    if module.endswith("." + old):
      module = module[: -len(old)] + new
  return f"{module}.{leaf}"


def _diffusers_dir(cfg, tmp_path, seed=0):
  vae = ref.build_diffusers(cfg, seed)
  path = tmp_path / "vae"
  vae.save_pretrained(path)
  return vae, path


def _assert_same_state(a, b):
  fa, fb = (
    dict(nnx.to_flat_state(nnx.state(a))),
    dict(nnx.to_flat_state(nnx.state(b))),
  )
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(
      np.asarray(fa[k].get_value()), np.asarray(fb[k].get_value()), err_msg=k
    )


def test_original_layout_22_matches_diffusers_names(tmp_path):
  cfg = ref.tiny_config("wan2.2")
  vae, path = _diffusers_dir(cfg, tmp_path)
  model = load_wan_vae(path)
  want = vae.state_dict()
  got = dict(export_tensors(model, "original"))
  renamed = {_original_to_diffusers_22(k): v for k, v in got.items()}
  assert renamed.keys() == want.keys()
  for k, v in renamed.items():
    np.testing.assert_array_equal(v, want[k].numpy(), err_msg=k)


def test_original_layout_21_matches_diffusers_single_file_converter(tmp_path):
  """diffusers' own Wan2.1 .pth converter (hard-wired to num_res_blocks=2)
  maps our original-layout export back onto the diffusers state dict."""
  from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

  cfg = ref.tiny_config("wan2.1").replace(num_res_blocks=2)
  vae, path = _diffusers_dir(cfg, tmp_path)
  model = load_wan_vae(path)
  original = {
    k: torch.from_numpy(np.array(v))
    for k, v in export_tensors(model, "original")
  }
  converted = convert_wan_vae_to_diffusers(original)
  want = vae.state_dict()
  assert converted.keys() == want.keys()
  for k in want:
    torch.testing.assert_close(converted[k], want[k], rtol=0, atol=0)


@pytest.mark.parametrize(
  "wrap", ["plain", "model_prefix", "module_vae_prefix", "model_state"]
)
def test_pth_wrappers_load_identically(tmp_path, wrap):
  cfg = ref.tiny_config("wan2.1")
  _, path = _diffusers_dir(cfg, tmp_path)
  model = load_wan_vae(path)
  tensors = {
    k: torch.from_numpy(np.array(v))
    for k, v in export_tensors(model, "original")
  }
  if wrap == "model_prefix":
    tensors = {f"model.{k}": v for k, v in tensors.items()}
  elif wrap == "module_vae_prefix":
    tensors = {f"module.vae.{k}": v for k, v in tensors.items()}
  elif wrap == "model_state":
    tensors = {"model_state": tensors}
  pth = tmp_path / "Wan2.1_VAE.pth"
  torch.save(tensors, pth)
  _assert_same_state(load_wan_vae(pth, cfg), model)


def test_round_trip_both_layouts(tmp_path):
  cfg = ref.tiny_config("wan2.2")
  _, path = _diffusers_dir(cfg, tmp_path)
  model = load_wan_vae(path)
  pth = save_wan_vae(model, tmp_path / "out" / "Wan2.2_VAE.pth", "original")
  st = save_wan_vae(model, tmp_path / "out" / "vae.safetensors", "diffusers")
  assert sorted(os.listdir(tmp_path / "out")) == [
    "Wan2.2_VAE.pth",
    "vae.safetensors",
  ]
  _assert_same_state(load_wan_vae(pth, cfg), model)
  _assert_same_state(load_wan_vae(st, cfg), model)


def test_mismatch_lists_every_problem(tmp_path):
  cfg = ref.tiny_config("wan2.1")
  _, path = _diffusers_dir(cfg, tmp_path)
  tensors = {
    k: torch.from_numpy(np.array(v))
    for k, v in export_tensors(load_wan_vae(path), "original")
  }
  del tensors["decoder.head.2.bias"]
  tensors["encoder.conv1.weight"] = torch.zeros(5, 3, 3, 3, 3)
  tensors["encoder.extra.weight"] = torch.zeros(1)
  pth = tmp_path / "bad.pth"
  torch.save(tensors, pth)
  with pytest.raises(CheckpointMismatchError) as err:
    load_wan_vae(pth, cfg)
  msg = str(err.value)
  for needle in (
    "decoder.head.2.bias",
    "encoder.conv1.weight",
    "encoder.extra.weight",
    "missing",
    "unexpected",
    "mis-shaped",
  ):
    assert needle in msg


def test_export_rejects_unknown_format_and_writes_nothing(tmp_path):
  cfg = WanVAEConfig.from_variant("wan2.1-tiny")
  model = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="safetensors or .pth"):
    save_wan_vae(model, tmp_path / "vae.bin")
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("variant", ["wan2.2", "wan2.1"])
def test_full_size_keys_and_shapes_match_diffusers(variant):
  """The full-size plan covers diffusers' full-size state dict exactly (196
  keys for 2.2), with every shape agreeing after the layout transform."""
  cfg = WanVAEConfig.from_variant(variant)
  from diffusers import AutoencoderKLWan

  with torch.device("meta"):
    vae = AutoencoderKLWan(**diffusers_config(cfg))
  want = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
  plan = keymaps(cfg, "diffusers")
  assert {km.torch_key for km in plan} == set(want)
  abstract = dict(
    nnx.to_flat_state(
      nnx.state(nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))
    )
  )
  for km in plan:
    assert km.transform.shape(want[km.torch_key]) == tuple(
      abstract[km.jax_path].get_value().shape
    ), km.torch_key
  assert len(plan) == {"wan2.2": 196, "wan2.1": 194}[variant]
