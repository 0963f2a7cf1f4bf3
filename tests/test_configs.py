"""Every config file builds, for every arg it documents, and is locked."""

import importlib
import pathlib

import ml_collections
import pytest

from configs import common

CONFIG_DIR = pathlib.Path(__file__).parent.parent / "configs"
CONFIG_FILES = sorted(
  p.stem
  for p in CONFIG_DIR.glob("*.py")
  if p.stem not in ("__init__", "common")
)


def _cases():
  for name in CONFIG_FILES:
    module = importlib.import_module(f"configs.{name}")
    for arg in getattr(module, "TEST_ARGS", ("",)):
      yield name, arg


@pytest.mark.parametrize("name, arg", list(_cases()))
def test_config_builds_and_is_locked(name, arg):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config(arg)
  assert isinstance(config, ml_collections.ConfigDict)
  assert config.is_locked
  with pytest.raises(AttributeError, match="Did you mean"):
    config.mesh.dataa = 2  # a typo fails with a hint
  if "mesh" in config:
    assert set(config.mesh) == {"data", "fsdp", "tensor", "sequence"}


def test_parse_arg_types_and_errors():
  cfg = common.parse_arg(
    "stage=2,variant=14b,runlocal",
    stage=1,
    variant="5b",
    runlocal=False,
    lr=1e-5,
  )
  assert cfg.stage == 2 and cfg.variant == "14b" and cfg.runlocal is True
  assert common.parse_arg("lr=3e-4", lr=1e-5).lr == 3e-4
  assert common.parse_arg("runlocal=false", runlocal=True).runlocal is False
  with pytest.raises(ValueError, match="valid args"):
    common.parse_arg("stgae=2", stage=1)
  with pytest.raises(ValueError, match="not a boolean"):
    common.parse_arg("runlocal=maybe", runlocal=False)
