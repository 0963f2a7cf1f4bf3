"""Hyperparameters of the Wan video DiT, with named variants.

Values from ``docs/reference.md`` §1.1 (Wan2.2-TI2V-5B, hash branch
``1f5ab770...`` of ``WanModelStateDictConverter.from_civitai`` in
``diffsynth/models/wan_video_dit.py``) and 1.2 (Wan2.1-T2V-14B).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from kiwi_jax.layers import context_parallel as context_parallel_lib

# Named checkpoint points inside a block (blocks.py tags them with
# ``checkpoint_name``); some remat policies save a few of them.
QUERY = "dit_query"
KEY = "dit_key"
VALUE = "dit_value"
SELF_ATTN_OUT = "dit_self_attn_out"
CROSS_ATTN_OUT = "dit_cross_attn_out"
FFN_OUT = "dit_ffn_out"
CHECKPOINT_NAMES = (QUERY, KEY, VALUE, SELF_ATTN_OUT, CROSS_ATTN_OUT, FFN_OUT)

REMAT_POLICIES = (
  "none",
  "full",
  "dots",
  "dots_no_batch",
  "save_attention",
  "save_qkv_attention",
  "save_block_io",
)


@dataclasses.dataclass(frozen=True)
class WanDiTConfig:
  """Wan DiT hyperparameters (DiffSynth ``WanModel`` names in comments).

  Attributes:
    dim: model width (``dim``).
    num_layers: number of DiT blocks.
    num_heads: attention heads; ``head_dim = dim // num_heads``.
    ffn_dim: FFN hidden width.
    in_channels: latent channels in (``in_dim``).
    out_channels: latent channels out (``out_dim``).
    patch_size: (t, h, w) patch of the Conv3d patch embedding.
    text_dim: width of the stock text encoder output (``text_embedding``).
    freq_dim: sinusoidal timestep features.
    eps: epsilon of every LayerNorm and q/k RMSNorm.
    rope_theta: RoPE base.
    rope_max_seq_len: positions per RoPE axis in the reference's table; a
      grid longer than this along any axis is rejected, as in the reference.
    source_condition: build ``vae_condition`` (Kiwi source-video injection).
    reference_condition: build ``ref_vae_condition`` (Kiwi reference tokens).
    ref_pad_first: reference tokens go before the video tokens and take RoPE
      time index 0 (the video is shifted by the reference frames).
    dtype: compute dtype.
    param_dtype: parameter dtype.
    remat_policy: one of ``REMAT_POLICIES``; ``"none"`` keeps every
      activation, ``"full"`` recomputes each block in the backward pass.
    attention: ``implementation`` for ``layers.dot_product_attention``
      (``"xla"``, ``"cudnn"``, ``"chunked"`` or None for automatic).
    attention_chunk_size: query chunk for ``attention="chunked"`` (and key
      chunk of the ring in context-parallel self-attention).
    context_parallel: self-attention when the token axis is sharded over
      the mesh (``sequence`` axis above 1): ``"ulysses"`` (all-to-all over
      heads), ``"ring"`` (k/v blocks around a ring), ``"auto"`` (Ulysses
      where the per-device heads divide by the sequence shards, else the
      ring) or ``"none"`` (gather k/v on every device). See
      ``kiwi_jax.layers.context_parallel``.
    lora_rank: LoRA rank on every block's ``self_attn`` / ``cross_attn``
      ``q, k, v, o`` and ``ffn.0`` / ``ffn.2`` (the 14B stage-2 scripts use
      128, scale 1; reference §4.2); 0 builds no LoRA parameters.
  """

  dim: int = 3072
  num_layers: int = 30
  num_heads: int = 24
  ffn_dim: int = 14336
  in_channels: int = 48
  out_channels: int = 48
  patch_size: tuple[int, int, int] = (1, 2, 2)
  text_dim: int = 4096
  freq_dim: int = 256
  eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_max_seq_len: int = 1024
  source_condition: bool = False
  reference_condition: bool = False
  ref_pad_first: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat_policy: str = "none"
  attention: str | None = "xla"
  attention_chunk_size: int = 1024
  context_parallel: str = "auto"
  lora_rank: int = 0

  def __post_init__(self):
    if self.dim % self.num_heads:
      raise ValueError(
        f"dim {self.dim} is not divisible by num_heads {self.num_heads}."
      )
    if (self.head_dim // 3) % 2 or self.head_dim % 2:
      # The 3-D RoPE gives each of h and w ``head_dim // 3`` dims as complex
      # pairs, so that split must be even (128 -> 44/42/42).
      raise ValueError(
        f"head_dim {self.head_dim} must be even with an even "
        "head_dim // 3 (Wan's 3-D RoPE split)."
      )
    if self.lora_rank < 0:
      raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}.")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
        f"Unknown remat_policy {self.remat_policy!r}; choose "
        f"one of {REMAT_POLICIES}."
      )
    context_parallel_lib.check_mode(self.context_parallel)
    object.__setattr__(self, "patch_size", tuple(self.patch_size))

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def patch_features(self) -> int:
    """Inputs of one patch token: ``pt * ph * pw * in_channels``."""
    return math.prod(self.patch_size) * self.in_channels

  @property
  def out_patch_features(self) -> int:
    return math.prod(self.patch_size) * self.out_channels

  def replace(self, **changes) -> WanDiTConfig:
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_variant(cls, name: str, **overrides) -> WanDiTConfig:
    """A named variant (see ``VARIANTS``) with optional field overrides."""
    if name not in VARIANTS:
      raise KeyError(
        f"Unknown Wan DiT variant {name!r}; known: {sorted(VARIANTS)}."
      )
    return dataclasses.replace(VARIANTS[name], **overrides)


VARIANTS: dict[str, WanDiTConfig] = {
  # Kiwi-Edit's released DiT. 4,999,787,712 parameters (reference §1.1).
  "wan2.2-ti2v-5b": WanDiTConfig(),
  # Wan2.1-T2V-14B. 14,288,491,584 parameters (reference §1.2).
  "wan2.1-t2v-14b": WanDiTConfig(
    dim=5120,
    num_layers=40,
    num_heads=40,
    ffn_dim=13824,
    in_channels=16,
    out_channels=16,
  ),
  # Test-sized: 2 heads of 24 (RoPE split 8/8/8), 48 latent channels like
  # the 5B so the Wan2.2 code paths are exercised.
  "tiny": WanDiTConfig(
    dim=48,
    num_layers=2,
    num_heads=2,
    ffn_dim=64,
    in_channels=48,
    out_channels=48,
    text_dim=32,
    freq_dim=32,
    rope_max_seq_len=32,
  ),
}


def remat_policy(name: str) -> Any:
  """``jax.checkpoint`` policy for a ``REMAT_POLICIES`` name (None = none)."""
  policies = jax.checkpoint_policies
  if name == "none":
    return None
  if name == "full":
    return policies.nothing_saveable
  if name == "dots":
    return policies.dots_saveable
  if name == "dots_no_batch":
    return policies.dots_with_no_batch_dims_saveable
  if name == "save_attention":
    return policies.save_only_these_names(SELF_ATTN_OUT)
  if name == "save_qkv_attention":
    return policies.save_only_these_names(QUERY, KEY, VALUE, SELF_ATTN_OUT)
  if name == "save_block_io":
    return policies.save_only_these_names(
      SELF_ATTN_OUT, CROSS_ATTN_OUT, FFN_OUT
    )
  raise ValueError(
    f"Unknown remat_policy {name!r}; choose one of {REMAT_POLICIES}."
  )
