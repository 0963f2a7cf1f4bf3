"""The examples/ scripts run at tiny size and their conditioning matters."""

import importlib.util
import pathlib

import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name):
  spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_text_only_editor_edits_by_its_own_conditioning():
  example = _load("text_only_editor")
  model = example.build()  # built once (eager initialisation is slow)
  a = example.main(["--steps", "2", "--tokens", "3", "14", "15"], model)
  b = example.main(["--steps", "2", "--tokens", "9", "2", "6"], model)
  assert a.shape == (1, 5, 32, 32, 3) and np.all(np.isfinite(a))
  assert np.all(np.abs(a) <= 1.0)
  assert not np.allclose(a, b)  # the tokens reach the DiT


def test_other_mllm_hidden_states_through_the_connector():
  example = _load("other_mllm_connectors")
  a = example.main(["--hidden", "96", "--steps", "2"])
  b = example.main(["--hidden", "96", "--steps", "2", "--hidden-seed", "1"])
  c = example.main(["--hidden", "40", "--steps", "2"])
  assert a.shape == c.shape == (1, 2, 4, 4, 12)
  # Only the hidden states differ: they reach the DiT through the connector.
  assert np.all(np.isfinite(a)) and not np.allclose(a, b)
