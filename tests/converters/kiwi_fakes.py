"""Tiny fake Kiwi-Edit checkpoints in the released layouts (test helper).

The weights of one tiny model are drawn once in the canonical namespace of
``kiwi_jax.converters.kiwi.names`` (the truth), then written out as

* a DiffSynth training checkpoint of a given stage (exact released key
  names: ``mllm.connetor.*``, ``mllm.*_queries.q``, PEFT LoRA keys
  ``...lora_A.default.weight`` on ``mllm.model.model.language_model``,
  ``dit.*``, ``vae_condition.*``, ``ref_vae_condition.*``) plus the base
  DiT safetensors (+ Wan ``config.json``), a ``Wan2.2_VAE.pth`` and a Qwen
  directory (hub names, HF ``config.json``, tokenizer files); the base
  Qwen weights plus ``B @ A`` equal the truth, and so does the fine-tuned
  DiT (the base DiT differs);
* a diffusers ``KiwiEditPipeline`` directory (LoRA merged, DiT renamed).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
from safetensors.torch import save_file

from kiwi_jax.converters import wan_dit
from kiwi_jax.converters.assign import export
from kiwi_jax.converters.kiwi import names
from kiwi_jax.converters.kiwi.torch_model import hf_qwen_config
from kiwi_jax.testing import build_tiny_qwen_tokenizer

LORA_RANK = 3
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _torch(a):
  return torch.from_numpy(np.ascontiguousarray(a, np.float32))


def _save(tensors, path):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  save_file({k: _torch(v) for k, v in tensors.items()}, str(path))


def truth(cfg, seed=0):
  """Canonical fp32 tensors of one tiny model (all stage-3 components)."""
  import jax
  from diffusers import WanTransformer3DModel
  from flax import nnx
  from transformers import Qwen2_5_VLModel

  from kiwi_jax.converters import wan_vae
  from kiwi_jax.models.vae import WanVAE

  rng = np.random.default_rng(seed)
  torch.manual_seed(seed)
  out = {}
  dit = WanTransformer3DModel(
    **{
      k: v
      for k, v in wan_dit.diffusers_config(cfg.dit).items()
      if not k.startswith("_")
    }
  )
  for k, v in dit.state_dict().items():
    scale = 0.3 if ("norm" in k or "table" in k) else 0.15
    base = 1.0 if "norm" in k and k.endswith("weight") else 0.0
    out["dit." + names.dit_from_diffusers(k)] = (
      base + scale * rng.standard_normal(v.shape)
    ).astype(np.float32)
  qwen = Qwen2_5_VLModel(hf_qwen_config(cfg.mllm))
  for k, v in qwen.state_dict().items():
    is_norm = "norm" in k or "ln_q" in k
    value = (
      1.0 + 0.3 * rng.standard_normal(v.shape)
      if is_norm
      else 0.1 * rng.standard_normal(v.shape)
    )
    hub = (
      "model." + k[len("language_model.") :]
      if k.startswith("language_model.")
      else k
    )
    out["qwen." + hub] = value.astype(np.float32)
  # Random VAE weights from the abstract model (building the VAE eagerly
  # compiles one initialiser per shape, which is slow on CPU).
  abstract = nnx.state(
    nnx.eval_shape(lambda: WanVAE(cfg.vae, rngs=nnx.Rngs(0)))
  )
  vae_state = jax.tree.map(
    lambda a: (0.1 * rng.standard_normal(a.shape)).astype(np.float32), abstract
  )
  for k, v in export(vae_state, wan_vae.keymaps(cfg.vae, "original")):
    out["vae." + k] = np.asarray(v, np.float32)
  hidden, dim = cfg.mllm_hidden, cfg.dit.dim
  for mode, n in (
    ("image", cfg.num_image_queries),
    ("video", cfg.num_video_queries),
    ("ref", cfg.num_ref_queries),
  ):
    out[f"mllm.{mode}_queries"] = rng.standard_normal((n, hidden)).astype(
      np.float32
    )
  for name in ("connector", "ref_connector"):
    for i, shape in (("0", (dim, hidden)), ("2", (dim, dim))):
      out[f"mllm.{name}.{i}.weight"] = (
        rng.standard_normal(shape) / np.sqrt(shape[1])
      ).astype(np.float32)
      out[f"mllm.{name}.{i}.bias"] = 0.1 * rng.standard_normal(shape[0]).astype(
        np.float32
      )
  pt, ph, pw = cfg.dit.patch_size
  for name in ("vae_condition", "ref_vae_condition"):
    out[f"{name}.patch_embedding.weight"] = 0.2 * rng.standard_normal(
      (dim, cfg.dit.in_channels, pt, ph, pw)
    ).astype(np.float32)
    out[f"{name}.patch_embedding.bias"] = 0.1 * rng.standard_normal(dim).astype(
      np.float32
    )
  return out


MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
DIT_LORA_RANK = 2
DIT_LORA_LINEARS = [
  f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"
] + ["ffn.0", "ffn.2"]


def lora_factors(cfg, seed=1, targets=LORA_TARGETS):
  """``{target: (A (r, in), B (out, r))}`` for the Qwen projections
  ``targets`` (q/k/v/o by default; the 14B scripts add gate/up/down)."""
  rng = np.random.default_rng(seed)
  t = cfg.mllm.text
  shapes = {
    "k_proj": (t.hidden_size, t.num_kv_heads * t.head_dim),
    "v_proj": (t.hidden_size, t.num_kv_heads * t.head_dim),
    "gate_proj": (t.hidden_size, t.intermediate_size),
    "up_proj": (t.hidden_size, t.intermediate_size),
    "down_proj": (t.intermediate_size, t.hidden_size),
  }
  out = {}
  for i in range(t.num_layers):
    for proj in targets:
      n_in, n_out = shapes.get(proj, (t.hidden_size, t.hidden_size))
      a = 0.2 * rng.standard_normal((LORA_RANK, n_in))
      b = 0.2 * rng.standard_normal((n_out, LORA_RANK))
      module = "mlp" if proj in MLP_TARGETS else "self_attn"
      out[f"model.layers.{i}.{module}.{proj}"] = (
        a.astype(np.float32),
        b.astype(np.float32),
      )
  return out


def dit_lora_factors(cfg, seed=3):
  """``{canonical target: (A (r, in), B (out, r))}`` for the 14B DiT LoRA:
  every block's attention q/k/v/o and ``ffn.0`` / ``ffn.2``."""
  rng = np.random.default_rng(seed)
  d = cfg.dit
  out = {}
  for i in range(d.num_layers):
    for name in DIT_LORA_LINEARS:
      n_in, n_out = {
        "ffn.0": (d.dim, d.ffn_dim),
        "ffn.2": (d.ffn_dim, d.dim),
      }.get(name, (d.dim, d.dim))
      a = 0.2 * rng.standard_normal((DIT_LORA_RANK, n_in))
      b = 0.2 * rng.standard_normal((n_out, DIT_LORA_RANK))
      out[f"dit.blocks.{i}.{name}"] = (
        a.astype(np.float32),
        b.astype(np.float32),
      )
  return out


STAGE_KIWI_PARTS = {
  1: ("image_queries", "connector"),
  2: ("image_queries", "video_queries", "connector", "dit", "vae_condition"),
  3: (
    "image_queries",
    "video_queries",
    "ref_queries",
    "connector",
    "ref_connector",
    "dit",
    "vae_condition",
    "ref_vae_condition",
  ),
  # The 14B stage 2: the DiT trains through LoRA only.
  "14b-2": ("image_queries", "video_queries", "connector", "vae_condition"),
}


def write_diffsynth(
  tensors, lora, cfg, root, stage=3, extra=None, dit_lora=None
):
  """Writes the four DiffSynth inputs; returns their paths as a dict.

  ``extra``: raw keys added to the Kiwi checkpoint (for error tests).
  ``dit_lora``: :func:`dit_lora_factors`; the base DiT is the truth minus
  ``B @ A`` and the factors go to the Kiwi checkpoint under peft names.
  """
  root = pathlib.Path(root)
  parts = STAGE_KIWI_PARTS[stage]
  rng = np.random.default_rng(2)
  base_dit = {
    k[4:]: v + (0.05 * rng.standard_normal(v.shape) if "dit" in parts else 0.0)
    for k, v in tensors.items()
    if k.startswith("dit.")
  }
  for target, (a, b) in (dit_lora or {}).items():
    base_dit[target[4:] + ".weight"] = base_dit[target[4:] + ".weight"] - b @ a
  _save(
    {f"model.{k}": v for k, v in base_dit.items()},
    root / "wan" / "diffusion_pytorch_model.safetensors",
  )
  d = cfg.dit
  (root / "wan" / "config.json").write_text(
    json.dumps(
      dict(
        dim=d.dim,
        num_heads=d.num_heads,
        num_layers=d.num_layers,
        ffn_dim=d.ffn_dim,
        in_dim=d.in_channels,
        out_dim=d.out_channels,
        freq_dim=d.freq_dim,
        text_len=512,
        eps=d.eps,
        model_type="ti2v",
      )
    )
  )
  torch.save(
    {
      f"model.{k[4:]}": _torch(v)
      for k, v in tensors.items()
      if k.startswith("vae.")
    },
    root / "Wan2.2_VAE.pth",
  )
  qwen_dir = root / "qwen"
  build_tiny_qwen_tokenizer(qwen_dir)
  qwen = {k[5:]: v.copy() for k, v in tensors.items() if k.startswith("qwen.")}
  for target, (a, b) in lora.items():
    qwen[target + ".weight"] = qwen[target + ".weight"] - b @ a
  _save(qwen, qwen_dir / "model.safetensors")
  hf_qwen_config(cfg.mllm).to_json_file(str(qwen_dir / "config.json"))
  kiwi = {}
  for mode in ("image", "video", "ref"):
    if f"{mode}_queries" in parts:
      kiwi[f"mllm.{mode}_queries.q"] = tensors[f"mllm.{mode}_queries"]
  for name, raw in (
    ("connector", "connetor"),
    ("ref_connector", "ref_connector"),
  ):
    if name in parts:
      for suffix in ("0.weight", "0.bias", "2.weight", "2.bias"):
        kiwi[f"mllm.{raw}.{suffix}"] = tensors[f"mllm.{name}.{suffix}"]
  for target, (a, b) in lora.items():
    peft = "mllm.model." + names.qwen_runtime_name(target)
    kiwi[f"{peft}.lora_A.default.weight"] = a
    kiwi[f"{peft}.lora_B.default.weight"] = b
  for target, (a, b) in (dit_lora or {}).items():
    kiwi[f"{target}.lora_A.default.weight"] = a
    kiwi[f"{target}.lora_B.default.weight"] = b
  for k, v in tensors.items():
    if k.startswith("dit.") and "dit" in parts:
      kiwi[k] = v
    if k.split(".")[0] in ("vae_condition", "ref_vae_condition") and (
      k.split(".")[0] in parts
    ):
      kiwi[k] = v
  kiwi.update(extra or {})
  _save(kiwi, root / "kiwi.safetensors")
  return dict(
    kiwi_checkpoint=root / "kiwi.safetensors",
    base_dit=root / "wan",
    vae=root / "Wan2.2_VAE.pth",
    qwen_dir=qwen_dir,
  )


def write_diffusers(tensors, cfg, root, ref_pad_first, stage=3):
  """Writes a diffusers ``KiwiEditPipeline`` directory; returns its path."""
  root = pathlib.Path(root)
  parts = STAGE_KIWI_PARTS[stage]

  def sub(prefix):
    return {
      k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)
    }

  dit = {names.dit_to_diffusers(k): v for k, v in sub("dit.").items()}
  _save(dit, root / "transformer" / "diffusion_pytorch_model.safetensors")
  (root / "transformer" / "config.json").write_text(
    json.dumps(wan_dit.diffusers_config(cfg.dit))
  )
  _save(sub("vae."), root / "vae" / "diffusion_pytorch_model.safetensors")
  (root / "vae" / "config.json").write_text(
    json.dumps(dict(_class_name="VAE", z_dim=cfg.vae.z_dim))
  )
  mllm = root / "mllm_encoder"
  _save(sub("qwen."), mllm / "model.safetensors")
  custom = {}
  for k, v in sub("mllm.").items():
    name = k.split(".")[0]
    mode_part = name.replace("_queries", "")
    if name in parts or (
      name.endswith("_queries") and f"{mode_part}_queries" in parts
    ):
      custom[k] = v
  _save(custom, mllm / "diffusion_pytorch_model.safetensors")
  (mllm / "config.json").write_text(
    json.dumps(
      dict(
        _class_name="MLLMEncoder",
        mllm_model_path=".",
        dit_dim=cfg.dit.dim,
        hidden_size=cfg.mllm_hidden,
        num_image_queries=cfg.num_image_queries,
        num_video_queries=cfg.num_video_queries,
        num_ref_queries=cfg.num_ref_queries,
        max_object_token=cfg.max_ref_tokens,
        max_frames=16,
        max_pixels_per_frame=262144,
      )
    )
  )
  proc = build_tiny_qwen_tokenizer(root / "processor")
  hf_qwen_config(cfg.mllm).to_json_file(str(proc / "qwen_config.json"))
  for folder, prefix, pad in (
    ("source_embedder", "vae_condition", False),
    ("ref_embedder", "ref_vae_condition", ref_pad_first),
  ):
    (root / folder).mkdir(parents=True, exist_ok=True)
    if prefix in parts:
      _save(
        sub(prefix + "."), root / folder / "diffusion_pytorch_model.safetensors"
      )
    (root / folder / "config.json").write_text(
      json.dumps(
        dict(
          _class_name="ConditionalEmbedder",
          in_dim=cfg.dit.in_channels,
          dim=cfg.dit.dim,
          patch_size=list(cfg.dit.patch_size),
          zero_init=True,
          ref_pad_first=pad,
        )
      )
    )
  (root / "scheduler").mkdir(exist_ok=True)
  (root / "scheduler" / "scheduler_config.json").write_text(
    json.dumps(dict(shift=5.0, num_train_timesteps=1000))
  )
  (root / "model_index.json").write_text(
    json.dumps(
      dict(
        _class_name=["pipeline_kiwi_edit", "KiwiEditPipeline"],
        _diffusers_version="0.32.0",
        transformer=["diffusers", "WanTransformer3DModel"],
        vae=["wan_video_vae", "VAE"],
        mllm_encoder=["mllm_encoder", "MLLMEncoder"],
        source_embedder=["conditional_embedder", "ConditionalEmbedder"],
        ref_embedder=["conditional_embedder", "ConditionalEmbedder"],
        processor=["transformers", "AutoProcessor"],
        scheduler=["diffusers", "FlowMatchEulerDiscreteScheduler"],
      )
    )
  )
  return root
