"""Hugging Face Qwen2.5-VL safetensors <-> kiwi_jax ``Qwen25VL``.

Three key layouts are accepted (detected from the keys):

* ``hub``: the original hub files, ``visual.*`` and ``model.*`` (+
  ``lm_head.*``);
* ``v5``: transformers 5 ``save_pretrained`` of the conditional-generation
  model, ``model.visual.*`` and ``model.language_model.*`` (+ ``lm_head.*``);
* ``base``: ``Qwen2_5_VLModel.state_dict()``, ``visual.*`` and
  ``language_model.*``.

``lm_head`` is never used (Kiwi-Edit removes it; the 3B model ties it to the
embeddings). LoRA factors are not part of these files: a model built with
``lora_rank > 0`` gets fresh LoRA factors (``lora_b`` zero).

Usage::

  model = load_qwen2_5_vl("/ckpt/Qwen2.5-VL-3B-Instruct",
                          Qwen25VLConfig.from_variant("qwen2.5-vl-3b"))
  save_qwen2_5_vl(model, "/tmp/qwen.safetensors", layout="hub")
"""

from __future__ import annotations

import os
from typing import Any

import jax
from flax import nnx

from kiwi_jax.converters.assign import (
  LINEAR,
  KeyMap,
  assign,
  compose,
  export,
  reshape,
  save_safetensors,
)
from kiwi_jax.converters.checkpoint_io import Checkpoint, open_checkpoint
from kiwi_jax.models.mllm.config import Qwen25VLConfig
from kiwi_jax.models.mllm.model import Qwen25VL

LAYOUTS = {
  # layout: (vision prefix, text prefix)
  "hub": ("visual.", "model."),
  "v5": ("model.visual.", "model.language_model."),
  "base": ("visual.", "language_model."),
}
IGNORED = (r"lm_head\..*",)


def detect_layout(keys) -> str:
  """``hub``, ``v5`` or ``base`` from a checkpoint's key names."""
  keys = list(keys)
  if any(k.startswith("model.language_model.") for k in keys):
    return "v5"
  if any(k.startswith("language_model.") for k in keys):
    return "base"
  if any(k.startswith("model.layers.") for k in keys):
    return "hub"
  raise ValueError(
    "Cannot tell the Qwen2.5-VL key layout: expected keys starting with "
    "'model.layers.', 'model.language_model.' or 'language_model.'; first "
    f"keys are {keys[:5]}."
  )


def _linear(torch_key: str, path: tuple, bias: bool = True) -> list[KeyMap]:
  maps = [KeyMap(f"{torch_key}.weight", path + ("kernel",), LINEAR)]
  if bias:
    maps.append(KeyMap(f"{torch_key}.bias", path + ("bias",)))
  return maps


def _norm(torch_key: str, path: tuple) -> KeyMap:
  return KeyMap(f"{torch_key}.weight", path + ("weight",))


def keymaps(cfg: Qwen25VLConfig, layout: str = "hub") -> list[KeyMap]:
  """The conversion plan for ``cfg`` in the given key layout."""
  if layout not in LAYOUTS:
    raise ValueError(f"Unknown layout {layout!r}; use one of {list(LAYOUTS)}.")
  vp, tp = LAYOUTS[layout]
  v, t = cfg.vision, cfg.text
  maps: list[KeyMap] = []
  # Vision tower. The Conv3d weight (D, C, T, P, P) flattens to (D, 1176),
  # the processor's patch layout, then transposes into the Dense kernel.
  conv_shape = (
    v.hidden_size,
    v.in_channels,
    v.temporal_patch_size,
    v.patch_size,
    v.patch_size,
  )
  maps.append(
    KeyMap(
      f"{vp}patch_embed.proj.weight",
      ("visual", "patch_embed", "kernel"),
      compose(reshape(conv_shape, (v.hidden_size, v.patch_dim)), LINEAR),
    )
  )
  for i in range(v.depth):
    src, dst = f"{vp}blocks.{i}.", ("visual", "blocks", i)
    maps += [
      _norm(src + "norm1", dst + ("norm1",)),
      _norm(src + "norm2", dst + ("norm2",)),
    ]
    maps += _linear(src + "attn.qkv", dst + ("attn", "qkv"))
    maps += _linear(src + "attn.proj", dst + ("attn", "proj"))
    for name in ("gate_proj", "up_proj", "down_proj"):
      maps += _linear(src + f"mlp.{name}", dst + ("mlp", name))
  maps.append(_norm(f"{vp}merger.ln_q", ("visual", "merger", "ln_q")))
  maps += _linear(f"{vp}merger.mlp.0", ("visual", "merger", "fc1"))
  maps += _linear(f"{vp}merger.mlp.2", ("visual", "merger", "fc2"))
  # Decoder.
  lm = ("language_model",)
  maps.append(KeyMap(f"{tp}embed_tokens.weight", lm + ("embed_tokens",)))
  for i in range(t.num_layers):
    src, dst = f"{tp}layers.{i}.", lm + ("layers", i)
    maps += [
      _norm(src + "input_layernorm", dst + ("input_layernorm",)),
      _norm(
        src + "post_attention_layernorm", dst + ("post_attention_layernorm",)
      ),
    ]
    for name in ("q_proj", "k_proj", "v_proj"):
      maps += _linear(src + f"self_attn.{name}", dst + ("self_attn", name))
    maps += _linear(
      src + "self_attn.o_proj", dst + ("self_attn", "o_proj"), bias=False
    )
    for name in ("gate_proj", "up_proj", "down_proj"):
      maps += _linear(src + f"mlp.{name}", dst + ("mlp", name), bias=False)
  maps.append(_norm(f"{tp}norm", lm + ("norm",)))
  return maps


def to_hf_config(cfg: Qwen25VLConfig):
  """The equivalent ``transformers.Qwen2_5_VLConfig`` (for parity checks and
  for writing a ``config.json`` next to exported weights)."""
  from transformers import Qwen2_5_VLConfig

  v, t = cfg.vision, cfg.text
  return Qwen2_5_VLConfig(
    text_config=dict(
      vocab_size=t.vocab_size,
      hidden_size=t.hidden_size,
      intermediate_size=t.intermediate_size,
      num_hidden_layers=t.num_layers,
      num_attention_heads=t.num_heads,
      num_key_value_heads=t.num_kv_heads,
      rms_norm_eps=t.rms_norm_eps,
      max_position_embeddings=128000,
      rope_parameters={
        "rope_type": "default",
        "rope_theta": t.rope_theta,
        "mrope_section": list(t.mrope_section),
      },
      # Ids inside the vocabulary (transformers warns otherwise).
      bos_token_id=min(151643, t.vocab_size - 1),
      eos_token_id=min(151645, t.vocab_size - 1),
      pad_token_id=min(151643, t.vocab_size - 1),
    ),
    vision_config=dict(
      depth=v.depth,
      hidden_size=v.hidden_size,
      intermediate_size=v.intermediate_size,
      num_heads=v.num_heads,
      in_channels=v.in_channels,
      patch_size=v.patch_size,
      spatial_merge_size=v.spatial_merge_size,
      temporal_patch_size=v.temporal_patch_size,
      window_size=v.window_size,
      out_hidden_size=v.out_hidden_size,
      fullatt_block_indexes=list(v.fullatt_block_indexes),
      tokens_per_second=v.tokens_per_second,
    ),
    image_token_id=cfg.image_token_id,
    video_token_id=cfg.video_token_id,
    vision_start_token_id=cfg.vision_start_token_id,
    vision_end_token_id=cfg.vision_end_token_id,
    tie_word_embeddings=True,
  )


def load_qwen2_5_vl(
  source: str | os.PathLike | Checkpoint,
  cfg: Qwen25VLConfig,
  *,
  mesh=None,
  dtype: Any = None,
  layout: str | None = None,
  seed: int = 0,
) -> Qwen25VL:
  """Builds a :class:`Qwen25VL` from a Hugging Face checkpoint.

  Args:
    source: a safetensors file or shard directory, or an open checkpoint.
    cfg: model config matching the checkpoint.
    mesh: shard parameters by their logical axes on this mesh.
    dtype: cast parameters (default: ``cfg.param_dtype``).
    layout: key layout; detected when None.
    seed: seed of fresh LoRA factors (when ``cfg.text.lora_rank > 0``).

  Raises:
    CheckpointMismatchError: listing all missing, unexpected and mis-shaped
      keys.
  """
  ckpt = source if isinstance(source, Checkpoint) else open_checkpoint(source)
  layout = layout or detect_layout(ckpt.keys())

  def ctor():
    return Qwen25VL(cfg, rngs=nnx.Rngs(seed))

  graphdef, lora_abstract, base_abstract = nnx.split(
    nnx.eval_shape(ctor), nnx.LoRAParam, ...
  )
  base = assign(
    base_abstract,
    keymaps(cfg, layout),
    ckpt,
    dtype=dtype,
    mesh=mesh,
    ignore_unused=IGNORED,
  )
  if jax.tree.leaves(lora_abstract):
    # Only the LoRA factors leave the jitted init; XLA drops the rest.
    lora = jax.jit(lambda: nnx.state(ctor(), nnx.LoRAParam))()
  else:
    lora = lora_abstract
  return nnx.merge(graphdef, lora, base)


def save_qwen2_5_vl(
  model: Qwen25VL, path: str | os.PathLike, layout: str = "hub"
):
  """Writes the model's weights as one safetensors file (atomically).

  LoRA factors are not written; call ``lora.merge_lora`` first to bake them
  into the kernels.
  """
  state = nnx.state(model, nnx.Not(nnx.LoRAParam))
  return save_safetensors(export(state, keymaps(model.cfg, layout)), path)
