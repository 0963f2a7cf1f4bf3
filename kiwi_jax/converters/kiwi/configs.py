"""Infer a :class:`KiwiEditConfig` from the files that come with a checkpoint.

* DiT: diffusers ``transformer/config.json``, or the tensor shapes (width,
  depth, FFN width, channels, patch, text and frequency widths) with the
  head count of the original Wan ``config.json`` next to the base DiT. The
  weights do not determine the head count; without a config that gives
  it, a released width (3072: 24 heads, 5120: 40) is used and said, any
  other is an error naming the missing file.
* Qwen2.5-VL: its Hugging Face ``config.json`` (transformers 4.x flat or 5.x
  ``text_config`` form); the query placeholder id is read from the tokenizer
  (``<|object_ref_start|>``), 151646 in the real vocabulary.
* VAE: derived from the tensor shapes (they determine the architecture);
  the named variant they match, else the derived config (its latent
  statistics, which the weights lack, are the released VAE's of the same
  ``z_dim`` or mean 0 / std 1, and a note says so).

Everything can be overridden by passing an explicit base config.
"""

from __future__ import annotations

import json
import re

from kiwi_jax.converters import wan_dit, wan_vae
from kiwi_jax.converters.kiwi.sources import KiwiSources
from kiwi_jax.models.dit import WanDiTConfig
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.models.mllm.config import (
  Qwen25VLConfig,
  QwenTextConfig,
  QwenVisionConfig,
)
from kiwi_jax.models.vae import VARIANTS as VAE_VARIANTS
from kiwi_jax.models.vae import WanVAEConfig

QUERY_TOKEN = "<|object_ref_start|>"
# The released Wan DiTs; their widths give their head counts (head size
# 128). The weights do not determine the head count (the q/k RMSNorms span
# the whole width), so other widths need it from a config.json.
RELEASED_DITS = ("wan2.2-ti2v-5b", "wan2.1-t2v-14b")
_DIT_SHAPE_KEYS = (
  "dit.patch_embedding.weight",
  "dit.head.head.weight",
  "dit.blocks.0.ffn.0.weight",
  "dit.text_embedding.0.weight",
  "dit.time_embedding.0.weight",
)


class ConfigInferenceError(ValueError):
  """The sources do not determine a config and no file says what it is."""


def _released_heads(dim: int, config_path, notes: list[str] | None) -> int:
  for name in RELEASED_DITS:
    variant = WanDiTConfig.from_variant(name)
    if variant.dim == dim:
      if notes is not None:
        notes.append(
          f"DiT: no head count in {config_path}; width {dim} is "
          f"the released {name}'s, so num_heads = "
          f"{variant.num_heads} (its head count)."
        )
      return variant.num_heads
  widths = ", ".join(
    f"{n}: {WanDiTConfig.from_variant(n).dim}" for n in RELEASED_DITS
  )
  raise ConfigInferenceError(
    f"{config_path}: not found or without a head count, which the DiT "
    f"weights do not determine, and their width {dim} is no released Wan "
    f"DiT's ({widths}). Put the model's config.json there (Wan: "
    '"num_heads"; diffusers: "num_attention_heads").'
  )


def _dit_from_shapes(
  ckpt,
  num_heads: int | None = None,
  *,
  config_path=None,
  notes: list[str] | None = None,
) -> WanDiTConfig:
  """Everything but the head count is read off the DiT tensors."""
  absent = [k for k in _DIT_SHAPE_KEYS if k not in ckpt]
  if absent:
    raise ConfigInferenceError(
      f"{ckpt.source}: no DiT tensors {absent} to read its config from; "
      "is the base DiT the right file?"
    )
  w = ckpt.shape("dit.patch_embedding.weight")
  layers = {
    int(m.group(1)) for k in ckpt if (m := re.match(r"dit\.blocks\.(\d+)\.", k))
  }
  dim = w[0]
  if num_heads is None:
    num_heads = _released_heads(dim, config_path, notes)
  return WanDiTConfig(
    dim=dim,
    in_channels=w[1],
    patch_size=tuple(w[2:]),
    out_channels=ckpt.shape("dit.head.head.weight")[0] // (w[2] * w[3] * w[4]),
    num_layers=len(layers),
    num_heads=num_heads,
    ffn_dim=ckpt.shape("dit.blocks.0.ffn.0.weight")[0],
    text_dim=ckpt.shape("dit.text_embedding.0.weight")[1],
    freq_dim=ckpt.shape("dit.time_embedding.0.weight")[1],
  )


def dit_config(
  sources: KiwiSources, notes: list[str] | None = None
) -> WanDiTConfig:
  """The DiT config: diffusers ``config.json``, or the shapes with the
  original Wan ``config.json``'s head count (or a released width's)."""
  cfg = sources.dit_config
  if "num_attention_heads" in cfg:
    return wan_dit.config_from_diffusers(cfg)
  shaped = _dit_from_shapes(
    sources.checkpoint,
    cfg.get("num_heads"),
    config_path=sources.dit_config_path,
    notes=notes,
  )
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
    raise ValueError(
      f"{sources.checkpoint.source}: no Qwen2.5-VL config "
      "(config.json / qwen_config.json) to build the MLLM."
    )
  text = {**hf, **hf.get("text_config", {})}
  rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
  vis = hf.get("vision_config", {})
  defaults = QwenVisionConfig()
  vision = QwenVisionConfig(
    depth=vis.get("depth", defaults.depth),
    hidden_size=vis.get("hidden_size", defaults.hidden_size),
    intermediate_size=vis.get("intermediate_size", defaults.intermediate_size),
    num_heads=vis.get("num_heads", defaults.num_heads),
    in_channels=vis.get("in_channels", vis.get("in_chans", 3)),
    patch_size=vis.get("patch_size", defaults.patch_size),
    temporal_patch_size=vis.get(
      "temporal_patch_size", defaults.temporal_patch_size
    ),
    spatial_merge_size=vis.get(
      "spatial_merge_size", defaults.spatial_merge_size
    ),
    window_size=vis.get("window_size", defaults.window_size),
    fullatt_block_indexes=tuple(
      vis.get("fullatt_block_indexes", defaults.fullatt_block_indexes)
    ),
    out_hidden_size=vis.get("out_hidden_size", text["hidden_size"]),
    tokens_per_second=vis.get("tokens_per_second", defaults.tokens_per_second),
  )
  text_cfg = QwenTextConfig(
    vocab_size=text["vocab_size"],
    hidden_size=text["hidden_size"],
    intermediate_size=text["intermediate_size"],
    num_layers=text["num_hidden_layers"],
    num_heads=text["num_attention_heads"],
    num_kv_heads=text["num_key_value_heads"],
    rms_norm_eps=text.get("rms_norm_eps", 1e-6),
    rope_theta=rope.get("rope_theta", text.get("rope_theta", 1e6)),
    mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))),
  )
  base = Qwen25VLConfig()
  ids = {
    k: hf.get(k, getattr(base, k))
    for k in (
      "image_token_id",
      "video_token_id",
      "vision_start_token_id",
      "vision_end_token_id",
    )
  }
  query = _query_token_id(sources)
  return Qwen25VLConfig(
    vision=vision,
    text=text_cfg,
    **ids,
    query_token_id=(base.query_token_id if query is None else query),
  )


def vae_config(
  sources: KiwiSources, notes: list[str] | None = None
) -> WanVAEConfig:
  """The VAE config the tensor shapes give (``wan_vae.config_from_shapes``):
  the named variant they match (reference §1.4 / 1.5), else the derived one."""
  ckpt = sources.checkpoint
  try:
    derived = wan_vae.config_from_shapes(ckpt.with_prefix_stripped("vae."))
  except ValueError as e:
    raise ConfigInferenceError(f"{e} Pass --variant to name the model.") from e
  name = wan_vae.matching_variant(derived)
  cfg = VAE_VARIANTS[name] if name is not None else derived
  misfit = [
    f"vae.{km.torch_key}"
    for km in wan_vae.keymaps(cfg, "original")
    if f"vae.{km.torch_key}" not in ckpt
    or km.transform.shape(ckpt.shape(f"vae.{km.torch_key}"))
    != _vae_param_shape(cfg, km)
  ]
  if misfit:
    raise ConfigInferenceError(
      f"{ckpt.source}: the VAE tensors fit no Wan VAE structure (read "
      f"z_dim {derived.z_dim}, widths {derived.encoder_dim} x "
      f"{derived.dim_mult}; {len(misfit)} tensors missing or mis-shaped, "
      f"first {misfit[0]}); pass an explicit config (--variant)."
    )
  if notes is not None:
    if name is None:
      notes.append(
        f"VAE: config derived from the tensor shapes (z_dim "
        f"{cfg.z_dim}, encoder {cfg.encoder_dim} x {cfg.dim_mult}, "
        f"decoder {cfg.decoder_dim}, {cfg.num_res_blocks} blocks per "
        "stage); it matches no released Wan VAE, and the latent "
        "mean/std are not in the weights: using "
        + (
          "the released VAE's of that z_dim."
          if cfg.z_dim in (48, 16)
          else "mean 0 and std 1."
        )
      )
    elif name in wan_vae.RELEASED_VARIANTS:
      notes.append(f"VAE: the shapes are the released {name}'s.")
  return cfg


def _vae_param_shape(cfg, km):
  if cfg.name not in _VAE_SHAPES:
    _VAE_SHAPES[cfg.name] = _abstract_vae_shapes(cfg)
  return _VAE_SHAPES[cfg.name][km.jax_path]


_VAE_SHAPES: dict = {}


def _abstract_vae_shapes(cfg):
  from flax import nnx

  from kiwi_jax.models.vae import WanVAE

  abstract = nnx.state(nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))
  return {
    tuple(p): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(abstract)
  }


def base_config(
  sources: KiwiSources, notes: list[str] | None = None
) -> KiwiEditConfig:
  """A full config from the sources' own config files (and shapes).

  Args:
    sources: the checkpoint and its files.
    notes: if given, gets one line per guess made (a released variant's
      head count, a derived VAE) for the caller to show.

  Raises:
    ConfigInferenceError: a part is not determined; the message names the
      file that would say.
  """
  return KiwiEditConfig(
    dit=dit_config(sources, notes),
    mllm=qwen_config(sources),
    vae=vae_config(sources, notes),
  )
