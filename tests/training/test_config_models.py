"""Every non-demo Kiwi config's model builds abstractly (``eval_shape``)
and its stage's trainable regexes match that model."""

import importlib

import jax
import numpy as np
import pytest
from flax import nnx

from kiwi_jax.train_lib.train_state import ModelSplit

# KiwiEdit (branch kiwi) and the Wan VAE (branch vae) must be in main.
kiwi_task = pytest.importorskip("kiwi_jax.training.kiwi_task")

CASES = [("kiwi_wan22_5b", "stage=1", 1), ("kiwi_wan22_5b", "stage=2", 2),
         ("kiwi_wan22_5b", "stage=3", 3), ("kiwi_wan21_14b", "stage=1", 1),
         ("kiwi_wan21_14b", "stage=2", 2)]


@pytest.mark.slow
@pytest.mark.parametrize("name, arg, stage", CASES)
def test_config_model_builds_abstractly(name, arg, stage):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  task = kiwi_task.KiwiTask(config)
  split = ModelSplit.build(lambda: task.build_model(nnx.Rngs(0)),
                           task.trainable, task.frozen)
  count = lambda tree: sum(int(np.prod(x.shape))  # noqa: E731
                           for x in jax.tree.leaves(tree))
  total = count(split.abstract_params) + count(split.abstract_frozen)
  assert total > 5e9  # Qwen2.5-VL-3B + a 5B or 14B DiT + the VAE
  names = split.trainable_names()
  assert any(n.endswith("lora_a") for n in names)
  dit_trains = any(n.startswith("dit/blocks") for n in names)
  assert dit_trains == (config.kiwi.variant_family == "5b" and stage >= 2)
  assert any(n.startswith("ref_queries") for n in names) == (stage == 3)

