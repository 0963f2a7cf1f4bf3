"""Qwen25VL: bucketing without recompiles, batched lanes."""

import jax
import numpy as np
from flax import nnx
from PIL import Image

from kiwi_jax.models.mllm import Qwen25VL, Qwen25VLConfig, bucketing, processing

TINY = Qwen25VLConfig.from_variant("tiny")


def _image_example(proc, h, w, seed):
  rng = np.random.default_rng(seed)
  img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
  return proc("Make it blue.", image=img)


def test_two_resolutions_in_one_bucket_compile_once(tiny_tokenizer_dir):
  proc = processing.QwenProcessor(
    tiny_tokenizer_dir, TINY, processing.ProcessorConfig(num_image_queries=4)
  )
  examples = [
    _image_example(proc, 168, 280, 0),  # grid 12 x 20
    _image_example(proc, 224, 224, 1),
  ]  # grid 16 x 16
  assert examples[0]["pixel_values"].shape != examples[1]["pixel_values"].shape
  model = Qwen25VL(TINY, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  traces = []

  @jax.jit
  def encode(state, inputs):
    traces.append(1)  # runs only while tracing
    return nnx.merge(graphdef, state)(**inputs).last_hidden_state

  # Window-aligned slots: 12 x 20 needs 384, 16 x 16 needs 256.
  buckets = dict(patch_buckets=(512, 1024), seq_buckets=(192, 384))
  outs = []
  for ex in examples:
    batch = bucketing.collate([ex], TINY.vision, pad_token_id=0, **buckets)
    assert batch["pixel_values"].shape == (1, 512, 1176)
    assert batch["input_ids"].shape == (1, 192)
    outs.append(encode(state, bucketing.model_inputs(batch)))
  assert len(traces) == 1
  # Padding is inert: the unpadded run gives the same real tokens.
  ex = examples[0]
  n = ex["input_ids"].size
  exact = bucketing.pad_example(
    ex, TINY.vision, pad_token_id=0, num_patches=384, seq_len=n
  )
  batch = {k: v[None] for k, v in exact.items() if k != "grid_thw"}
  batch["position_ids"] = np.transpose(batch["position_ids"], (1, 0, 2))
  ref = encode(state, bucketing.model_inputs(batch))
  np.testing.assert_allclose(
    np.asarray(outs[0])[:, :n], np.asarray(ref), atol=1e-5
  )


def test_batched_lanes_match_single_examples(tiny_tokenizer_dir):
  proc = processing.QwenProcessor(
    tiny_tokenizer_dir, TINY, processing.ProcessorConfig(num_image_queries=4)
  )
  examples = [
    _image_example(proc, 168, 280, 0),
    _image_example(proc, 112, 196, 2),
  ]
  model = Qwen25VL(TINY, rngs=nnx.Rngs(1))
  forward = nnx.jit(lambda m, kw: m(**kw).last_hidden_state)
  kw = dict(pad_token_id=0, patch_buckets=(512,), seq_buckets=(192,))
  both = forward(
    model,
    bucketing.model_inputs(bucketing.collate(examples, TINY.vision, **kw)),
  )
  for i, ex in enumerate(examples):
    one = forward(
      model, bucketing.model_inputs(bucketing.collate([ex], TINY.vision, **kw))
    )
    n = ex["input_ids"].size
    np.testing.assert_allclose(
      np.asarray(both[i, :n]), np.asarray(one[0, :n]), atol=1e-5
    )
