"""Kiwi-Edit's MLLM encoder hands the vision tower bf16-rounded pixels
(``inputs.to(device, dtype=torch.bfloat16)`` in ``mllm_encoder.py``), in
float32 runs too; the plain Qwen2.5-VL forward does not round."""

import types

import jax.numpy as jnp
import numpy as np

from kiwi_jax.models.kiwi.model import KiwiEdit


def test_rounding_keeps_the_dtype_and_is_bf16_representable():
  from kiwi_jax.models.mllm.vision import kiwi_encoder_pixels

  x = np.random.default_rng(0).standard_normal((2, 5, 1176)).astype(np.float32)
  y = kiwi_encoder_pixels(x)
  assert y.dtype == jnp.float32 and y.shape == x.shape
  np.testing.assert_array_equal(y, x.astype(jnp.bfloat16).astype(np.float32))
  assert (np.asarray(y) != x).any()


def test_kiwi_encode_path_feeds_the_tower_bf16_pixels():
  """``KiwiEdit.mllm_hidden_states`` with the Qwen model replaced by a spy
  (no model is built): the tower gets the rounded values in float32."""
  seen = {}

  def spy_mllm(input_ids, position_ids, *, pixel_values, **kwargs):
    del input_ids, position_ids, kwargs
    seen["pixels"] = pixel_values
    return types.SimpleNamespace(last_hidden_state=jnp.zeros((1, 3, 4)))

  fake = types.SimpleNamespace(
    cfg=types.SimpleNamespace(mllm=types.SimpleNamespace(dtype=jnp.float32)),
    queries=lambda mode: lambda dtype: jnp.zeros((2, 4), dtype),
    mllm=spy_mllm,
  )
  pixels = (
    np.random.default_rng(1).standard_normal((1, 8, 1176)).astype(np.float32)
  )
  inputs = {
    "input_ids": jnp.zeros((1, 3), jnp.int32),
    "position_ids": jnp.zeros((3, 1, 3), jnp.int32),
    "pixel_values": jnp.asarray(pixels),
  }
  KiwiEdit.mllm_hidden_states(fake, inputs, "image")
  got = np.asarray(seen["pixels"])
  assert got.dtype == np.float32
  np.testing.assert_array_equal(
    got, pixels.astype(jnp.bfloat16).astype(np.float32)
  )
  assert (got != pixels).any()
