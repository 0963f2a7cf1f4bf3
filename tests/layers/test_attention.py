"""The shared attention function against a numpy reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from kiwi_jax.layers import dot_product_attention

RNG = np.random.default_rng(0)


def _np_attention(q, k, v, mask=None, causal=False):
  b, t, n, h = q.shape
  kvh = k.shape[2]
  k = np.repeat(k, n // kvh, axis=2)
  v = np.repeat(v, n // kvh, axis=2)
  logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(h)
  if causal:
    mask = np.tril(np.ones((t, k.shape[1]), bool))[None, None]
  if mask is not None:
    logits = np.where(mask, logits, -1e30)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", p, v)


def _qkv(b=2, t=13, s=13, n=6, kvh=3, h=8):
  q = RNG.normal(size=(b, t, n, h)).astype(np.float32)
  k = RNG.normal(size=(b, s, kvh, h)).astype(np.float32)
  v = RNG.normal(size=(b, s, kvh, h)).astype(np.float32)
  return q, k, v


@pytest.mark.parametrize("impl", ["xla", "chunked"])
@pytest.mark.parametrize("causal", [False, True])
def test_gqa_matches_numpy(impl, causal):
  q, k, v = _qkv()
  got = dot_product_attention(
    jnp.asarray(q),
    jnp.asarray(k),
    jnp.asarray(v),
    is_causal=causal,
    implementation=impl,
    chunk_size=5,
  )
  np.testing.assert_allclose(
    got, _np_attention(q, k, v, causal=causal), atol=1e-5
  )


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_segment_ids_block_cross_segment_attention(impl):
  q, k, v = _qkv(b=1, t=11, s=11, n=2, kvh=2)
  seg = np.array([[0] * 4 + [1] * 5 + [2] * 2])
  got = dot_product_attention(
    jnp.asarray(q),
    jnp.asarray(k),
    jnp.asarray(v),
    segment_ids=jnp.asarray(seg),
    implementation=impl,
    chunk_size=3,
  )
  mask = seg[:, None, :, None] == seg[:, None, None, :]
  np.testing.assert_allclose(got, _np_attention(q, k, v, mask=mask), atol=1e-5)
  # Each segment alone gives the same answer.
  first = _np_attention(q[:, :4], k[:, :4], v[:, :4])
  np.testing.assert_allclose(got[:, :4], first, atol=1e-5)


def test_cross_attention_lengths_and_scale():
  q, k, v = _qkv(t=7, s=17)
  got = dot_product_attention(
    jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), scale=0.5
  )
  want = _np_attention(q * 0.5 * np.sqrt(8), k, v)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_bf16_softmax_is_fp32():
  q, k, v = _qkv(t=5, s=5)
  got = dot_product_attention(
    *(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v))
  )
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(got, np.float32), _np_attention(q, k, v), atol=5e-2
  )


def test_unknown_implementation():
  q, k, v = _qkv(t=3, s=3)
  with pytest.raises(ValueError, match="Unknown attention implementation"):
    dot_product_attention(q, k, v, implementation="flash3")


@pytest.mark.gpu_only
def test_cudnn_matches_xla_bf16():
  q, k, v = (jnp.asarray(a, jnp.bfloat16) for a in _qkv(t=128, s=128, h=64))
  a = dot_product_attention(q, k, v, implementation="cudnn")
  b = dot_product_attention(q, k, v, implementation="xla")
  np.testing.assert_allclose(
    np.asarray(a, np.float32), np.asarray(b, np.float32), atol=2e-2
  )
