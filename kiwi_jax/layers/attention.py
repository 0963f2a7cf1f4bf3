"""One attention function for every model in kiwi_jax.

All attention (DiT self/cross, VAE mid-block, Qwen vision and text) goes
through :func:`dot_product_attention`, a thin layer over
``jax.nn.dot_product_attention`` that adds:

* ``implementation``:

  - ``"xla"``: the portable reference (materialises the logits);
  - ``"cudnn"``: cuDNN flash attention on NVIDIA GPUs;
  - ``"splash"``: Pallas splash attention, TPU flash attention
    (:mod:`kiwi_jax.layers.splash`; interpret mode elsewhere, for tests);
  - ``"chunked"``: XLA math over query chunks, so the ``[T, S]`` logits never
    exist whole (long video sequences on CPU);
  - ``None``: chosen per backend by :func:`choose_implementation`: ``splash``
    on TPU, ``cudnn`` on GPU, when the inputs allow it, else ``xla``; if
    jax still refuses cuDNN while tracing (GPU generation, cuDNN version,
    a shape its kernels lack), ``None`` falls back to ``xla``.

* ``segment_ids`` for packed or padded sequences and windowed attention
  (Qwen's vision tower);
* grouped-query attention (``K`` kv heads dividing ``N`` query heads).

Masks per implementation: ``xla`` and ``chunked`` take any mask and bias.
``splash`` takes segment ids, ``is_causal`` and a key-padding mask
bool[B or 1, 1, 1, S] (the DiT's context mask), but no bias and no general
[T, S] mask. ``cudnn`` has no boolean-mask input: segment ids and masks
become an additive bias [B or 1, N or 1, T, S] in q's dtype (fused, but
stored once per batch row); ``is_causal`` stays cuDNN's own causal mask.

Softmax statistics are always fp32 (the XLA path promotes logits to fp32,
the flash kernels keep fp32 running statistics).
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp

from kiwi_jax import sharding
from kiwi_jax.layers import splash

Implementation = Literal["xla", "cudnn", "splash", "chunked"] | None
IMPLEMENTATIONS = ("xla", "cudnn", "splash", "chunked")


def segment_mask(
  q_segment_ids: jax.Array, kv_segment_ids: jax.Array
) -> jax.Array:
  """bool[B, 1, T, S]: True where query and key share a segment id."""
  return q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :]


def _key_padding(mask: jax.Array | None) -> bool:
  """True when ``mask`` only hides keys: shape [B or 1, 1, 1, S]."""
  return mask is None or (mask.ndim == 4 and mask.shape[1:3] == (1, 1))


def splash_unusable_reason(mask, bias) -> str | None:
  """Why ``"splash"`` cannot take these inputs, or None if it can."""
  reason = splash.unavailable_reason()
  if reason is not None:
    return reason
  if bias is not None:
    return "splash attention takes no additive bias"
  if not _key_padding(mask):
    return (
      f"splash attention takes only key-padding masks [B, 1, 1, S], "
      f"not a mask of shape {tuple(mask.shape)} (use segment_ids)"
    )
  return None


def cudnn_unusable_reason(q: jax.Array, k: jax.Array, mask, bias) -> str | None:
  """Why ``"cudnn"`` cannot take these inputs, or None if it can.

  cuDNN flash attention needs a CUDA GPU with cuDNN, fp16/bf16 inputs and a
  head dimension of at most 128 that is a multiple of 8; with a mask or bias
  (an additive bias to cuDNN), the training kernels also need even T and S.
  """
  if sharding.target_platform() != "gpu":
    return f"cuDNN needs a GPU, not {sharding.target_platform()!r}"
  if q.dtype not in (jnp.bfloat16, jnp.float16) or k.dtype != q.dtype:
    return f"cuDNN takes fp16/bf16 q, k, v, not {q.dtype}/{k.dtype}"
  if q.shape[-1] > 128 or q.shape[-1] % 8:
    return f"cuDNN takes head_dim <= 128 and a multiple of 8, not {q.shape[-1]}"
  if (mask is not None or bias is not None) and (
    q.shape[1] % 2 or k.shape[1] % 2
  ):
    return (
      f"cuDNN with a mask or bias needs even lengths, not T={q.shape[1]}"
      f", S={k.shape[1]}"
    )
  try:  # private API: any failure means "not usable", never an error
    from jax._src.cudnn import fused_attention_stablehlo as cudnn_lib

    cudnn_lib.check_cudnn_version()
  except Exception as error:  # noqa: BLE001
    return f"cuDNN is not usable here ({error})"
  return None


def choose_implementation(
  q: jax.Array, k: jax.Array, mask=None, bias=None, segment_ids=None
) -> str:
  """The implementation ``implementation=None`` runs for these inputs.

  ``"splash"`` on TPU and ``"cudnn"`` on GPU when their reasons
  (:func:`splash_unusable_reason`, :func:`cudnn_unusable_reason`) are None,
  else ``"xla"`` (the fallback on CPU, and for masks or shapes the flash
  kernels do not take). The backend is :func:`sharding.target_platform`:
  the current mesh's, so a TPU program compiled from a CPU host gets
  splash.
  """
  backend = sharding.target_platform()
  if backend == "tpu" and splash_unusable_reason(mask, bias) is None:
    return "splash"
  has_mask = mask is not None or segment_ids is not None
  if (
    backend == "gpu"
    and cudnn_unusable_reason(q, k, True if has_mask else None, bias) is None
  ):
    return "cudnn"
  return "xla"


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
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(
      f"Unknown attention implementation {implementation!r}; "
      "use 'xla', 'cudnn', 'splash', 'chunked' or None."
    )
  q_seg, kv_seg = _segment_pair(segment_ids)
  if scale is None:
    scale = 1.0 / math.sqrt(q.shape[-1])
  chosen = implementation is None
  if chosen:
    implementation = choose_implementation(q, k, mask, bias, segment_ids)
  if implementation == "splash":
    reason = splash_unusable_reason(mask, bias)
    if reason is not None:
      raise ValueError(f"implementation='splash': {reason}.")
    return splash.splash_attention(
      q,
      k,
      v,
      q_segment_ids=q_seg,
      kv_segment_ids=kv_seg,
      kv_valid=None if mask is None else mask[:, 0, 0, :],
      is_causal=is_causal,
      scale=scale,
    )
  if q_seg is not None:
    seg = segment_mask(q_seg, kv_seg)
    mask = seg if mask is None else jnp.logical_and(mask, seg)
  if implementation == "chunked":
    return _chunked_attention(q, k, v, mask, bias, is_causal, scale, chunk_size)
  if implementation == "cudnn":
    cudnn_bias = (
      None
      if mask is None and bias is None
      else _as_cudnn_bias(q, k, mask, bias)
    )
    try:
      return jax.nn.dot_product_attention(
        q,
        k,
        v,
        bias=cudnn_bias,
        scale=scale,
        is_causal=is_causal,
        implementation="cudnn",
      )
    except (NotImplementedError, ValueError, RuntimeError):
      # jax checks the GPU, cuDNN version and shapes while tracing; when
      # ``None`` chose cuDNN and jax refuses it, fall back to XLA.
      if not chosen:
        raise
  return jax.nn.dot_product_attention(
    q,
    k,
    v,
    bias=bias,
    mask=mask,
    scale=scale,
    is_causal=is_causal,
    implementation="xla",
  )


def _segment_pair(segment_ids):
  """(q ids, kv ids) from None, one int[B, T] array or a pair."""
  if segment_ids is None:
    return None, None
  if isinstance(segment_ids, tuple):
    return segment_ids
  return segment_ids, segment_ids


def _as_cudnn_bias(q, k, mask, bias) -> jax.Array:
  """mask and bias as one additive bias [B or 1, N or 1, T, S] (q's dtype).

  cuDNN takes no boolean mask and needs the bias's T and S in full;
  hidden logits get dtype-min / 2 (finite: a fully hidden row averages the
  values, as in the XLA path).
  """
  lengths = (q.shape[1], k.shape[1])
  total = jnp.zeros((1, 1, 1, 1), q.dtype)
  if bias is not None:
    total = total + bias.astype(q.dtype)
  if mask is not None:
    hidden = jnp.asarray(jnp.finfo(q.dtype).min / 2, q.dtype)
    total = total + jnp.where(mask, jnp.zeros((), q.dtype), hidden)
  return jnp.broadcast_to(total, total.shape[:2] + lengths)


def _chunked_attention(q, k, v, mask, bias, is_causal, scale, chunk_size):
  """XLA attention over query chunks: peak memory O(chunk * S) per head."""
  t = q.shape[1]
  if t <= chunk_size:
    return jax.nn.dot_product_attention(
      q,
      k,
      v,
      bias=bias,
      mask=mask,
      scale=scale,
      is_causal=is_causal,
      implementation="xla",
    )
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
    mc = (
      mask
      if mc is None and mask is not None
      else (None if mc is None else jnp.moveaxis(mc, 0, 2))
    )
    bc = (
      bias
      if bc is None and bias is not None
      else (None if bc is None else jnp.moveaxis(bc, 0, 2))
    )
    if is_causal:
      rows = off + jnp.arange(chunk_size)[:, None]
      causal = (rows >= jnp.arange(s)[None, :])[None, None]
      mc = causal if mc is None else jnp.logical_and(mc, causal)
    return jax.nn.dot_product_attention(
      qc, k, v, bias=bc, mask=mc, scale=scale, implementation="xla"
    )

  xs = (q_chunks, mask_chunks, bias_chunks, offsets)
  out = jax.lax.map(one_chunk, xs)  # [n_chunks, B, chunk, N, H]
  out = jnp.moveaxis(out, 0, 1).reshape(
    (q.shape[0], n_chunks * chunk_size) + q.shape[2:]
  )
  return out[:, :t]
