"""Qwen2.5-VL-3B (the MLLM encoder of Kiwi-Edit) in Flax NNX.

Public surface:
  * :class:`Qwen25VLConfig` (``from_variant("qwen2.5-vl-3b" | "tiny")``),
  * :class:`Qwen25VL` and its output :class:`Qwen25VLOutput`,
  * ``processing.QwenProcessor`` (torch-free chat, tokens, positions) over
    ``vision_preprocess`` (image and video pixels),
  * ``bucketing`` (static shapes), ``lora`` (LoRA targets; the layer is
    ``kiwi_jax.layers.lora``),
  * ``rope_index.mrope_position_ids`` and ``vision.vision_metadata``.
"""

from kiwi_jax.models.mllm.config import (
  Qwen25VLConfig,
  QwenTextConfig,
  QwenVisionConfig,
)
from kiwi_jax.models.mllm.model import Qwen25VL, Qwen25VLOutput

__all__ = [
  "Qwen25VL",
  "Qwen25VLConfig",
  "Qwen25VLOutput",
  "QwenTextConfig",
  "QwenVisionConfig",
]
