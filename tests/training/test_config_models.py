"""Every non-demo Kiwi config's model builds abstractly (``eval_shape``)
and each stage's trainable regexes select the right parts of it."""

import functools
import importlib
import re

import jax
import numpy as np
import pytest
from flax import nnx

from kiwi_jax.train_lib.train_state import path_name
from kiwi_jax.training import kiwi_task

CASES = [("kiwi_wan22_5b", "stage=1", 1), ("kiwi_wan22_5b", "stage=2", 2),
         ("kiwi_wan22_5b", "stage=3", 3), ("kiwi_wan21_14b", "stage=1", 1),
         ("kiwi_wan21_14b", "stage=2", 2)]


@functools.lru_cache(maxsize=None)
def _abstract_params(name):
  """{path: shape} of the config family's model (same for every stage)."""
  task = kiwi_task.KiwiTask(
      importlib.import_module(f"configs.{name}").get_config(""))
  model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
  state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {path_name(p): x.shape
          for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


@pytest.mark.slow
@pytest.mark.parametrize("name, arg, stage", CASES)
def test_config_model_builds_abstractly(name, arg, stage):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  task = kiwi_task.KiwiTask(config)
  params = _abstract_params(name)
  assert sum(int(np.prod(s)) for s in params.values()) > 5e9
  for regex in task.trainable + task.frozen:  # none is a typo
    assert any(re.search(regex, n) for n in params), regex
  names = [n for n in params
           if any(re.search(r, n) for r in task.trainable)
           and not any(re.search(r, n) for r in task.frozen)]
  assert any(n.endswith("lora_a") for n in names)
  assert not any(n.startswith(("vae/", "mllm/visual/")) for n in names)
  dit_trains = any(n.startswith("dit/blocks") for n in names)
  assert dit_trains == (config.kiwi.variant_family == "5b" and stage >= 2)
  assert any(n.startswith("ref_queries") for n in names) == (stage == 3)
