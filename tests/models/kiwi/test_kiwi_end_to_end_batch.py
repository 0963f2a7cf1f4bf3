"""Raw inputs -> QwenProcessor -> bucketing.collate -> KiwiEdit conditions.

A padded batch of two reference-mode examples (different instruction
lengths and reference-image sizes) gives, row by row, the context of each
example run alone without any padding.
"""

import jax
import numpy as np
import pytest
from flax import nnx
from test_kiwi_batched_reference import random_model

from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.models.kiwi.model import pure
from kiwi_jax.models.mllm import bucketing
from kiwi_jax.models.mllm.processing import ProcessorConfig, QwenProcessor
from kiwi_jax.models.mllm.vision import required_patches

pytestmark = pytest.mark.slow

CFG = KiwiEditConfig.from_variant("tiny")


def test_padded_batch_equals_each_example_alone(tiny_tokenizer_dir):
  proc = QwenProcessor(
    tiny_tokenizer_dir,
    CFG.mllm,
    ProcessorConfig(
      num_image_queries=CFG.num_image_queries,
      num_video_queries=CFG.num_video_queries,
      num_ref_queries=CFG.num_ref_queries,
      max_pixels_per_frame=100352,
      max_object_token=CFG.max_ref_tokens,
    ),
  )
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 255, (2, 56, 56, 3), dtype=np.uint8)
  examples = [
    proc(
      "Turn the ball blue.",
      frames=frames,
      ref_image=rng.integers(0, 255, (56, 56, 3), dtype=np.uint8),
    ),
    proc(
      "Replace the background with a brick wall.",
      frames=frames,
      ref_image=rng.integers(0, 255, (56, 84, 3), dtype=np.uint8),
    ),
  ]
  counts = [int(e["ref_span"][1] - e["ref_span"][0]) for e in examples]
  assert counts[0] != counts[1]
  pad = proc.tokenizer.convert_tokens_to_ids("<|endoftext|>")
  batch = bucketing.model_inputs(
    bucketing.collate(examples, CFG.mllm.vision, pad_token_id=pad)
  )
  graphdef, state = nnx.split(random_model())
  encode = jax.jit(
    pure(graphdef, "encode_conditions"), static_argnames=("mode", "ref_tokens")
  )
  cond = encode(state, batch, mode="reference", ref_tokens=max(counts))
  for b, example in enumerate(examples):
    alone = bucketing.pad_example(
      example,
      CFG.mllm.vision,
      pad_token_id=pad,
      num_patches=required_patches(example["grid_thw"], CFG.mllm.vision),
      seq_len=example["input_ids"].size,
    )
    alone = bucketing.model_inputs(
      {
        k: v[None] if k != "position_ids" else v[:, None]
        for k, v in alone.items()
        if k != "grid_thw"
      }
    )
    want = encode(state, alone, mode="reference", ref_tokens=counts[b])
    mask = np.asarray(cond.mask[b])
    assert mask.sum() == counts[b] + CFG.num_ref_queries
    np.testing.assert_allclose(
      np.asarray(cond.context[b])[mask], np.asarray(want.context[0]), atol=1e-5
    )
