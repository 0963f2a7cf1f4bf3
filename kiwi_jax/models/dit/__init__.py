"""Wan video DiT (Wan2.2-TI2V-5B, Wan2.1-T2V-14B) with Kiwi conditioning."""

from kiwi_jax.models.dit.conditioning import (
  ConditionalEmbedder,
  PatchEmbedding,
  patchify,
  unpatchify,
)
from kiwi_jax.models.dit.config import (
  REMAT_POLICIES,
  VARIANTS,
  WanDiTConfig,
  remat_policy,
)
from kiwi_jax.models.dit.model import (
  DiTOutput,
  WanDiT,
  parameter_count,
  rope_tables,
)

__all__ = [
  "REMAT_POLICIES",
  "VARIANTS",
  "ConditionalEmbedder",
  "DiTOutput",
  "PatchEmbedding",
  "WanDiT",
  "WanDiTConfig",
  "parameter_count",
  "patchify",
  "remat_policy",
  "rope_tables",
  "unpatchify",
]
