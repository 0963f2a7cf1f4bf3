"""A whole ``python -m converters.convert diffsynth`` run (in process) on a
tiny stage-1 checkpoint whose VAE is no named variant: its config is
derived from the shapes, and the folder gets the umask's modes."""

import os
import stat

import pytest

torch = pytest.importorskip("torch")

import kiwi_fakes  # noqa: E402

from kiwi_jax.converters import cli  # noqa: E402
from kiwi_jax.models.kiwi import checkpoint as kiwi_ckpt  # noqa: E402
from kiwi_jax.models.kiwi.config import KiwiEditConfig  # noqa: E402
from kiwi_jax.models.vae import WanVAEConfig  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

# z_dim 12 like the tiny DiT's latents; widths and depth of no variant.
CUSTOM_VAE = WanVAEConfig(
  name="derived-z12",
  z_dim=12,
  encoder_dim=4,
  decoder_dim=8,
  dim_mult=(1, 2, 2, 2),
  num_res_blocks=1,
  latents_mean=(0.0,) * 12,
  latents_std=(1.0,) * 12,
)
CFG = KiwiEditConfig.from_variant("tiny").replace(vae=CUSTOM_VAE)


def test_unnamed_vae_is_derived_and_the_folder_gets_umask_modes(
  tmp_path, capsys
):
  truth = kiwi_fakes.truth(CFG)
  paths = kiwi_fakes.write_diffsynth(
    truth, kiwi_fakes.lora_factors(CFG), CFG, tmp_path / "s", stage=1
  )
  out = tmp_path / "converted"
  old = os.umask(0o022)
  try:
    code = cli.main(
      [
        "diffsynth",
        "--checkpoint",
        str(paths["kiwi_checkpoint"]),
        "--base-dit",
        str(paths["base_dit"]),
        "--vae",
        str(paths["vae"]),
        "--qwen",
        str(paths["qwen_dir"]),
        "--out",
        str(out),
      ]
    )
  finally:
    os.umask(old)
  err = capsys.readouterr().err
  assert code == 0, err
  # Used to fail: "the VAE tensors fit no Wan VAE variant".
  assert "matches no released Wan VAE" in err
  assert kiwi_ckpt.load_config(out).vae == CUSTOM_VAE
  # The folder was 0o700 (mkdtemp) before the umask fix.
  modes = {
    p: stat.S_IMODE(p.lstat().st_mode)
    for p in [out, *out.rglob("*")]
    if not p.is_symlink()
  }
  assert modes[out] == 0o755
  bad = {
    str(p.relative_to(tmp_path)): oct(m)
    for p, m in modes.items()
    if m != (0o755 if p.is_dir() else 0o644)
  }
  assert not bad, bad
  assert any(p.is_file() for p in modes)
