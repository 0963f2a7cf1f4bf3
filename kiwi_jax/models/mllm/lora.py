"""LoRA on the Qwen decoder: the targets Kiwi-Edit's scripts use.

The layer and its merge helpers live in :mod:`kiwi_jax.layers.lora` (shared
with the DiT); this module names the Qwen projections they may target
(``QwenTextConfig.lora_targets``): the 5B scripts put LoRA on the attention
projections (``LORA_TARGETS``), the 14B scripts also on the MLP
(``ALL_LORA_TARGETS``; reference §4.2, 7.2).
"""

from kiwi_jax.layers.lora import (
  LoRADense,
  dense_or_lora,
  lora_layers,
  merge_lora,
  unmerge_lora,
)
from kiwi_jax.models.mllm import config as _config

# The table itself is ``mllm.config``'s (``QwenTextConfig`` checks against
# it); these are its names here.
ATTENTION_TARGETS = _config.ATTENTION_LORA_TARGETS
MLP_TARGETS = _config.MLP_LORA_TARGETS
# Default targets (the 5B scripts): q/k/v/o.
LORA_TARGETS = ATTENTION_TARGETS
ALL_LORA_TARGETS = _config.LORA_TARGET_NAMES

__all__ = [
  "ALL_LORA_TARGETS",
  "ATTENTION_TARGETS",
  "LORA_TARGETS",
  "LoRADense",
  "MLP_TARGETS",
  "dense_or_lora",
  "lora_layers",
  "merge_lora",
  "unmerge_lora",
]
