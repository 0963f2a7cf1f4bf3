"""The curriculum's trainable sets (reference §4.2), without building a model."""

import re

import pytest

from kiwi_jax.tasks import curriculum as stages

NAMES = [
  "image_queries/q",
  "video_queries/q",
  "ref_queries/q",
  "connector/fc1/kernel",
  "ref_connector/fc2/bias",
  "mllm/language_model/layers/0/self_attn/q_proj/lora_a",
  "mllm/language_model/layers/0/self_attn/q_proj/kernel",
  "mllm/visual/blocks/0/attn/qkv/kernel",
  "dit/blocks/self_attn/q/kernel",
  "dit/blocks/ffn/fc1/lora_b",
  "dit/vae_condition/patch/kernel",
  "dit/ref_vae_condition/patch/kernel",
  "dit/text_embedding/fc1/kernel",
  "vae/encoder/conv_in/kernel",
]


def _trains(stage, variant="5b", **kw):
  trainable, frozen = stages.trainable_sets(stage, variant, **kw)
  return {
    n
    for n in NAMES
    if any(re.search(r, n) for r in trainable)
    and not any(re.search(r, n) for r in frozen)
  }


def test_5b_stages_grow_as_the_scripts_say():
  s1 = {
    "image_queries/q",
    "connector/fc1/kernel",
    "mllm/language_model/layers/0/self_attn/q_proj/lora_a",
  }
  assert _trains(1) == s1
  s2 = s1 | {
    "video_queries/q",
    "dit/blocks/self_attn/q/kernel",
    "dit/blocks/ffn/fc1/lora_b",
    "dit/vae_condition/patch/kernel",
  }
  assert _trains(2) == s2
  assert _trains(3) == s2 | {
    "ref_queries/q",
    "ref_connector/fc2/bias",
    "dit/ref_vae_condition/patch/kernel",
  }


def test_14b_stage2_trains_the_dit_through_lora_only():
  assert _trains(2, "14b") == _trains(1, "14b") | {
    "video_queries/q",
    "dit/vae_condition/patch/kernel",
    "dit/blocks/ffn/fc1/lora_b",
  }
  # Without DiT LoRA (dit_lora_rank 0) the DiT stays frozen but for
  # vae_condition, and no regex is left that would match nothing.
  assert _trains(2, "14b", dit_lora=False) == _trains(1, "14b") | {
    "video_queries/q",
    "dit/vae_condition/patch/kernel",
  }
  assert (
    stages.DIT_LORA not in stages.trainable_sets(2, "14b", dit_lora=False)[0]
  )


def test_unknown_stages_and_variants_fail():
  with pytest.raises(ValueError, match="stage"):
    stages.trainable_sets(4)
  with pytest.raises(ValueError, match="14B stage-3"):
    stages.trainable_sets(3, "14b")
  with pytest.raises(ValueError, match="variant"):
    stages.trainable_sets(1, "7b")
  assert stages.stage_modes(3) == ("image", "video", "reference")


def test_train_also_adds_to_the_stage_sets(tmp_path):
  from kiwi_jax.tasks import kiwi_task  # pylint: disable=g-import-not-at-top
  from kiwi_jax.testing import tokenizer as tiny_tokenizer  # pylint: disable=g-import-not-at-top
  from tests.tasks.conftest import kiwi_config  # pylint: disable=g-import-not-at-top

  tiny_tokenizer.build_tiny_qwen_tokenizer(tmp_path, 512)
  config = kiwi_config(2, tmp_path, 0)
  plain = kiwi_task.KiwiTask(config).trainable
  config.unlock()
  config.kiwi.train_also = (r"^mllm/language_model/",)
  config.lock()
  task = kiwi_task.KiwiTask(config)
  assert task.trainable == plain + (r"^mllm/language_model/",)
