"""One attention function for every model in kiwi_jax.

All attention (DiT self/cross, VAE mid-block, Qwen vision and text) goes
through :func:`dot_product_attention`, a thin layer over
``jax.nn.dot_product_attention`` that adds:

* ``implementation``: ``"xla"`` (portable reference), ``"cudnn"`` (fused
  flash attention on NVIDIA GPUs), ``"chunked"`` (XLA math over query chunks,
  so the ``[T, S]`` logits never exist whole: long video sequences on CPU/TPU)
  or ``None`` (``cudnn`` on GPU when the inputs allow it, else ``xla``);
* ``segment_ids`` for packed or padded sequences and windowed attention
  (Qwen's vision tower) as a mask;
* grouped-query attention (``K`` kv heads dividing ``N`` query heads).

Softmax statistics are always fp32 (the XLA path promotes logits to fp32).
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp

Implementation = Literal["xla", "cudnn", "chunked"] | None


def segment_mask(q_segment_ids: jax.Array,
                 kv_segment_ids: jax.Array) -> jax.Array:
  """bool[B, 1, T, S]: True where query and key share a segment id."""
  return (q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :])


def _cudnn_usable(q: jax.Array, mask, bias) -> bool:
  return (jax.default_backend() == "gpu"
          and q.dtype in (jnp.bfloat16, jnp.float16)
          and q.shape[-1] <= 128 and q.shape[-1] % 8 == 0
          and mask is None and bias is None)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    segment_ids: tuple[jax.Array, jax.Array] | jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    implementation: Implementation = "xla",
    chunk_size: int = 1024,
) -> jax.Array:
  """Scaled dot-product attention.

  Args:
    q: float[B, T, N, H] queries.
    k: float[B, S, K, H] keys, K divides N (grouped-query attention).
    v: float[B, S, K, H] values.
    mask: optional bool[B or 1, N or 1, T, S]; True means attend.
    bias: optional float[B or 1, N or 1, T, S] added to the logits.
    segment_ids: int[B, T] (self-attention) or a pair (int[B, T],
      int[B, S]); tokens attend only within their segment.
    is_causal: causal mask.
    scale: logit scale, default ``1/sqrt(H)``.
    implementation: see the module docstring.
    chunk_size: query chunk for ``"chunked"``.

  Returns:
    float[B, T, N, H] in q's dtype.
  """
  if segment_ids is not None:
    q_seg, kv_seg = (segment_ids if isinstance(segment_ids, tuple)
                     else (segment_ids, segment_ids))
    seg = segment_mask(q_seg, kv_seg)
    mask = seg if mask is None else jnp.logical_and(mask, seg)
  if scale is None:
    scale = 1.0 / math.sqrt(q.shape[-1])
  if implementation is None:
    implementation = "cudnn" if _cudnn_usable(q, mask, bias) else "xla"
  if implementation == "chunked":
    return _chunked_attention(q, k, v, mask, bias, is_causal, scale,
                              chunk_size)
  if implementation not in ("xla", "cudnn"):
    raise ValueError(f"Unknown attention implementation {implementation!r}; "
                     "use 'xla', 'cudnn', 'chunked' or None.")
  return jax.nn.dot_product_attention(
      q, k, v, bias=bias, mask=mask, scale=scale, is_causal=is_causal,
      implementation=implementation)


def _chunked_attention(q, k, v, mask, bias, is_causal, scale, chunk_size):
  """XLA attention over query chunks: peak memory O(chunk * S) per head."""
  t = q.shape[1]
  if t <= chunk_size:
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=scale, is_causal=is_causal,
        implementation="xla")
  n_chunks = -(-t // chunk_size)
  pad = n_chunks * chunk_size - t

  def pad_t(x, axis):
    if x is None or x.shape[axis] == 1:
      return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)

  def split(x, axis):
    if x is None:
      return None
    if x.shape[axis] == 1:  # broadcast along T: same for every chunk
      return None
    x = jnp.moveaxis(pad_t(x, axis), axis, 0)
    return x.reshape((n_chunks, chunk_size) + x.shape[1:])

  q_chunks = split(q, 1)
  mask_chunks, bias_chunks = split(mask, 2), split(bias, 2)
  offsets = jnp.arange(n_chunks) * chunk_size
  s = k.shape[1]

  def one_chunk(args):
    qc, mc, bc, off = args
    qc = jnp.moveaxis(qc, 0, 1)
    mc = mask if mc is None and mask is not None else (
        None if mc is None else jnp.moveaxis(mc, 0, 2))
    bc = bias if bc is None and bias is not None else (
        None if bc is None else jnp.moveaxis(bc, 0, 2))
    if is_causal:
      rows = off + jnp.arange(chunk_size)[:, None]
      causal = (rows >= jnp.arange(s)[None, :])[None, None]
      mc = causal if mc is None else jnp.logical_and(mc, causal)
    return jax.nn.dot_product_attention(
        qc, k, v, bias=bc, mask=mc, scale=scale, implementation="xla")

  xs = (q_chunks, mask_chunks, bias_chunks, offsets)
  out = jax.lax.map(one_chunk, xs)  # [n_chunks, B, chunk, N, H]
  out = jnp.moveaxis(out, 0, 1).reshape(
      (q.shape[0], n_chunks * chunk_size) + q.shape[2:])
  return out[:, :t]
