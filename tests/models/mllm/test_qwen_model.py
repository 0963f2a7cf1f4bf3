"""Qwen25VL: bucketing without recompiles, batched lanes, LoRA."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from kiwi_jax.models.mllm import Qwen25VL, Qwen25VLConfig
from kiwi_jax.models.mllm import bucketing, lora, processing
from kiwi_jax.models.mllm.rope_index import text_position_ids

TINY = Qwen25VLConfig.from_variant("tiny")


def _image_example(proc, h, w, seed):
  rng = np.random.default_rng(seed)
  img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
  return proc("Make it blue.", image=img)


def test_two_resolutions_in_one_bucket_compile_once(tiny_tokenizer_dir):
  proc = processing.QwenProcessor(
      tiny_tokenizer_dir, TINY, processing.ProcessorConfig(num_image_queries=4))
  examples = [_image_example(proc, 168, 280, 0),   # grid 12 x 20
              _image_example(proc, 224, 224, 1)]   # grid 16 x 16
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
  exact = bucketing.pad_example(ex, TINY.vision, pad_token_id=0,
                                num_patches=384, seq_len=n)
  batch = {k: v[None] for k, v in exact.items() if k != "grid_thw"}
  batch["position_ids"] = np.transpose(batch["position_ids"], (1, 0, 2))
  ref = encode(state, bucketing.model_inputs(batch))
  np.testing.assert_allclose(np.asarray(outs[0])[:, :n], np.asarray(ref),
                             atol=1e-5)


def test_batched_lanes_match_single_examples(tiny_tokenizer_dir):
  proc = processing.QwenProcessor(
      tiny_tokenizer_dir, TINY, processing.ProcessorConfig(num_image_queries=4))
  examples = [_image_example(proc, 168, 280, 0),
              _image_example(proc, 112, 196, 2)]
  model = Qwen25VL(TINY, rngs=nnx.Rngs(1))
  forward = nnx.jit(lambda m, kw: m(**kw).last_hidden_state)
  kw = dict(pad_token_id=0, patch_buckets=(512,), seq_buckets=(192,))
  both = forward(model, bucketing.model_inputs(
      bucketing.collate(examples, TINY.vision, **kw)))
  for i, ex in enumerate(examples):
    one = forward(model, bucketing.model_inputs(
        bucketing.collate([ex], TINY.vision, **kw)))
    n = ex["input_ids"].size
    np.testing.assert_allclose(np.asarray(both[i, :n]),
                               np.asarray(one[0, :n]), atol=1e-5)


def _lora_model(rank=3):
  cfg = TINY.replace(text=dataclasses.replace(TINY.text, lora_rank=rank))
  return Qwen25VL(cfg, rngs=nnx.Rngs(0))


@nnx.jit
def _text_hidden(model, ids, pos):
  return model(ids, pos).last_hidden_state


def _text_forward(model):
  ids = jnp.asarray(np.arange(20, 37))[None]
  pos = jnp.asarray(text_position_ids(17))[:, None]
  return np.asarray(_text_hidden(model, ids, pos))


def test_lora_is_separate_trainable_state_and_merges_exactly():
  model = _lora_model()
  lora_state = nnx.state(model, nnx.LoRAParam)
  # a and b for q/k/v/o in each of the 2 layers.
  assert len(jax.tree.leaves(lora_state)) == 2 * 4 * 2
  attn = model.language_model.layers[0].self_attn
  assert attn.q_proj.lora_a.shape == (64, 3)
  assert attn.q_proj.lora_b.get_metadata()["logical_axes"] == (
      "lora_rank", "heads")
  before = _text_forward(model)
  # Zero-initialised b: LoRA starts as the identity update.
  for layer in lora.lora_layers(model):
    np.testing.assert_array_equal(layer.lora_b[...], 0)
  key = jax.random.key(3)
  for layer in lora.lora_layers(model):
    key, sub = jax.random.split(key)
    layer.lora_b[...] = 0.2 * jax.random.normal(sub, layer.lora_b.shape)
  kernel = np.asarray(attn.o_proj.kernel[...])
  adapted = _text_forward(model)
  assert np.max(np.abs(adapted - before)) > 1e-3
  lora.merge_lora(model)
  assert not np.allclose(np.asarray(attn.o_proj.kernel[...]), kernel)
  np.testing.assert_allclose(_text_forward(model), adapted, atol=1e-5)
  lora.unmerge_lora(model)
  np.testing.assert_allclose(np.asarray(attn.o_proj.kernel[...]), kernel,
                             atol=1e-6)
  np.testing.assert_allclose(_text_forward(model), adapted, atol=1e-5)


def test_lora_gradients_flow_to_lora_params_only():
  model = _lora_model()
  graphdef, lora_params, rest = nnx.split(model, nnx.LoRAParam, ...)

  def loss(lora_params):
    m = nnx.merge(graphdef, lora_params, rest)
    ids = jnp.asarray(np.arange(20, 31))[None]
    pos = jnp.asarray(text_position_ids(11))[:, None]
    return jnp.sum(m(ids, pos).last_hidden_state ** 2)

  grads = jax.jit(jax.grad(loss))(lora_params)
  flat = nnx.to_flat_state(grads)
  assert all(path[-1] in ("lora_a", "lora_b") for path, _ in flat)
  assert any(np.abs(np.asarray(v.get_value())).max() > 0 for _, v in flat)


@pytest.mark.torch
def test_converter_loads_base_weights_into_a_lora_model(tmp_path):
  from converters import qwen2_5_vl as conv
  base = Qwen25VL(TINY, rngs=nnx.Rngs(5))
  path = conv.save_qwen2_5_vl(base, tmp_path / "q.safetensors", layout="v5")
  cfg = TINY.replace(text=dataclasses.replace(TINY.text, lora_rank=2))
  model = conv.load_qwen2_5_vl(path, cfg)
  np.testing.assert_allclose(_text_forward(model), _text_forward(base),
                             atol=1e-6)
  assert len(jax.tree.leaves(nnx.state(model, nnx.LoRAParam))) == 16
