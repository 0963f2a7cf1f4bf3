"""The 14B curriculum's stage 2 on the tiny model: Qwen LoRA on all seven
projections, DiT LoRA on attention and FFN; only LoRA, queries, connector
and ``vae_condition`` train, the base DiT stays bit-identical."""

import re

import jax
import numpy as np
import pytest

from kiwi_jax.models.mllm.lora import ALL_LORA_TARGETS
from tests.tasks.conftest import kiwi_config
from tests.tasks.test_kiwi_task import _global, _training

pytestmark = pytest.mark.slow  # one step compilation of the tiny Kiwi

TRAINS = re.compile(
  r"^(mllm/language_model/.*/lora_[ab]|dit/blocks/.*/"
  r"lora_[ab]|image_queries/|video_queries/|connector/|"
  r"dit/vae_condition/)"
)


def _config(tokenizer_dir, ref_tokens):
  config = kiwi_config(2, tokenizer_dir, ref_tokens)
  config.unlock()
  config.kiwi.variant_family = "14b"
  config.kiwi.dit_lora_rank = 3
  config.kiwi.mllm_lora_targets = ALL_LORA_TARGETS
  config.lock()
  return config


def test_14b_stage2_step_trains_lora_and_keeps_the_base_dit(
  tiny_tokenizer_dir, kiwi_batches
):
  batches, ref_tokens = kiwi_batches
  task, split, state, step = _training(_config(tiny_tokenizer_dir, ref_tokens))
  assert task.model_cfg.dit.lora_rank == 3
  assert task.model_cfg.mllm.text.lora_targets == ALL_LORA_TARGETS
  names = split.trainable_names()
  assert all(TRAINS.search(n) for n in names), [
    n for n in names if not TRAINS.search(n)
  ]
  for part in (
    "/mlp/down_proj/lora_b",
    "dit/blocks/ffn/fc1/lora_a",
    "dit/blocks/cross_attn/o/lora_b",
    "video_queries/q",
    "dit/vae_condition",
  ):
    assert any(part in n for n in names), part
  # Copies: the step donates the state, whose buffers np.asarray may share.
  frozen_before = jax.tree.map(np.array, state.frozen)
  params_before = jax.tree.map(np.array, state.params)
  # model_init from a stage-1 checkpoint (no DiT LoRA): the missing factors
  # start as this run's own initial values; other names are not invented.
  lora = ["dit/blocks/ffn/fc1/lora_a", "dit/blocks/cross_attn/q/lora_b"]
  fresh = task.fresh_lora(split, lora + ["dit/blocks/ffn/fc1/kernel"])
  assert sorted(fresh) == sorted(lora)
  flat = {
    "/".join(str(getattr(k, "key", k)) for k in p): v
    for p, v in jax.tree_util.tree_flatten_with_path(params_before)[0]
  }
  for name in lora:
    np.testing.assert_array_equal(np.asarray(fresh[name]), flat[name])
  assert not np.any(flat["dit/blocks/cross_attn/q/lora_b"])
  # Two steps: the connector's output layer starts at zero (as in the
  # reference), so the MLLM gets gradients from the second step on.
  for _ in range(2):
    state, metrics = step(state, _global(task, batches["video"]))
    assert np.isfinite(float(metrics["training_loss"]))
  # Frozen (the base DiT, Qwen, VAE) is bit-identical after the step.
  jax.tree.map(
    np.testing.assert_array_equal,
    frozen_before,
    jax.tree.map(np.asarray, state.frozen),
  )
  assert any(
    "dit/blocks/self_attn/q/kernel"
    in "/".join(str(getattr(k, "key", k)) for k in path)
    for path, _ in jax.tree_util.tree_flatten_with_path(frozen_before)[0]
  )
  flat_before = dict(jax.tree_util.tree_flatten_with_path(params_before)[0])
  moved = {
    "/".join(str(getattr(k, "key", k)) for k in path)
    for path, value in jax.tree_util.tree_flatten_with_path(state.params)[0]
    if np.any(np.asarray(value) != flat_before[path])
  }
  # Every LoRA B (zero at init) has moved, in the DiT and in the MLLM.
  for part in (
    "dit/blocks/ffn/fc2/lora_b",
    "dit/blocks/self_attn/k/lora_b",
    "dit/blocks/cross_attn/v/lora_b",
    "mlp/gate_proj/lora_b",
    "mlp/down_proj/lora_b",
    "self_attn/q_proj/lora_b",
  ):
    assert any(part in n for n in moved), (part, sorted(moved))
