"""A kiwi_jax Kiwi-Edit model -> the diffusers ``KiwiEditPipeline`` layout.

Writes what ``utils/convert_diffusers/convert_weights.py`` writes (spec
7.3): ``model_index.json``, ``transformer/`` (diffusers names),
``vae/`` (original ``Wan2.2_VAE.pth`` names), ``mllm_encoder/`` (Qwen
weights with the LoRA merged, hub names, plus ``image_queries`` ... and
``connector.*`` / ``ref_connector.*`` in
``diffusion_pytorch_model.safetensors``), ``source_embedder/`` and
``ref_embedder/`` (``ref_pad_first`` in the config), ``processor/`` and
``scheduler/``. Absent components are left out, as the reference converter
does. The reference's custom pipeline ``.py`` files are not ours to ship:
copy them from showlab/Kiwi-Edit to run the folder with diffusers.

The directory is written atomically (temporary name, then rename).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any

import numpy as np
from flax import nnx

from kiwi_jax.converters import wan_dit
from kiwi_jax.converters.assign import export, save_safetensors
from kiwi_jax.converters.kiwi import convert as kiwi_conv
from kiwi_jax.converters.kiwi import names
from kiwi_jax.models.kiwi import checkpoint as kiwi_checkpoint
from kiwi_jax.models.kiwi.model import KiwiEdit

WEIGHTS = "diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG = {
  "_class_name": "FlowMatchEulerDiscreteScheduler",
  "shift": 5.0,
  "num_train_timesteps": 1000,
  "base_shift": 0.5,
  "max_shift": 1.15,
}


def canonical_items(model: KiwiEdit, prefix: str = ""):
  """``(canonical key, np.ndarray)`` pairs under ``prefix``, LoRA merged,
  one tensor at a time."""
  cfg = model.cfg
  state = nnx.state(model)
  maps = kiwi_conv.keymaps(cfg)
  factors = {
    km.torch_key: km
    for km in maps
    if ".lora_" in km.torch_key and km.torch_key.startswith(prefix)
  }
  lora = dict(export(state, list(factors.values()))) if factors else {}
  for km in maps:
    if km.torch_key in factors or not km.torch_key.startswith(prefix):
      continue
    ((key, value),) = export(state, [km])
    target = key[: -len(".weight")]
    if f"{target}.lora_B.weight" in lora:
      value = np.asarray(value, np.float32) + np.asarray(
        lora[f"{target}.lora_B.weight"], np.float32
      ) @ np.asarray(lora[f"{target}.lora_A.weight"], np.float32)
    yield key, np.asarray(value)


_FILES = (
  ("dit.", f"transformer/{WEIGHTS}"),
  ("vae.", f"vae/{WEIGHTS}"),
  ("qwen.", "mllm_encoder/model.safetensors"),
  ("mllm.", f"mllm_encoder/{WEIGHTS}"),
  ("vae_condition.", f"source_embedder/{WEIGHTS}"),
  ("ref_vae_condition.", f"ref_embedder/{WEIGHTS}"),
)


def _route(key: str) -> tuple[str, str] | None:
  """Canonical key -> (folder, file key) in the diffusers layout."""
  if key.startswith("dit."):
    return "transformer", names.dit_to_diffusers(key[4:])
  if key.startswith("vae."):
    return "vae", key[4:]
  if key.startswith("qwen."):
    return "mllm_encoder/qwen", key[5:]
  if key.startswith("mllm."):
    return "mllm_encoder", key[5:]
  if key.startswith("vae_condition."):
    return "source_embedder", key[len("vae_condition.") :]
  if key.startswith("ref_vae_condition."):
    return "ref_embedder", key[len("ref_vae_condition.") :]
  return None


def _json(obj: Any, path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj, indent=2) + "\n")


def _vae_config(cfg) -> dict[str, Any]:
  return {
    "_class_name": "VAE",
    "z_dim": cfg.z_dim,
    "dim": cfg.encoder_dim,
    "dim_mult": list(cfg.dim_mult),
    "num_res_blocks": cfg.num_res_blocks,
    "attn_scales": [],
    "temperal_downsample": list(cfg.temporal_downsample),
    "dropout": 0.0,
    "latents_mean": list(cfg.latents_mean),
    "latents_std": list(cfg.latents_std),
    "vae_pth": WEIGHTS,
  }


def export_diffusers(
  model: KiwiEdit,
  out_dir: str | os.PathLike,
  *,
  processor_dir: str | os.PathLike | None = None,
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes ``model`` as a diffusers Kiwi-Edit directory (atomically).

  Args:
    model: the model (LoRA factors, if kept, are merged into the weights).
    out_dir: destination directory.
    processor_dir: tokenizer / processor files (incl. ``qwen_config.json``)
      copied to ``processor/`` (e.g. a converted model's ``processor/``).
    overwrite: replace an existing ``out_dir``.
  """
  cfg = model.cfg
  with kiwi_checkpoint.atomic_directory(out_dir, overwrite) as tmp:
    # One folder at a time: host memory holds one component's tensors.
    for prefix, path in _FILES:
      items = [(_route(k)[1], v) for k, v in canonical_items(model, prefix)]
      if items:
        save_safetensors(items, tmp / path)
      del items
    _json(
      wan_dit.diffusers_config(cfg.dit), tmp / "transformer" / "config.json"
    )
    _json(_vae_config(cfg.vae), tmp / "vae" / "config.json")
    _json(
      {
        "_class_name": "MLLMEncoder",
        "mllm_model_path": ".",
        "dit_dim": cfg.dit.dim,
        "hidden_size": cfg.mllm_hidden,
        "num_image_queries": cfg.num_image_queries,
        "num_video_queries": cfg.num_video_queries,
        "num_ref_queries": cfg.num_ref_queries,
        "max_object_token": cfg.max_ref_tokens,
        "max_frames": cfg.mllm_max_frames,
        "max_pixels_per_frame": cfg.mllm_max_pixels_per_frame,
      },
      tmp / "mllm_encoder" / "config.json",
    )
    for folder, pad in (
      ("source_embedder", False),
      ("ref_embedder", cfg.dit.ref_pad_first),
    ):
      _json(
        {
          "_class_name": "ConditionalEmbedder",
          "in_dim": cfg.dit.in_channels,
          "dim": cfg.dit.dim,
          "patch_size": list(cfg.dit.patch_size),
          "zero_init": True,
          "ref_pad_first": pad,
        },
        tmp / folder / "config.json",
      )
    _json(SCHEDULER_CONFIG, tmp / "scheduler" / "scheduler_config.json")
    proc = tmp / "processor"
    proc.mkdir()
    if processor_dir is not None:
      for f in sorted(pathlib.Path(processor_dir).iterdir()):
        if f.is_file():
          shutil.copyfile(f, proc / f.name)
    _json(
      {
        "_class_name": ["pipeline_kiwi_edit", "KiwiEditPipeline"],
        "_diffusers_version": "0.32.0",
        "processor": ["transformers", "AutoProcessor"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["wan_video_vae", "VAE"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "mllm_encoder": ["mllm_encoder", "MLLMEncoder"],
        "source_embedder": ["conditional_embedder", "ConditionalEmbedder"],
        "ref_embedder": ["conditional_embedder", "ConditionalEmbedder"],
      },
      tmp / "model_index.json",
    )
  return pathlib.Path(out_dir).absolute()
