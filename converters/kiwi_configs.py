"""Infer a :class:`KiwiEditConfig` from the files that come with a checkpoint.

* DiT: diffusers ``transformer/config.json``, or the original Wan
  ``config.json`` next to the base DiT (``dim``, ``num_heads``, ...), or, if
  neither exists, the tensor shapes with Wan's head size of 128.
* Qwen2.5-VL: its Hugging Face ``config.json`` (transformers 4.x flat or 5.x
  ``text_config`` form); the query placeholder id is read from the tokenizer
  (``<|object_ref_start|>``), 151646 in the real vocabulary.
* VAE: diffusers ``vae/config.json`` ``z_dim`` or the ``conv2`` shape, mapped
  to the named Wan VAE variant.

Everything can be overridden by passing an explicit base config.
"""

from __future__ import annotations

import json
import re

from converters import wan_dit, wan_vae
from converters.kiwi_sources import KiwiSources
from kiwi_jax.models.dit import WanDiTConfig
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.models.mllm.config import (Qwen25VLConfig, QwenTextConfig,
                                         QwenVisionConfig)
from kiwi_jax.models.vae import VARIANTS as VAE_VARIANTS
from kiwi_jax.models.vae import WanVAEConfig

QUERY_TOKEN = "<|object_ref_start|>"
WAN_HEAD_DIM = 128


def _dit_from_shapes(ckpt, num_heads: int | None = None) -> WanDiTConfig:
  w = ckpt.shape("dit.patch_embedding.weight")
  layers = {int(m.group(1)) for k in ckpt
            if (m := re.match(r"dit\.blocks\.(\d+)\.", k))}
  return WanDiTConfig(
      dim=w[0], in_channels=w[1], patch_size=tuple(w[2:]),
      out_channels=ckpt.shape("dit.head.head.weight")[0] // (w[2] * w[3]
                                                             * w[4]),
      num_layers=len(layers), num_heads=num_heads or w[0] // WAN_HEAD_DIM,
      ffn_dim=ckpt.shape("dit.blocks.0.ffn.0.weight")[0],
      text_dim=ckpt.shape("dit.text_embedding.0.weight")[1],
      freq_dim=ckpt.shape("dit.time_embedding.0.weight")[1])


def dit_config(sources: KiwiSources) -> WanDiTConfig:
  cfg = sources.dit_config
  if "num_attention_heads" in cfg:
    return wan_dit.config_from_diffusers(cfg)
  # The original Wan config.json (dim, num_heads, ...) gives the heads; the
  # rest is read off the tensors.
  shaped = _dit_from_shapes(sources.checkpoint, cfg.get("num_heads"))
  return shaped.replace(eps=cfg.get("eps", shaped.eps))


def _query_token_id(sources: KiwiSources) -> int | None:
  path = sources.processor_files.get("tokenizer.json")
  if path is None:
    return None
  for tok in json.loads(path.read_text()).get("added_tokens", []):
    if tok.get("content") == QUERY_TOKEN:
      return int(tok["id"])
  return None


def qwen_config(sources: KiwiSources) -> Qwen25VLConfig:
  hf = sources.qwen_config
  if not hf:
    raise ValueError(f"{sources.checkpoint.source}: no Qwen2.5-VL config "
                     "(config.json / qwen_config.json) to build the MLLM.")
  text = {**hf, **hf.get("text_config", {})}
  rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
  vis = hf.get("vision_config", {})
  defaults = QwenVisionConfig()
  vision = QwenVisionConfig(
      depth=vis.get("depth", defaults.depth),
      hidden_size=vis.get("hidden_size", defaults.hidden_size),
      intermediate_size=vis.get("intermediate_size",
                                defaults.intermediate_size),
      num_heads=vis.get("num_heads", defaults.num_heads),
      in_channels=vis.get("in_channels", vis.get("in_chans", 3)),
      patch_size=vis.get("patch_size", defaults.patch_size),
      temporal_patch_size=vis.get("temporal_patch_size",
                                  defaults.temporal_patch_size),
      spatial_merge_size=vis.get("spatial_merge_size",
                                 defaults.spatial_merge_size),
      window_size=vis.get("window_size", defaults.window_size),
      fullatt_block_indexes=tuple(vis.get("fullatt_block_indexes",
                                          defaults.fullatt_block_indexes)),
      out_hidden_size=vis.get("out_hidden_size", text["hidden_size"]),
      tokens_per_second=vis.get("tokens_per_second",
                                defaults.tokens_per_second))
  text_cfg = QwenTextConfig(
      vocab_size=text["vocab_size"], hidden_size=text["hidden_size"],
      intermediate_size=text["intermediate_size"],
      num_layers=text["num_hidden_layers"],
      num_heads=text["num_attention_heads"],
      num_kv_heads=text["num_key_value_heads"],
      rms_norm_eps=text.get("rms_norm_eps", 1e-6),
      rope_theta=rope.get("rope_theta", text.get("rope_theta", 1e6)),
      mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))))
  base = Qwen25VLConfig()
  ids = {k: hf.get(k, getattr(base, k)) for k in (
      "image_token_id", "video_token_id", "vision_start_token_id",
      "vision_end_token_id")}
  query = _query_token_id(sources)
  return Qwen25VLConfig(vision=vision, text=text_cfg, **ids,
                        query_token_id=(base.query_token_id if query is None
                                        else query))


def vae_config(sources: KiwiSources) -> WanVAEConfig:
  """The named Wan VAE variant whose every tensor shape fits the source
  (full-size variants first; they differ in ``z_dim``, spec 1.4 / 1.5)."""
  ckpt = sources.checkpoint
  names = sorted(VAE_VARIANTS, key=lambda n: n.endswith("tiny"))
  for name in names:
    variant = VAE_VARIANTS[name]
    maps = wan_vae.keymaps(variant, "original")
    if all(f"vae.{km.torch_key}" in ckpt
           and km.transform.shape(ckpt.shape(f"vae.{km.torch_key}"))
           == _vae_param_shape(variant, km) for km in maps):
      return variant
  raise ValueError(f"{ckpt.source}: the VAE tensors fit no Wan VAE variant "
                   f"({names}); pass an explicit config (--variant).")


def _vae_param_shape(cfg, km):
  if cfg.name not in _VAE_SHAPES:
    _VAE_SHAPES[cfg.name] = _abstract_vae_shapes(cfg)
  return _VAE_SHAPES[cfg.name][km.jax_path]


_VAE_SHAPES: dict = {}


def _abstract_vae_shapes(cfg):
  from flax import nnx
  from kiwi_jax.models.vae import WanVAE
  abstract = nnx.state(nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))
  return {tuple(p): tuple(v.get_value().shape)
          for p, v in nnx.to_flat_state(abstract)}


def base_config(sources: KiwiSources) -> KiwiEditConfig:
  """A full config from the sources' own config files (and shapes)."""
  return KiwiEditConfig(dit=dit_config(sources), mllm=qwen_config(sources),
                        vae=vae_config(sources))
