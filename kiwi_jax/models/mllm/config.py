"""Hyperparameters of Qwen2.5-VL as frozen dataclasses with named variants.

Values of ``qwen2.5-vl-3b`` are those of the hub ``config.json`` of
``Qwen/Qwen2.5-VL-3B-Instruct`` (docs/reference.md §1.6). ``tiny`` is
the small configuration the tests build (it matches the transformers config
of environment.md section 4, with token ids below its vocabulary).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class QwenVisionConfig:
  """The ViT (``visual.*``): windowed attention, 2-D RoPE, 2x2 merger."""

  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  out_hidden_size: int = 2048
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  tokens_per_second: int = 2

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Length of one flattened patch: C * T * P * P (1176 for Qwen)."""
    return (
      self.in_channels
      * self.temporal_patch_size
      * self.patch_size
      * self.patch_size
    )

  @property
  def merge_unit(self) -> int:
    return self.spatial_merge_size**2

  @property
  def merger_window(self) -> int:
    """Window side in merged tokens (112 / 14 / 2 = 4)."""
    return self.window_size // self.spatial_merge_size // self.patch_size


# The one table of the projections of a decoder layer that may carry LoRA
# (peft target names, reference §4.2): the 5B scripts target the attention's, the
# 14B scripts also the MLP's. ``mllm.lora`` and the configs use these names.
ATTENTION_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LORA_TARGETS = ("gate_proj", "up_proj", "down_proj")
LORA_TARGET_NAMES = ATTENTION_LORA_TARGETS + MLP_LORA_TARGETS


@dataclasses.dataclass(frozen=True)
class QwenTextConfig:
  """The Qwen2 decoder (``model.*`` / ``model.language_model.*``)."""

  vocab_size: int = 151936
  hidden_size: int = 2048
  intermediate_size: int = 11008
  num_layers: int = 36
  num_heads: int = 16
  num_kv_heads: int = 2
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1e6
  mrope_section: tuple[int, int, int] = (16, 24, 24)
  # LoRA of this rank on the ``lora_targets`` projections of every decoder
  # layer; 0 means no LoRA parameters. The 5B scripts target q/k/v/o, the
  # 14B scripts also the MLP's gate/up/down (reference §4.2).
  lora_rank: int = 0
  lora_targets: tuple[str, ...] = ATTENTION_LORA_TARGETS

  def __post_init__(self):
    targets = tuple(self.lora_targets)
    unknown = sorted(set(targets) - set(LORA_TARGET_NAMES))
    if unknown:
      raise ValueError(
        f"QwenTextConfig.lora_targets {unknown} unknown; "
        f"choose from {LORA_TARGET_NAMES}."
      )
    object.__setattr__(self, "lora_targets", targets)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def lora_rank_of(self, projection: str) -> int:
    """The LoRA rank of one projection (0 when it is not a target)."""
    return self.lora_rank if projection in self.lora_targets else 0


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
  """Qwen2.5-VL as Kiwi-Edit uses it: vision tower + decoder, no lm_head.

  Attributes:
    query_token_id: ``<|object_ref_start|>``, whose embeddings the learnable
      queries replace (hard-coded 151646 in the reference's patched
      ``modeling_qwen2_5_vl.py``).
    attention: ``dot_product_attention`` implementation for both towers.
    remat: rematerialise each block in the backward pass.
  """

  vision: QwenVisionConfig = QwenVisionConfig()
  text: QwenTextConfig = QwenTextConfig()
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  query_token_id: int = 151646
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention: str | None = "xla"
  remat: bool = False

  def replace(self, **changes) -> Qwen25VLConfig:
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_variant(cls, name: str, **overrides) -> Qwen25VLConfig:
    """``qwen2.5-vl-3b`` or ``tiny``; keyword overrides replace fields."""
    if name not in VARIANTS:
      raise ValueError(
        f"Unknown Qwen2.5-VL variant {name!r}; known: {sorted(VARIANTS)}."
      )
    return dataclasses.replace(VARIANTS[name], **overrides)


VARIANTS: dict[str, Qwen25VLConfig] = {
  "qwen2.5-vl-3b": Qwen25VLConfig(),
  # Ids follow the tiny test tokenizer (kiwi_jax.testing.tokenizer), whose
  # special tokens take ids 0..13 in Qwen's order.
  "tiny": Qwen25VLConfig(
    vision=QwenVisionConfig(
      depth=2,
      hidden_size=32,
      intermediate_size=64,
      num_heads=2,
      fullatt_block_indexes=(1,),
      out_hidden_size=64,
    ),
    text=QwenTextConfig(
      vocab_size=320,
      hidden_size=64,
      intermediate_size=128,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      mrope_section=(2, 3, 3),
    ),
    image_token_id=12,
    video_token_id=13,
    vision_start_token_id=9,
    vision_end_token_id=10,
    query_token_id=3,
  ),
}
