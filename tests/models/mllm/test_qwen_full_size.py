"""The full Qwen2.5-VL-3B configuration, built abstractly."""

import jax
import numpy as np
import pytest
from flax import nnx

from kiwi_jax.models.mllm import Qwen25VL, Qwen25VLConfig


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.slow  # ~20 s: flax's RNG counter updates are slow to trace.
def test_full_3b_config_under_eval_shape():
  cfg = Qwen25VLConfig.from_variant("qwen2.5-vl-3b")
  model = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))
  v, t = cfg.vision, cfg.text
  vision_block = (
    2 * v.hidden_size  # norms
    + 4 * v.hidden_size**2
    + 4 * v.hidden_size  # qkv, proj
    + 3 * v.hidden_size * v.intermediate_size
    + 2 * v.intermediate_size
    + v.hidden_size
  )  # SwiGLU
  wide = 4 * v.hidden_size
  vision = (
    v.patch_dim * v.hidden_size
    + v.depth * vision_block
    + v.hidden_size
    + wide * wide
    + wide
    + wide * v.out_hidden_size
    + v.out_hidden_size
  )
  kv = t.num_kv_heads * t.head_dim
  text_layer = (
    2 * t.hidden_size
    + t.hidden_size * (t.hidden_size + 2 * kv)
    + t.hidden_size
    + 2 * kv
    + t.hidden_size**2
    + 3 * t.hidden_size * t.intermediate_size
  )
  text = (
    t.vocab_size * t.hidden_size + t.num_layers * text_layer + t.hidden_size
  )
  assert _count(nnx.state(model.visual)) == vision == 668_684_288
  assert _count(nnx.state(model.language_model)) == text == 3_085_938_688
  # transformers' Qwen2_5_VLModel on the meta device: 3,754,622,976.
  assert _count(nnx.state(model)) == 3_754_622_976
  kernel = model.language_model.layers[0].self_attn.k_proj.kernel
  assert kernel.shape == (2048, 256)
  assert kernel.get_metadata()["logical_axes"] == ("embed", "kv")
