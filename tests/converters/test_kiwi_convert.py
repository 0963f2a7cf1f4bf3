"""The Kiwi converter: every training stage, LoRA kept or merged, loud
failures that write nothing, config inference, CLI and diffusers export.

Values are checked parameter by parameter against the fake model's truth;
the forward itself is checked in test_kiwi_parity.py.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import kiwi_fakes  # noqa: E402
from flax import nnx  # noqa: E402

from kiwi_jax import sharding  # noqa: E402
from kiwi_jax.converters import cli  # noqa: E402
from kiwi_jax.converters.assign import CheckpointMismatchError  # noqa: E402
from kiwi_jax.converters.kiwi import convert as kiwi_conv  # noqa: E402
from kiwi_jax.converters.kiwi import sources as kiwi_sources  # noqa: E402
from kiwi_jax.converters.kiwi.export import export_diffusers  # noqa: E402
from kiwi_jax.models.kiwi import checkpoint as kiwi_ckpt  # noqa: E402
from kiwi_jax.models.kiwi.config import KiwiEditConfig  # noqa: E402
from kiwi_jax.models.mllm import lora as lora_lib  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

CFG = KiwiEditConfig.from_variant("tiny")


@pytest.fixture(scope="module")
def truth():
  return kiwi_fakes.truth(CFG)


@pytest.fixture(scope="module")
def lora():
  return kiwi_fakes.lora_factors(CFG)


def qproj_kernel(model, layer=0):
  attn = model.mllm.language_model.layers[layer].self_attn
  return np.asarray(attn.q_proj.kernel[...])


def test_stage1_converts_and_reports_what_is_absent(truth, lora, tmp_path):
  paths = kiwi_fakes.write_diffsynth(truth, lora, CFG, tmp_path / "s", stage=1)
  sources = kiwi_sources.from_diffsynth(**paths)
  out, rep = kiwi_conv.convert(sources, tmp_path / "out", CFG)
  comp = rep["components"]
  for absent in (
    "video_queries",
    "ref_queries",
    "ref_connector",
    "vae_condition",
    "ref_vae_condition",
  ):
    assert comp[absent] == "absent", absent
  assert comp["dit"].startswith("base ")  # frozen in stage 1
  model = kiwi_ckpt.load(out)
  assert model.cfg.modes() == ("image",)
  assert model.video_queries is None and model.dit.vae_condition is None
  with pytest.raises(ValueError, match="no video queries"):
    model.queries("video")
  np.testing.assert_array_equal(
    model.image_queries.q[...], truth["mllm.image_queries"]
  )
  # The merged LoRA: base + B @ A is the truth.
  np.testing.assert_allclose(
    qproj_kernel(model),
    truth["qwen.model.layers.0.self_attn.q_proj.weight"].T,
    atol=1e-6,
  )
  saved = json.loads((out / "conversion_report.json").read_text())
  assert saved["components"] == comp


def test_stage2_takes_the_fine_tuned_dit(truth, lora, tmp_path):
  paths = kiwi_fakes.write_diffsynth(truth, lora, CFG, tmp_path / "s", stage=2)
  out, rep = kiwi_conv.convert(
    kiwi_sources.from_diffsynth(**paths), tmp_path / "out", CFG
  )
  assert "fine-tuned" in rep["components"]["dit"]
  model = kiwi_ckpt.load(out)
  assert model.cfg.modes() == ("image", "video")
  np.testing.assert_allclose(
    np.asarray(model.dit.blocks.self_attn.q.kernel[...])[1],
    truth["dit.blocks.1.self_attn.q.weight"].T,
  )
  # Restored straight into shardings on an 8-device mesh.
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = kiwi_ckpt.load(out, mesh=mesh)
  kernel = sharded.dit.blocks.ffn.fc1.kernel[...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(
    None, "fsdp", "tensor"
  )
  np.testing.assert_array_equal(kernel, model.dit.blocks.ffn.fc1.kernel[...])


def test_reference_checkpoint_needs_ref_pad_first(truth, lora, tmp_path):
  paths = kiwi_fakes.write_diffsynth(truth, lora, CFG, tmp_path / "s")
  with pytest.raises(ValueError, match="ref_pad_first"):
    kiwi_conv.convert(
      kiwi_sources.from_diffsynth(**paths), tmp_path / "out", CFG
    )
  assert not (tmp_path / "out").exists()


def test_lora_kept_then_merged_equals_truth(truth, lora, tmp_path):
  paths = kiwi_fakes.write_diffsynth(truth, lora, CFG, tmp_path / "s")
  sources = kiwi_sources.from_diffsynth(
    **paths, lora="keep", ref_pad_first=True
  )
  out, rep = kiwi_conv.convert(sources, tmp_path / "out", CFG)
  assert rep["mllm_lora_rank_kept"] == kiwi_fakes.LORA_RANK
  model = kiwi_ckpt.load(out)
  assert model.cfg.mllm.text.lora_rank == kiwi_fakes.LORA_RANK
  attn = model.mllm.language_model.layers[1].self_attn
  a, b = lora["model.layers.1.self_attn.v_proj"]
  np.testing.assert_array_equal(attn.v_proj.lora_a[...], a.T)
  np.testing.assert_array_equal(attn.v_proj.lora_b[...], b.T)
  lora_lib.merge_lora(model)
  np.testing.assert_allclose(
    np.asarray(attn.v_proj.kernel[...]),
    truth["qwen.model.layers.1.self_attn.v_proj.weight"].T,
    atol=1e-6,
  )


def test_bad_checkpoint_lists_every_problem_and_writes_nothing(
  truth, lora, tmp_path
):
  extra = {
    "mllm.bogus.weight": np.zeros((2, 2), np.float32),
    "dit.blocks.0.self_attn.q.weight": np.zeros((3, 3), np.float32),
    "mllm.model.model.language_model.layers.0.self_attn.q_proj.lora_A."
    "default.weight": np.zeros((kiwi_fakes.LORA_RANK, 5), np.float32),
  }
  paths = kiwi_fakes.write_diffsynth(
    truth, lora, CFG, tmp_path / "s", stage=2, extra=extra
  )
  # Drop one tensor the model needs from the base Qwen.
  import safetensors.numpy as stnp

  qwen_file = paths["qwen_dir"] / "model.safetensors"
  qwen = stnp.load_file(str(qwen_file))
  del qwen["model.norm.weight"]
  stnp.save_file(qwen, str(qwen_file))
  sources = kiwi_sources.from_diffsynth(**paths)
  with pytest.raises(CheckpointMismatchError) as info:
    kiwi_conv.convert(sources, tmp_path / "out", CFG)
  msg = str(info.value)
  assert "qwen.model.norm.weight" in info.value.missing
  assert any("mllm.bogus.weight" in k for k in info.value.unexpected)
  assert any(
    "dit.blocks.0.self_attn.q.weight" in k for k in info.value.misshaped
  )
  assert any("q_proj.lora_B" in k for k in info.value.misshaped)
  assert "missing keys" in msg and "unexpected keys" in msg
  assert not (tmp_path / "out").exists()
  assert [p.name for p in tmp_path.iterdir()] == ["s"]


def test_cli_infers_the_config_and_export_round_trips(truth, lora, tmp_path):
  paths = kiwi_fakes.write_diffsynth(truth, lora, CFG, tmp_path / "s")
  args = [
    "diffsynth",
    "--checkpoint",
    str(paths["kiwi_checkpoint"]),
    "--base-dit",
    str(paths["base_dit"]),
    "--vae",
    str(paths["vae"]),
    "--qwen",
    str(paths["qwen_dir"]),
    "--lora",
    "keep",
    "--ref-pad-first",
    "true",
    "--out",
    str(tmp_path / "a"),
  ]
  assert cli.main(args) == 0
  assert cli.main(args) == 1  # exists: refuses, keeps the first
  cfg = kiwi_ckpt.load_config(tmp_path / "a")
  assert cfg.mllm == CFG.mllm.replace(
    text=CFG.mllm.text.__class__(
      **{**CFG.mllm.text.__dict__, "lora_rank": kiwi_fakes.LORA_RANK}
    )
  )
  # The original Wan config.json does not carry rope_max_seq_len (1024).
  assert cfg.dit.rope_max_seq_len == 1024
  assert cfg.dit.replace(rope_max_seq_len=CFG.dit.rope_max_seq_len) == (
    CFG.dit.replace(ref_pad_first=True)
  )
  assert cfg.vae == CFG.vae
  assert (
    cli.main(
      ["export", "--model", str(tmp_path / "a"), "--out", str(tmp_path / "d")]
    )
    == 0
  )
  assert (
    json.loads((tmp_path / "d" / "ref_embedder" / "config.json").read_text())[
      "ref_pad_first"
    ]
    is True
  )
  assert (
    cli.main(
      [
        "diffusers",
        "--source",
        str(tmp_path / "d"),
        "--out",
        str(tmp_path / "b"),
      ]
    )
    == 0
  )
  first = kiwi_ckpt.load(tmp_path / "a")
  lora_lib.merge_lora(first)
  second = kiwi_ckpt.load(tmp_path / "b")
  assert second.cfg.mllm.text.lora_rank == 0
  weights = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))
  want = dict(nnx.to_flat_state(nnx.state(first, weights)))
  got = dict(nnx.to_flat_state(nnx.state(second, weights)))
  assert set(got) == set(want)
  for path in want:
    np.testing.assert_allclose(
      got[path].get_value(),
      want[path].get_value(),
      atol=1e-6,
      err_msg=str(path),
    )


def test_export_writes_the_released_key_names(truth, tmp_path):
  root = kiwi_fakes.write_diffusers(truth, CFG, tmp_path / "src", False)
  out, _ = kiwi_conv.convert(
    kiwi_sources.from_diffusers(root), tmp_path / "out", CFG
  )
  export_diffusers(
    kiwi_ckpt.load(out), tmp_path / "d", processor_dir=out / "processor"
  )
  import safetensors.numpy as stnp

  for folder, name in (
    ("transformer", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
    ("mllm_encoder", "diffusion_pytorch_model"),
    ("mllm_encoder", "model"),
    ("source_embedder", "diffusion_pytorch_model"),
    ("ref_embedder", "diffusion_pytorch_model"),
  ):
    want = stnp.load_file(str(root / folder / f"{name}.safetensors"))
    got = stnp.load_file(str(tmp_path / "d" / folder / f"{name}.safetensors"))
    assert set(got) == set(want), folder
    for k in want:
      np.testing.assert_allclose(got[k], want[k], atol=1e-6, err_msg=k)


def test_14b_mlp_and_dit_lora_kept_merged_and_exported(truth, tmp_path):
  """The 14B stage-2 checkpoint: Qwen LoRA on all 7 projections and DiT
  LoRA on attention and FFN, with the released peft key names."""
  targets = kiwi_fakes.LORA_TARGETS + kiwi_fakes.MLP_TARGETS
  qwen_lora = kiwi_fakes.lora_factors(CFG, targets=targets)
  dit_lora = kiwi_fakes.dit_lora_factors(CFG)
  paths = kiwi_fakes.write_diffsynth(
    truth, qwen_lora, CFG, tmp_path / "s", stage="14b-2", dit_lora=dit_lora
  )
  import safetensors.numpy as stnp

  raw = stnp.load_file(str(paths["kiwi_checkpoint"]))
  assert (
    "mllm.model.model.language_model.layers.1.mlp.down_proj.lora_B."
    "default.weight"
  ) in raw
  assert "dit.blocks.1.ffn.2.lora_A.default.weight" in raw
  kept_dir, rep = kiwi_conv.convert(
    kiwi_sources.from_diffsynth(**paths, lora="keep"), tmp_path / "k", CFG
  )
  assert rep["mllm_lora_targets_kept"] == list(targets)
  assert rep["dit_lora_rank_kept"] == kiwi_fakes.DIT_LORA_RANK
  model = kiwi_ckpt.load(kept_dir)
  assert model.cfg.mllm.text.lora_targets == targets
  assert model.cfg.dit.lora_rank == kiwi_fakes.DIT_LORA_RANK
  mlp = model.mllm.language_model.layers[1].mlp
  a, b = qwen_lora["model.layers.1.mlp.down_proj"]
  np.testing.assert_array_equal(mlp.down_proj.lora_a[...], a.T)
  np.testing.assert_array_equal(mlp.down_proj.lora_b[...], b.T)
  a, b = dit_lora["dit.blocks.1.ffn.2"]
  np.testing.assert_array_equal(model.dit.blocks.ffn.fc2.lora_a[...][1], a.T)
  np.testing.assert_array_equal(model.dit.blocks.ffn.fc2.lora_b[...][1], b.T)
  # Exported to diffusers, the factors are merged into the weights.
  export_diffusers(model, tmp_path / "d", processor_dir=kept_dir / "processor")
  lora_lib.merge_lora(model)
  np.testing.assert_allclose(
    np.asarray(mlp.gate_proj.kernel[...]),
    truth["qwen.model.layers.1.mlp.gate_proj.weight"].T,
    atol=1e-5,
  )
  np.testing.assert_allclose(
    np.asarray(model.dit.blocks.cross_attn.o.kernel[...])[0],
    truth["dit.blocks.0.cross_attn.o.weight"].T,
    atol=1e-5,
  )
  weights = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))
  want = dict(nnx.to_flat_state(nnx.state(model, weights)))
  merged_dir, rep = kiwi_conv.convert(
    kiwi_sources.from_diffsynth(**paths), tmp_path / "m", CFG
  )
  assert rep["dit_lora_rank_kept"] == 0
  exported_dir, _ = kiwi_conv.convert(
    kiwi_sources.from_diffusers(tmp_path / "d"), tmp_path / "e", CFG
  )
  for other in (merged_dir, exported_dir):
    got = kiwi_ckpt.load(other)
    assert got.cfg.dit.lora_rank == 0 and got.cfg.mllm.text.lora_rank == 0
    flat = dict(nnx.to_flat_state(nnx.state(got, nnx.Param)))
    assert set(flat) == set(want)
    for path in want:
      np.testing.assert_allclose(
        flat[path].get_value(),
        want[path].get_value(),
        atol=1e-5,
        err_msg=f"{other.name} {path}",
      )
