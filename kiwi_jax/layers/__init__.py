"""Shared building blocks used by the DiT, the VAE and the MLLM."""

from kiwi_jax.layers import rope
from kiwi_jax.layers.attention import dot_product_attention, segment_mask
from kiwi_jax.layers.embeddings import timestep_sinusoid
from kiwi_jax.layers.linear import Dense, torch_linear_init
from kiwi_jax.layers.lora import (
  LoRADense,
  lora_layers,
  merge_lora,
  unmerge_lora,
)
from kiwi_jax.layers.mlp import GeluTanhMLP, SwiGLU
from kiwi_jax.layers.norms import LayerNorm, RMSNorm

__all__ = [
  "Dense",
  "GeluTanhMLP",
  "LayerNorm",
  "LoRADense",
  "RMSNorm",
  "SwiGLU",
  "dot_product_attention",
  "lora_layers",
  "merge_lora",
  "rope",
  "segment_mask",
  "timestep_sinusoid",
  "torch_linear_init",
  "unmerge_lora",
]
