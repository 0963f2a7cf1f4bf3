"""Wan DiT attention and transformer block.

Follows ``WanAttentionBlock`` / ``SelfAttention`` / ``CrossAttention`` in
DiffSynth's ``diffsynth/models/wan_video_dit.py`` (reference §3, step 5)
and diffusers' ``WanTransformerBlock``: modulation chunks ordered
shift/scale/gate (self-attention) then shift/scale/gate (FFN); q/k RMSNorm
over all heads; 3-D RoPE on interleaved pairs in self-attention only;
cross-attention after the affine ``norm3`` with no gate and no modulation.

Precision: the modulation arithmetic and the residual adds of the gated
branches are fp32 (diffusers keeps ``scale_shift_table`` and the norms in
fp32 and adds ``x.float() + out * gate``); matmuls run in the compute dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from kiwi_jax import sharding
from kiwi_jax.layers import (
  GeluTanhMLP,
  LayerNorm,
  RMSNorm,
  dot_product_attention,
)
from kiwi_jax.layers import context_parallel as context_parallel_lib
from kiwi_jax.layers.lora import dense_or_lora
from kiwi_jax.layers.rope import apply_interleaved_rope
from kiwi_jax.models.dit.config import (
  CROSS_ATTN_OUT,
  FFN_OUT,
  KEY,
  QUERY,
  SELF_ATTN_OUT,
  VALUE,
  WanDiTConfig,
)

TOKENS = ("act_batch", "act_seq", "act_embed")
HEADS = ("act_batch", "act_seq", "act_heads", None)
KV_HEADS = ("act_batch", "act_kv_seq", "act_heads", None)


def modulation_param(rngs: nnx.Rngs, chunks: int, dim: int, param_dtype):
  """float[1, chunks, dim] table, ``randn / sqrt(dim)`` as in the reference."""

  def init(key, shape, dtype):
    return jax.random.normal(key, shape, dtype) / dim**0.5

  return sharding.param(
    init, rngs.params(), (1, chunks, dim), param_dtype, (None, None, "norm")
  )


def modulate(
  x: jax.Array, shift: jax.Array, scale: jax.Array, eps: float
) -> jax.Array:
  """``LN(x) * (1 + scale) + shift`` in fp32 (LayerNorm without affine)."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, -1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
  normed = (x32 - mean) * jax.lax.rsqrt(var + eps)
  return normed * (1.0 + scale) + shift


class WanAttention(nnx.Module):
  """Multi-head attention with q/k RMSNorm across all heads.

  Parameters (DiffSynth names): ``q``, ``k``, ``v``, ``o`` (Dense with bias,
  with ``lora_a`` / ``lora_b`` when ``cfg.lora_rank`` > 0) and ``norm_q``,
  ``norm_k`` (RMSNorm over ``dim`` with weight).
  """

  def __init__(self, cfg: WanDiTConfig, *, rngs: nnx.Rngs):
    self.num_heads = cfg.num_heads
    self.attention = cfg.attention
    self.chunk_size = cfg.attention_chunk_size
    self.context_parallel = cfg.context_parallel
    kw = dict(
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      rank=cfg.lora_rank,
      rngs=rngs,
    )
    d = cfg.dim
    self.q = dense_or_lora(d, d, kernel_axes=("embed", "heads"), **kw)
    self.k = dense_or_lora(d, d, kernel_axes=("embed", "heads"), **kw)
    self.v = dense_or_lora(d, d, kernel_axes=("embed", "heads"), **kw)
    self.o = dense_or_lora(d, d, kernel_axes=("heads", "embed"), **kw)
    norm_kw = dict(eps=cfg.eps, axis_name="heads", param_dtype=cfg.param_dtype)
    self.norm_q = RMSNorm(cfg.dim, **norm_kw)
    self.norm_k = RMSNorm(cfg.dim, **norm_kw)

  def _heads(self, x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[:-1] + (self.num_heads, -1))

  def __call__(
    self,
    x: jax.Array,
    context: jax.Array | None = None,
    rope: tuple[jax.Array, jax.Array] | None = None,
    context_mask: jax.Array | None = None,
  ) -> jax.Array:
    """Self-attention (``context`` None, with ``rope``) or cross-attention.

    Args:
      x: float[B, S, dim] queries' source.
      context: float[B, L, dim] keys/values' source (cross-attention).
      context_mask: optional bool[B, L], False on padded context rows
        (batched Kiwi reference mode with different reference sizes).
      rope: (cos, sin) float32[S, head_dim / 2] for self-attention.

    Returns:
      float[B, S, dim].
    """
    kv_source = x if context is None else context
    q = self._heads(self.norm_q(self.q(x)))
    k = self._heads(self.norm_k(self.k(kv_source)))
    v = self._heads(self.v(kv_source))
    if rope is not None:
      q = apply_interleaved_rope(q, *rope)
      k = apply_interleaved_rope(k, *rope)
    q = sharding.constrain(q, HEADS)
    if context is None:
      q = checkpoint_name(q, QUERY)
      k = checkpoint_name(sharding.constrain(k, HEADS), KEY)
      v = checkpoint_name(sharding.constrain(v, HEADS), VALUE)
      scheme = context_parallel_lib.resolve_mode(
        self.context_parallel, q.shape, k.shape
      )
      if scheme != "none":
        # Token-sharded self-attention: Ulysses or ring, no k/v gather.
        out = context_parallel_lib.context_parallel_attention(
          q,
          k,
          v,
          mode=scheme,
          implementation=self.attention,
          chunk_size=self.chunk_size,
        )
        return self._project(out)
    # Keys/values are gathered along the sequence (queries stay sharded).
    k = sharding.constrain(k, KV_HEADS)
    v = sharding.constrain(v, KV_HEADS)
    mask = None if context_mask is None else context_mask[:, None, None, :]
    out = dot_product_attention(
      q,
      k,
      v,
      mask=mask,
      implementation=self.attention,
      chunk_size=self.chunk_size,
    )
    return self._project(out)

  def _project(self, out: jax.Array) -> jax.Array:
    """float[B, S, heads, head_dim] -> ``o`` projection, float[B, S, dim]."""
    out = sharding.constrain(out, HEADS)
    out = out.reshape(out.shape[:-2] + (-1,))
    return self.o(out)


class WanBlock(nnx.Module):
  """One DiT block: modulated self-attention, cross-attention, modulated FFN.

  Parameters: ``self_attn``, ``cross_attn`` (WanAttention), ``norm3``
  (affine LayerNorm before cross-attention; diffusers calls it ``norm2``),
  ``ffn`` (GELU-tanh MLP, ``fc1``/``fc2``), ``modulation`` float[1, 6, dim].
  With ``cfg.lora_rank`` > 0 the attention and FFN linears carry LoRA
  factors (stacked over layers like every block parameter).
  """

  def __init__(self, cfg: WanDiTConfig, *, rngs: nnx.Rngs):
    self.eps = cfg.eps
    self.dtype = cfg.dtype
    self.self_attn = WanAttention(cfg, rngs=rngs)
    self.cross_attn = WanAttention(cfg, rngs=rngs)
    self.norm3 = LayerNorm(cfg.dim, eps=cfg.eps, param_dtype=cfg.param_dtype)
    self.ffn = GeluTanhMLP(
      cfg.dim,
      cfg.ffn_dim,
      cfg.dim,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      lora_rank=cfg.lora_rank,
      rngs=rngs,
    )
    self.modulation = modulation_param(rngs, 6, cfg.dim, cfg.param_dtype)

  def __call__(
    self,
    x: jax.Array,
    context: jax.Array,
    t_mod: jax.Array,
    rope: tuple[jax.Array, jax.Array],
    context_mask: jax.Array | None = None,
  ) -> jax.Array:
    """Applies the block.

    Args:
      x: float[B, S, dim] tokens (compute dtype).
      context: float[B, L, dim] cross-attention context.
      context_mask: optional bool[B, L] (see :class:`WanAttention`).
      t_mod: float[B, 1 or S, 6, dim] timestep modulation (``t_mod``).
      rope: (cos, sin) float32[S, head_dim / 2].

    Returns:
      float[B, S, dim] in the compute dtype.
    """
    x = sharding.constrain(x, TOKENS)
    mod = self.modulation[...].astype(jnp.float32)[None] + t_mod.astype(
      jnp.float32
    )
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
      mod[:, :, i] for i in range(6)
    )

    y = modulate(x, shift_msa, scale_msa, self.eps).astype(self.dtype)
    attn = checkpoint_name(self.self_attn(y, rope=rope), SELF_ATTN_OUT)
    x = (x.astype(jnp.float32) + attn * gate_msa).astype(self.dtype)

    y = self.norm3(x).astype(self.dtype)
    cross = checkpoint_name(
      self.cross_attn(y, context=context, context_mask=context_mask),
      CROSS_ATTN_OUT,
    )
    x = x + cross.astype(self.dtype)

    y = modulate(x, shift_mlp, scale_mlp, self.eps).astype(self.dtype)
    ffn = checkpoint_name(self.ffn(y), FFN_OUT)
    x = x.astype(jnp.float32) + ffn.astype(jnp.float32) * gate_mlp
    return sharding.constrain(x.astype(self.dtype), TOKENS)
