"""Every non-demo Kiwi config's model builds abstractly (``eval_shape``)
and each stage's trainable regexes select the right parts of it."""

import functools
import importlib
import re

import jax
import numpy as np
import pytest
from flax import nnx

from kiwi_jax.tasks import kiwi_task
from kiwi_jax.train_lib.train_state import path_name

CASES = [
  ("kiwi_wan22_5b", "stage=1", 1),
  ("kiwi_wan22_5b", "stage=2", 2),
  ("kiwi_wan22_5b", "stage=3", 3),
  ("kiwi_wan21_14b", "stage=1", 1),
  ("kiwi_wan21_14b", "stage=2", 2),
]


@functools.cache
def _abstract_params(name, dit_lora):
  """{path: shape} of the config family's model (the same for every stage
  but for the DiT LoRA of the 14B stage 2)."""
  task = kiwi_task.KiwiTask(
    importlib.import_module(f"configs.{name}").get_config(
      "stage=2" if dit_lora else ""
    )
  )
  assert bool(task.model_cfg.dit.lora_rank) == dit_lora
  model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
  state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {
    path_name(p): x.shape
    for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
  }


@pytest.mark.slow
@pytest.mark.parametrize("name, arg, stage", CASES)
def test_config_model_builds_abstractly(name, arg, stage):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  task = kiwi_task.KiwiTask(config)
  params = _abstract_params(name, bool(config.kiwi.dit_lora_rank))
  assert sum(int(np.prod(s)) for s in params.values()) > 5e9
  for regex in task.trainable + task.frozen:  # none is a typo
    assert any(re.search(regex, n) for n in params), regex
  names = [
    n
    for n in params
    if any(re.search(r, n) for r in task.trainable)
    and not any(re.search(r, n) for r in task.frozen)
  ]
  assert any(n.endswith("lora_a") for n in names)
  assert not any(n.startswith(("vae/", "mllm/visual/")) for n in names)
  dit_trains = {n for n in names if n.startswith("dit/blocks")}
  fine_tune = config.kiwi.variant_family == "5b" and stage >= 2
  dit_lora = config.kiwi.variant_family == "14b" and stage == 2
  assert bool(dit_trains) == (fine_tune or dit_lora)
  if dit_lora:  # the 14B stage 2: the base DiT stays frozen
    assert all(n.endswith(("lora_a", "lora_b")) for n in dit_trains)
    assert len(dit_trains) == 2 * 10  # q, k, v, o (x2 attention), ffn.0/2
    # Reference §7.2: ffn.0 B (13824, 128), attention A (128, 5120), per layer.
    assert params["dit/blocks/ffn/fc1/lora_b"] == (40, 128, 13824)
    assert params["dit/blocks/cross_attn/k/lora_a"] == (40, 5120, 128)
  if config.kiwi.variant_family == "14b":  # Qwen LoRA on all 7 projections
    assert any(n.endswith("mlp/down_proj/lora_b") for n in names)
    # down_proj A (256, 11008), B (2048, 256) in torch layout.
    mlp = "mllm/language_model/layers/3/mlp/down_proj"
    assert params[f"{mlp}/lora_a"] == (11008, 256)
    assert params[f"{mlp}/lora_b"] == (256, 2048)
  assert any(n.startswith("ref_queries") for n in names) == (stage == 3)
