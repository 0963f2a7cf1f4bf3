"""``python -m converters.convert verify`` on a tiny stage-1 checkpoint:
every component's max abs error against the PyTorch stack is printed and
small (fp32)."""

import re

import pytest

torch = pytest.importorskip("torch")

import kiwi_fakes  # noqa: E402

from kiwi_jax.converters import cli  # noqa: E402
from kiwi_jax.models.kiwi.config import KiwiEditConfig  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

CFG = KiwiEditConfig.from_variant("tiny")


def test_verify_prints_small_errors_per_component(tmp_path, capsys):
  truth = kiwi_fakes.truth(CFG)
  root = kiwi_fakes.write_diffusers(
    truth, CFG, tmp_path / "src", ref_pad_first=False, stage=1
  )
  assert (
    cli.main(
      [
        "diffusers",
        "--source",
        str(root),
        "--out",
        str(tmp_path / "out"),
        "--variant",
        "tiny",
      ]
    )
    == 0
  )
  capsys.readouterr()
  assert (
    cli.main(
      [
        "verify",
        "--model",
        str(tmp_path / "out"),
        "diffusers",
        "--source",
        str(root),
      ]
    )
    == 0
  )
  lines = capsys.readouterr().out.strip().splitlines()
  errors = {
    m.group(1): float(m.group(2))
    for m in (re.match(r"(\S+)\s+max abs error (\S+)", line) for line in lines)
    if m
  }
  assert set(errors) == {
    "image/context",
    "image/velocity",
    "vae/encode",
    "vae/decode",
  }, lines
  assert all(e <= 1e-4 for e in errors.values()), errors
