"""Splash (TPU flash) attention in Pallas interpret mode against XLA.

The kernel runs interpreted on CPU, which is slow: shapes stay at one to
three 128-row blocks and one or two heads. Forward and gradients (through
the kernel's custom VJP) must match ``implementation="xla"``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kiwi_jax import sharding
from kiwi_jax.layers import attention, dot_product_attention, splash

pytestmark = pytest.mark.skipif(
  splash.unavailable_reason() is not None,
  reason=f"splash attention cannot run here: {splash.unavailable_reason()}",
)

# Relative to the largest reference value (measured: f32 <= 1.2e-6, bf16
# <= 7.1e-3): f32 differs in summation order only; bf16 also rounds q * scale,
# the probabilities and the outputs.
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}


def _inputs(seed, b, t, s, n, kv_heads, h, dtype):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, t, n, h))
  k = rng.normal(size=(b, s, kv_heads, h))
  v = rng.normal(size=(b, s, kv_heads, h))
  cotangent = rng.normal(size=(b, t, n, h))
  return [jnp.asarray(x, dtype) for x in (q, k, v, cotangent)]


def _value_and_grads(implementation, q, k, v, cotangent, **kw):
  def attend(q, k, v):
    return dot_product_attention(q, k, v, implementation=implementation, **kw)

  out, pullback = jax.vjp(attend, q, k, v)
  return (out,) + pullback(cotangent)


def _assert_close(got, want, dtype):
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape, name
    scale = max(float(np.abs(b).max()), 1e-6)
    error = float(np.abs(a - b).max()) / scale
    assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.2e}"


def _segments(b, t):
  """Windows of 64 tokens, the last 32 being padding (Qwen's -1)."""
  ids = np.repeat(np.arange(t // 64), 64)
  ids[-32:] = -1
  return jnp.asarray(np.tile(ids, (b, 1)), jnp.int32)


CASES = {
  # name: (b, t, s, n, kv_heads, h, extra keyword arguments)
  "full": (1, 128, 128, 2, 2, 64, {}),
  "causal_three_blocks": (1, 384, 384, 1, 1, 128, {"is_causal": True}),
  "segments_windowed": (2, 256, 256, 1, 1, 64, {"segments": True}),
  "padded_keys_cross": (2, 200, 136, 1, 1, 64, {"padded_keys": True}),
  "gqa": (1, 128, 128, 4, 2, 64, {}),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_splash_matches_xla_forward_and_gradients(case, dtype):
  b, t, s, n, kv_heads, h, extra = CASES[case]
  q, k, v, cotangent = _inputs(len(case), b, t, s, n, kv_heads, h, dtype)
  kw = {"is_causal": extra.get("is_causal", False)}
  if extra.get("segments"):
    kw["segment_ids"] = _segments(b, t)
  if extra.get("padded_keys"):
    valid = np.ones((b, s), bool)
    valid[0, 100:] = False  # row 0: 36 padded keys; row 1: none
    kw["mask"] = jnp.asarray(valid)[:, None, None, :]
  fn = jax.jit(
    _value_and_grads, static_argnums=0, static_argnames=("is_causal",)
  )
  got = fn("splash", q, k, v, cotangent, **kw)
  want = fn("xla", q, k, v, cotangent, **kw)
  assert got[0].dtype == q.dtype
  _assert_close(got, want, dtype)


def test_splash_under_a_mesh_matches_one_device():
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 2, "sequence": 2})
  q, k, v, cotangent = _inputs(7, 2, 256, 128, 2, 2, 64, "float32")
  valid = jnp.asarray(np.arange(128) < 96)[None, None, None, :]
  want = jax.jit(_value_and_grads, static_argnums=0)(
    "xla", q, k, v, cotangent, mask=valid
  )
  with sharding.use_mesh(mesh):
    fn = jax.jit(_value_and_grads, static_argnums=0)
    got = fn("splash", q, k, v, cotangent, mask=valid)
    lowered = fn.lower("splash", q, k, v, cotangent, mask=valid).as_text()
  assert "shard_map" in lowered or "sdy.manual_computation" in lowered
  _assert_close(got, want, "float32")


def test_fully_masked_rows_stay_finite():
  q, k, v, _ = _inputs(3, 1, 128, 128, 1, 1, 64, "float32")
  nothing = jnp.zeros((1, 1, 1, 128), bool)
  out = dot_product_attention(q, k, v, mask=nothing, implementation="splash")
  assert np.isfinite(np.asarray(out)).all()


def test_block_size_follows_the_length():
  assert splash.block_size(1) == 128
  assert splash.block_size(200) == 256
  assert splash.block_size(384) == 128  # 512 would pad a third more
  assert splash.block_size(512) == 512
  assert splash.block_size(18480) == 512  # the 5B DiT at 704 x 1280 x 81
  assert splash.block_size(640) == 128
  assert splash.block_size(3520) == 512


def test_splash_refuses_masks_it_cannot_take():
  q, k, v, _ = _inputs(0, 1, 8, 8, 1, 1, 64, "float32")
  square = jnp.ones((1, 1, 8, 8), bool)
  with pytest.raises(ValueError, match="key-padding masks"):
    dot_product_attention(q, k, v, mask=square, implementation="splash")
  with pytest.raises(ValueError, match="no additive bias"):
    dot_product_attention(
      q, k, v, bias=jnp.zeros((1, 1, 8, 8)), implementation="splash"
    )


def test_none_chooses_per_backend(monkeypatch):
  q, k, _, _ = _inputs(0, 1, 8, 8, 1, 1, 64, "bfloat16")
  padding = jnp.ones((1, 1, 1, 8), bool)
  square = jnp.ones((1, 1, 8, 8), bool)
  assert attention.choose_implementation(q, k, padding) == "xla"  # CPU
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert attention.choose_implementation(q, k) == "splash"
  assert attention.choose_implementation(q, k, padding) == "splash"
  assert attention.choose_implementation(q, k, square) == "xla"
  assert (
    attention.choose_implementation(q, k, bias=jnp.zeros((1, 1, 8, 8))) == "xla"
  )
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  reason = attention.cudnn_unusable_reason(
    q.astype(jnp.float32), k.astype(jnp.float32), None, None
  )
  assert "fp16/bf16" in reason
  assert "head_dim" in attention.cudnn_unusable_reason(
    jnp.zeros((1, 8, 1, 100), jnp.bfloat16),
    jnp.zeros((1, 8, 1, 100), jnp.bfloat16),
    None,
    None,
  )
  assert "even lengths" in attention.cudnn_unusable_reason(
    jnp.zeros((1, 7, 1, 64), jnp.bfloat16), k, True, None
  )


def test_cudnn_bias_from_masks_matches_the_masks():
  """cuDNN gets segment ids and padding as a bias: same answer in XLA."""
  q, k, v, _ = _inputs(5, 2, 6, 6, 2, 1, 8, "float32")
  seg = jnp.asarray([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
  pad = jnp.asarray([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], bool)
  mask = jnp.logical_and(
    attention.segment_mask(seg, seg), pad[:, None, None, :]
  )
  bias = attention._as_cudnn_bias(q, k, mask, None)
  assert bias.shape == (2, 1, 6, 6)
  want = dot_product_attention(q, k, v, mask=mask)
  got = dot_product_attention(q, k, v, bias=bias)
  np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.tpu_only
def test_none_compiles_the_splash_kernel_on_tpu():
  q, k, v, _ = _inputs(0, 1, 256, 256, 2, 2, 128, "bfloat16")
  seg = jnp.asarray(np.repeat([[0, 1]], 128, axis=1), jnp.int32)
  fn = jax.jit(
    lambda q, k, v: dot_product_attention(
      q, k, v, segment_ids=seg, is_causal=True, implementation=None
    )
  )
  assert "tpu_custom_call" in fn.lower(q, k, v).as_text()
  want = dot_product_attention(q, k, v, segment_ids=seg, is_causal=True)
  _assert_close((fn(q, k, v),), (want,), "bfloat16")


@pytest.mark.gpu_only
def test_none_picks_cudnn_with_segments_and_padding_on_gpu():
  q, k, v, _ = _inputs(1, 2, 128, 128, 4, 2, 64, "bfloat16")
  seg = jnp.asarray(np.repeat([[0, 1], [0, 0]], 64, axis=1), jnp.int32)
  valid = jnp.asarray(np.arange(128) < 100)[None, None, None, :]
  kw = {"segment_ids": seg, "mask": valid, "is_causal": True}
  fn = jax.jit(
    lambda q, k, v: dot_product_attention(q, k, v, implementation=None, **kw)
  )
  assert "cudnn" in fn.lower(q, k, v).compile().as_text()
  want = dot_product_attention(q, k, v, **kw)
  _assert_close((fn(q, k, v),), (want,), "bfloat16")


def test_none_falls_back_to_xla_when_jax_refuses_cudnn(monkeypatch):
  """None chose cuDNN (faked GPU) but jax cannot run it here: XLA answers."""
  q, k, v, _ = _inputs(2, 1, 8, 8, 2, 1, 64, "bfloat16")
  seg = jnp.asarray([[0, 0, 0, 1, 1, 1, 1, 1]])
  want = dot_product_attention(q, k, v, segment_ids=seg, is_causal=True)
  with pytest.raises((RuntimeError, NotImplementedError, ValueError)):
    # Explicit "cudnn" never falls back (here: cuDNN is not detected).
    dot_product_attention(q, k, v, segment_ids=seg, implementation="cudnn")
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(attention, "cudnn_unusable_reason", lambda *a: None)
  assert attention.choose_implementation(q, k, segment_ids=seg) == "cudnn"
  got = dot_product_attention(
    q, k, v, segment_ids=seg, is_causal=True, implementation=None
  )
  np.testing.assert_array_equal(
    np.asarray(got, np.float32), np.asarray(want, np.float32)
  )
