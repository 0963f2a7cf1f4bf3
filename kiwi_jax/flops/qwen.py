"""Matmul FLOPs of Qwen2.5-VL (``models/mllm``) and Kiwi's connectors.

Text decoder, ``B`` sequences of ``T`` tokens, width ``D``, ``H`` query
heads and ``K`` key/value heads of ``h`` dims, MLP width ``I``, per layer:

  q, o projections   2 x 2 B T D (H h)
  k, v projections   2 x 2 B T D (K h)     (grouped-query attention)
  Q K^T, P V         2 x 2 B H pairs h     (pairs: T (T + 1) / 2 causal)
  SwiGLU             3 x 2 B T D I
  LoRA (rank r)      2 B T r (in + out) per adapted projection

M-RoPE, RMSNorm, SiLU and the embedding lookup are not matmuls. Kiwi reads
hidden states only: there is no ``lm_head``.

Vision tower, ``N`` patch slots of ``patch_dim`` (1176) features, width
``d`` (1280), MLP width ``i``:

  patch embedding    2 B N patch_dim d
  per block          2 B N d (3 d) + 2 B N d d + 3 x 2 B N d i
  attention          2 x 2 B heads pairs (d / heads)
                     windowed blocks: pairs = N x window_tokens (64
                     slots per window in the window-aligned layout);
                     full blocks: pairs = the tokens of each frame squared
                     (``vision_full_pairs``; default N x N)
  merger             2 B (N / 4) (4 d) (4 d) + 2 B (N / 4) (4 d) out

A connector on ``Q`` rows: ``2 B Q hidden dim + 2 B Q dim dim``.

``dense_attention=True`` counts every (query, key) pair of the masked
dense products the XLA path computes (``T x T`` for the causal decoder,
``N x N`` for the full vision blocks) instead of the attended pairs.
"""

from __future__ import annotations

from kiwi_jax.flops.terms import (
  FlopCount,
  TermBuilder,
  Trained,
  recompute_filter,
  trained_by_regex,
)
from kiwi_jax.models.mllm.config import Qwen25VLConfig


def qwen_flops(
  cfg: Qwen25VLConfig,
  *,
  batch: int,
  text_len: int,
  trained: Trained | None = None,
  **kwargs,
) -> FlopCount:
  """Matmul FLOPs of one Qwen2.5-VL forward (see :func:`add_qwen_terms`).

  Args:
    cfg: the Qwen2.5-VL config.
    batch: sequences ``B``.
    text_len: tokens per sequence ``T`` (padded length).
    trained: which parameter paths train (default: every parameter).
    **kwargs: the other arguments of :func:`add_qwen_terms`.
  """
  builder = TermBuilder(trained or trained_by_regex())
  add_qwen_terms(builder, cfg, batch=batch, text_len=text_len, **kwargs)
  return builder.count()


def add_qwen_terms(
  b: TermBuilder,
  cfg: Qwen25VLConfig,
  *,
  batch: int,
  text_len: int,
  vision_patches: int = 0,
  vision_full_pairs: float | None = None,
  queries_grad: bool = False,
  dense_attention: bool = False,
  prefix: str = "mllm",
) -> bool:
  """Adds the vision tower (when ``vision_patches``) and the decoder.

  Args:
    b: the builder.
    cfg: the Qwen2.5-VL config (``remat`` is read).
    batch, text_len: see :func:`qwen_flops`.
    vision_patches: patch slots ``N`` per sample (``pixel_values.shape[1]``).
    vision_full_pairs: attended (query, key) pairs per sample of a
      full-attention vision block (the sum over frames of their patch
      count squared); default ``N * N``.
    queries_grad: whether the token embeddings need a gradient (trained
      learnable queries replace some of them).
    dense_attention: count masked pairs too (see the module docstring).
    prefix: Qwen2.5-VL's path in the trained model.

  Returns:
    whether the last hidden states need a gradient.
  """
  outer_recompute = b.recomputed
  if cfg.remat:
    b.recomputed = recompute_filter("full")
  embeds_grad = queries_grad or b.trained(
    f"{prefix}/language_model/embed_tokens"
  )
  if vision_patches:
    embeds_grad |= _add_vision(
      b,
      cfg,
      batch,
      vision_patches,
      vision_full_pairs,
      dense_attention,
      f"{prefix}/visual",
    )
  hidden_grad = _add_text(
    b,
    cfg,
    batch,
    text_len,
    embeds_grad,
    dense_attention,
    f"{prefix}/language_model",
  )
  b.recomputed = outer_recompute
  return hidden_grad


def _add_vision(b, cfg, batch, patches, full_pairs, dense, prefix) -> bool:
  v = cfg.vision
  d, rows = v.hidden_size, batch * patches
  x_grad = b.dense(f"{prefix}/patch_embed", rows, v.patch_dim, d, False)
  window_tokens = v.merger_window**2 * v.merge_unit
  if full_pairs is None or dense:
    full_pairs = float(patches) * patches
  for i in range(v.depth):
    blk = f"{prefix}/blocks/{i}"
    y_grad = x_grad or b.trained(f"{blk}/norm1/weight")
    qkv = b.dense(f"{blk}/attn/qkv", rows, d, 3 * d, y_grad)
    pairs = (
      full_pairs
      if i in v.fullatt_block_indexes
      else float(patches) * min(window_tokens, patches)
    )
    out = b.attention(
      f"{blk}/attn", batch * v.num_heads, pairs, v.head_dim, qkv, qkv, qkv
    )
    x_grad |= b.dense(f"{blk}/attn/proj", rows, d, d, out)
    y_grad = x_grad or b.trained(f"{blk}/norm2/weight")
    h = b.dense(f"{blk}/mlp/gate_proj", rows, d, v.intermediate_size, y_grad)
    h |= b.dense(f"{blk}/mlp/up_proj", rows, d, v.intermediate_size, y_grad)
    x_grad |= b.dense(f"{blk}/mlp/down_proj", rows, v.intermediate_size, d, h)
  wide, merged = d * v.merge_unit, rows // v.merge_unit
  y_grad = x_grad or b.trained(f"{prefix}/merger/ln_q/weight")
  h = b.dense(f"{prefix}/merger/fc1", merged, wide, wide, y_grad)
  return b.dense(f"{prefix}/merger/fc2", merged, wide, v.out_hidden_size, h)


def _add_text(b, cfg, batch, text_len, x_grad, dense, prefix) -> bool:
  t = cfg.text
  d, hd, rows = t.hidden_size, t.head_dim, batch * text_len
  q_width, kv_width = t.num_heads * hd, t.num_kv_heads * hd
  pairs = (
    float(text_len) * text_len if dense else text_len * (text_len + 1) / 2.0
  )
  rank = t.lora_rank_of
  for i in range(t.num_layers):
    layer = f"{prefix}/layers/{i}"
    att = f"{layer}/self_attn"
    y_grad = x_grad or b.trained(f"{layer}/input_layernorm/weight")
    q = b.dense(f"{att}/q_proj", rows, d, q_width, y_grad, rank("q_proj"))
    k = b.dense(f"{att}/k_proj", rows, d, kv_width, y_grad, rank("k_proj"))
    v = b.dense(f"{att}/v_proj", rows, d, kv_width, y_grad, rank("v_proj"))
    out = b.attention(att, batch * t.num_heads, pairs, hd, q, k, v)
    x_grad |= b.dense(f"{att}/o_proj", rows, q_width, d, out, rank("o_proj"))
    y_grad = x_grad or b.trained(f"{layer}/post_attention_layernorm/weight")
    mlp = f"{layer}/mlp"
    h = b.dense(
      f"{mlp}/gate_proj",
      rows,
      d,
      t.intermediate_size,
      y_grad,
      rank("gate_proj"),
    )
    h |= b.dense(
      f"{mlp}/up_proj", rows, d, t.intermediate_size, y_grad, rank("up_proj")
    )
    x_grad |= b.dense(
      f"{mlp}/down_proj", rows, t.intermediate_size, d, h, rank("down_proj")
    )
  return x_grad or b.trained(f"{prefix}/norm/weight")


def add_connector_terms(
  b: TermBuilder,
  path: str,
  *,
  rows: int,
  mllm_hidden: int,
  dim: int,
  input_grad: bool,
) -> bool:
  """A Kiwi connector (``Linear -> GELU -> Linear``) on ``rows`` rows."""
  h = b.dense(f"{path}/fc1", rows, mllm_hidden, dim, input_grad)
  return b.dense(f"{path}/fc2", rows, dim, dim, h)


__all__ = ["add_connector_terms", "add_qwen_terms", "qwen_flops"]
