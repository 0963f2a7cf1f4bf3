"""The converter's command line on user mistakes: one error line, exit 2,
nothing read or written; config inference without config files.

The checkpoints here are a handful of tiny tensors with the released key
names (no model is built): every case fails, or is decided, before any
weight is read.
"""

import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
import safetensors.numpy as stnp

from kiwi_jax.converters import cli, wan_vae
from kiwi_jax.converters.checkpoint_io import Checkpoint
from kiwi_jax.converters.kiwi import configs as kiwi_configs
from kiwi_jax.models.dit import WanDiTConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_cli(module, *args):
  env = dict(
    os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"
  )
  return subprocess.run(
    [sys.executable, "-m", module, *map(str, args)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def write_diffsynth_inputs(root, dim=48, with_config=False):
  """A base DiT of width ``dim`` (2 blocks, patch (1, 2, 2)) and stand-in
  Kiwi, VAE and Qwen files: enough to reach config inference."""
  root = pathlib.Path(root)
  z = np.zeros
  dit = {
    "patch_embedding.weight": z((dim, 4, 1, 2, 2), np.float32),
    "head.head.weight": z((16, dim), np.float32),
    "text_embedding.0.weight": z((dim, 8), np.float32),
    "time_embedding.0.weight": z((dim, 16), np.float32),
  }
  for i in range(2):
    dit[f"blocks.{i}.ffn.0.weight"] = z((2 * dim, dim), np.float32)
  (root / "wan").mkdir(parents=True)
  stnp.save_file(dit, str(root / "wan" / "model.safetensors"))
  if with_config:
    (root / "wan" / "config.json").write_text('{"num_heads": 2}')
  stnp.save_file(
    {"mllm.image_queries.q": z((2, 8), np.float32)},
    str(root / "kiwi.safetensors"),
  )
  stnp.save_file(
    {"encoder.conv1.weight": z((4, 12, 3, 3, 3), np.float32)},
    str(root / "vae.safetensors"),
  )
  (root / "qwen").mkdir()
  stnp.save_file(
    {"model.norm.weight": z((8,), np.float32)},
    str(root / "qwen" / "model.safetensors"),
  )
  (root / "qwen" / "config.json").write_text("{}")
  return [
    "--checkpoint",
    root / "kiwi.safetensors",
    "--base-dit",
    root / "wan",
    "--vae",
    root / "vae.safetensors",
    "--qwen",
    root / "qwen",
  ]


def test_dit_without_config_and_unreleased_width_asks_for_config(tmp_path):
  """Width 48 < 128 used to crash with ZeroDivisionError (heads = 48 //
  128); the head count is not in the weights, so the file is asked for."""
  flags = write_diffsynth_inputs(tmp_path / "in")
  proc = run_cli(
    "kiwi_jax.converters.cli",
    "diffsynth",
    *flags,
    "--ref-pad-first",
    "false",
    "--out",
    tmp_path / "out",
  )
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("python -m converters.convert: error: ")
  assert str(tmp_path / "in" / "wan" / "config.json") in lines[0]
  assert '"num_heads"' in lines[0] and "48" in lines[0]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "out").exists()


def shapes_checkpoint(shapes, source="fake"):
  index = {k: {"shape": s, "dtype": "float32"} for k, s in shapes.items()}
  return Checkpoint(source, index, reader=None)


def dit_shapes(dim, ffn, layers=2, in_ch=48, text=4096, freq=256):
  out = {
    "dit.patch_embedding.weight": (dim, in_ch, 1, 2, 2),
    "dit.head.head.weight": (4 * in_ch, dim),
    "dit.text_embedding.0.weight": (dim, text),
    "dit.time_embedding.0.weight": (dim, freq),
  }
  for i in range(layers):
    out[f"dit.blocks.{i}.ffn.0.weight"] = (ffn, dim)
  return out


def test_dit_config_is_read_off_the_shapes():
  ckpt = shapes_checkpoint(
    dit_shapes(48, 64, layers=3, in_ch=16, text=32, freq=32)
  )
  cfg = kiwi_configs._dit_from_shapes(ckpt, 4)
  assert (cfg.dim, cfg.num_heads, cfg.ffn_dim, cfg.num_layers) == (48, 4, 64, 3)
  assert (cfg.in_channels, cfg.out_channels, cfg.patch_size) == (
    16,
    16,
    (1, 2, 2),
  )
  assert (cfg.text_dim, cfg.freq_dim) == (32, 32)


@pytest.mark.parametrize("variant", kiwi_configs.RELEASED_DITS)
def test_released_dit_width_gives_its_head_count(variant):
  want = WanDiTConfig.from_variant(variant)
  ckpt = shapes_checkpoint(
    dit_shapes(want.dim, want.ffn_dim, in_ch=want.in_channels)
  )
  notes = []
  cfg = kiwi_configs._dit_from_shapes(
    ckpt, config_path="x/config.json", notes=notes
  )
  assert cfg.num_heads == want.num_heads
  assert len(notes) == 1 and variant in notes[0]
  assert f"num_heads = {want.num_heads}" in notes[0]


def test_dit_without_its_tensors_names_them():
  shapes = dit_shapes(48, 64)
  del shapes["dit.head.head.weight"]
  with pytest.raises(
    kiwi_configs.ConfigInferenceError, match="dit.head.head.weight"
  ):
    kiwi_configs._dit_from_shapes(shapes_checkpoint(shapes), 2)


def vae_shapes(cfg):
  """``vae.``-prefixed torch-layout shapes of ``cfg`` (from its plan)."""
  import jax
  from flax import nnx

  from kiwi_jax.converters.assign import export
  from kiwi_jax.models.vae import WanVAE

  abstract = nnx.state(nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), abstract)
  return {
    f"vae.{k}": tuple(np.shape(v))
    for k, v in export(zeros, wan_vae.keymaps(cfg, "original"))
  }


CUSTOM_VAE = wan_vae.WanVAEConfig(
  name="derived-z8",
  z_dim=8,
  encoder_dim=4,
  decoder_dim=8,
  dim_mult=(1, 2, 2),
  num_res_blocks=2,
  temporal_downsample=(True, False),
  latents_mean=(0.0,) * 8,
  latents_std=(1.0,) * 8,
)


def test_vae_of_no_named_variant_is_derived_from_its_shapes():
  """Used to be rejected ("fit no Wan VAE variant") though the shapes give
  the whole architecture."""
  sources = types.SimpleNamespace(
    checkpoint=shapes_checkpoint(vae_shapes(CUSTOM_VAE))
  )
  notes = []
  cfg = kiwi_configs.vae_config(sources, notes)
  assert cfg == CUSTOM_VAE
  assert len(notes) == 1 and "matches no released Wan VAE" in notes[0]
  assert "mean 0 and std 1" in notes[0]


@pytest.mark.parametrize("name", ["wan2.1-tiny", "wan2.2-tiny"])
def test_vae_of_a_named_variant_is_that_variant(name):
  from kiwi_jax.models.vae import VARIANTS

  want = VARIANTS[name]
  sources = types.SimpleNamespace(
    checkpoint=shapes_checkpoint(vae_shapes(want))
  )
  assert kiwi_configs.vae_config(sources) == want
  derived = wan_vae.config_from_shapes(
    shapes_checkpoint({k[4:]: v for k, v in vae_shapes(want).items()})
  )
  assert wan_vae.matching_variant(derived) == name


def test_output_that_is_an_input_is_refused_on_the_command_line(tmp_path):
  """``--out`` naming the source (through ./, a symlink, or a folder that
  holds an input) with --overwrite used to replace the input."""
  flags = write_diffsynth_inputs(tmp_path / "in")
  before = sorted(p.name for p in (tmp_path / "in").rglob("*"))
  proc = run_cli(
    "kiwi_jax.converters.cli",
    "diffsynth",
    *flags,
    "--out",
    tmp_path / "in",
    "--overwrite",
  )
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "--out" in lines[0] and "inside" in lines[0]
  assert sorted(p.name for p in (tmp_path / "in").rglob("*")) == before


def test_output_is_input_through_every_subcommand(
  tmp_path, capsys, monkeypatch
):
  source = tmp_path / "kiwi-diffusers"
  source.mkdir()
  (source / "model_index.json").write_text("{}")
  (tmp_path / "link").symlink_to(source)
  monkeypatch.chdir(tmp_path)
  cases = [
    [
      "diffusers",
      "--source",
      str(source),
      "--out",
      "./kiwi-diffusers",
      "--overwrite",
    ],
    [
      "diffusers",
      "--source",
      str(source),
      "--out",
      str(tmp_path / "link"),
      "--overwrite",
    ],
    [
      "export",
      "--model",
      "kiwi-diffusers",
      "--out",
      str(tmp_path / "link"),
      "--overwrite",
    ],
    [
      "diffusers",
      "--source",
      str(source),
      "--out",
      str(tmp_path),
      "--overwrite",
    ],
  ]
  for args in cases:
    assert cli.main(args) == 2, args
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: " in err[0], (args, err)
  assert (source / "model_index.json").read_text() == "{}"
  dit = tmp_path / "dst" / "dit.safetensors"
  dit.parent.mkdir()
  dit.write_bytes(b"x")
  assert cli.main(["wan-dit", "--src", str(dit), "--dst", str(dit.parent)]) == 2
  assert "--dst" in capsys.readouterr().err
  assert dit.read_bytes() == b"x"


def test_unknown_variant_is_one_usage_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as info:
    cli.main(
      [
        "diffusers",
        "--source",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--variant",
        "kiwi-5",
      ]
    )
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert "invalid choice: 'kiwi-5'" in err and "Traceback" not in err
