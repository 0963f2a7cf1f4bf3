"""The Qwen2 decoder of Qwen2.5-VL with multimodal RoPE.

Stock ``Qwen2_5_VLTextModel`` (transformers ``modeling_qwen2_5_vl.py``):
pre-norm layers with grouped-query causal attention (q/k/v with bias, o
without), rotate-half M-RoPE whose frequency bands take their angle from the
temporal, height or width position (``mrope_section``), SwiGLU MLP without
bias, RMSNorm (eps 1e-6) and a final norm. No ``lm_head``: Kiwi-Edit reads
hidden states only (reference §1.6, difference 5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.layers import RMSNorm, SwiGLU, dot_product_attention
from kiwi_jax.layers.lora import dense_or_lora
from kiwi_jax.layers.rope import apply_rotary_half, mrope_cos_sin
from kiwi_jax.models.mllm.config import Qwen25VLConfig, QwenTextConfig
from kiwi_jax.models.mllm.remat import remat_call


class TextAttention(nnx.Module):
  """GQA self-attention with M-RoPE and optional LoRA on q/k/v/o
  (``cfg.lora_targets``)."""

  def __init__(
    self,
    cfg: QwenTextConfig,
    *,
    dtype,
    param_dtype,
    attention: str | None,
    rngs: nnx.Rngs,
  ):
    d, hd = cfg.hidden_size, cfg.head_dim
    self.num_heads, self.num_kv_heads = cfg.num_heads, cfg.num_kv_heads
    self.attention = attention
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    rank = cfg.lora_rank_of
    self.q_proj = dense_or_lora(
      d,
      cfg.num_heads * hd,
      rank=rank("q_proj"),
      kernel_axes=("embed", "heads"),
      **kw,
    )
    self.k_proj = dense_or_lora(
      d,
      cfg.num_kv_heads * hd,
      rank=rank("k_proj"),
      kernel_axes=("embed", "kv"),
      **kw,
    )
    self.v_proj = dense_or_lora(
      d,
      cfg.num_kv_heads * hd,
      rank=rank("v_proj"),
      kernel_axes=("embed", "kv"),
      **kw,
    )
    self.o_proj = dense_or_lora(
      cfg.num_heads * hd,
      d,
      use_bias=False,
      rank=rank("o_proj"),
      kernel_axes=("heads", "embed"),
      **kw,
    )

  def __call__(self, x, cos, sin, segment_ids):
    """x: float[B, T, D]; cos/sin: float[B, T, H]; segment_ids: int[B, T]."""
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, self.num_heads, -1)
    k = self.k_proj(x).reshape(b, t, self.num_kv_heads, -1)
    v = self.v_proj(x).reshape(b, t, self.num_kv_heads, -1)
    q = apply_rotary_half(q, cos, sin)
    k = apply_rotary_half(k, cos, sin)
    q = sharding.constrain(q, ("act_batch", "act_seq", "act_heads", None))
    out = dot_product_attention(
      q,
      k,
      v,
      segment_ids=segment_ids,
      is_causal=True,
      implementation=self.attention,
    )
    return self.o_proj(out.reshape(b, t, -1))


class DecoderLayer(nnx.Module):
  """``x + attn(input_layernorm(x))``, ``x + mlp(post_attention_layernorm)``."""

  def __init__(
    self, cfg: QwenTextConfig, *, dtype, param_dtype, attention, rngs: nnx.Rngs
  ):
    d = cfg.hidden_size
    self.input_layernorm = RMSNorm(
      d, eps=cfg.rms_norm_eps, param_dtype=param_dtype
    )
    self.self_attn = TextAttention(
      cfg, dtype=dtype, param_dtype=param_dtype, attention=attention, rngs=rngs
    )
    self.post_attention_layernorm = RMSNorm(
      d, eps=cfg.rms_norm_eps, param_dtype=param_dtype
    )
    self.mlp = SwiGLU(
      d,
      cfg.intermediate_size,
      use_bias=False,
      dtype=dtype,
      param_dtype=param_dtype,
      lora_rank=cfg.lora_rank,
      lora_targets=tuple(
        t for t in cfg.lora_targets if t in SwiGLU.PROJECTIONS
      ),
      rngs=rngs,
    )

  def __call__(self, x, cos, sin, segment_ids):
    x = x + self.self_attn(self.input_layernorm(x), cos, sin, segment_ids)
    x = x + self.mlp(self.post_attention_layernorm(x))
    return sharding.constrain(x, ("act_batch", "act_seq", "act_embed"))


class TextModel(nnx.Module):
  """Token embedding, decoder layers and the final RMSNorm."""

  def __init__(self, cfg: Qwen25VLConfig, *, rngs: nnx.Rngs):
    t = cfg.text
    self.cfg = t
    self.remat = cfg.remat
    self.dtype = cfg.dtype
    self.embed_tokens = sharding.param(
      jax.nn.initializers.normal(0.02),
      rngs.params(),
      (t.vocab_size, t.hidden_size),
      cfg.param_dtype,
      ("vocab", "embed"),
    )
    self.layers = nnx.List(
      [
        DecoderLayer(
          t,
          dtype=cfg.dtype,
          param_dtype=cfg.param_dtype,
          attention=cfg.attention,
          rngs=rngs,
        )
        for _ in range(t.num_layers)
      ]
    )
    self.norm = RMSNorm(
      t.hidden_size, eps=t.rms_norm_eps, param_dtype=cfg.param_dtype
    )

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """int[B, T] -> float[B, T, D] in the compute dtype."""
    return jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(
      self.dtype
    )

  def __call__(
    self,
    inputs_embeds: jax.Array,
    position_ids: jax.Array,
    segment_ids: jax.Array | None = None,
    return_all_hidden_states: bool = False,
  ):
    """Runs the decoder.

    Args:
      inputs_embeds: float[B, T, D].
      position_ids: int[3, B, T] M-RoPE (temporal, height, width) positions.
      segment_ids: optional int[B, T]; tokens attend only within their
        segment (packing, or 0 for right padding). Causal in any case.
      return_all_hidden_states: also return every layer's input and the
        final output, as transformers' ``hidden_states`` tuple does.

    Returns:
      ``(last, all)``: float[B, T, D] after the final norm, and
      float[L + 1, B, T, D] (embeddings, outputs of layers 1..L-1, final
      normed output) or None.
    """
    t = self.cfg
    cos, sin = mrope_cos_sin(
      position_ids, t.head_dim, t.rope_theta, t.mrope_section
    )
    x = sharding.constrain(
      inputs_embeds.astype(self.dtype), ("act_batch", "act_seq", "act_embed")
    )
    hidden = [x]
    for layer in self.layers:
      if self.remat:
        x = remat_call(layer, x, cos, sin, segment_ids)
      else:
        x = layer(x, cos, sin, segment_ids)
      hidden.append(x)
    x = self.norm(x)
    if not return_all_hidden_states:
      return x, None
    # transformers records each layer's output and replaces the last one by
    # the normed output (``hidden_states[-1] == last_hidden_state``).
    return x, jnp.stack(hidden[:-1] + [x])
