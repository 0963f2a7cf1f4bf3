"""Wan DiT weights: original Wan / DiffSynth and diffusers layouts <-> JAX.

Key names (reference §1.1, 1.7, 7.2, 7.3):

* original Wan / DiffSynth (``WanModel``): ``blocks.{i}.self_attn.q.weight``,
  ``time_projection.1.weight``, ``head.head.weight`` ..., optionally behind a
  ``model.`` (Wan release) or ``dit.`` (Kiwi training checkpoint) prefix. Kiwi
  checkpoints also hold ``vae_condition.patch_embedding.*``,
  ``ref_vae_condition.patch_embedding.*`` and the MLLM's ``mllm.*`` tensors
  (ignored here; the MLLM converter reads them).
* diffusers ``WanTransformer3DModel``: ``blocks.{i}.attn1.to_q.weight``,
  ``condition_embedder.time_proj.weight``, ``proj_out.weight`` ...; Kiwi's
  diffusers release keeps the conditional embedders in separate
  ``source_embedder/`` and ``ref_embedder/`` folders (``patch_embedding.*``).

Loading streams: the plan is checked against the checkpoint's headers first
(missing, unexpected and mis-shaped keys reported together), then every
parameter is built in its sharding from one tensor (or one layer slice) at a
time, so a 14B fp32 model never sits twice in host memory.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from kiwi_jax.converters.assign import (
  CONV,
  IDENTITY,
  LINEAR,
  KeyMap,
  assign,
  compose,
  export,
  reshape,
  save_safetensors,
)
from kiwi_jax.converters.checkpoint_io import (
  Checkpoint,
  CheckpointError,
  open_checkpoint,
)
from kiwi_jax.converters.lora import export_merged, merge_lora, overlay
from kiwi_jax.layers.lora import lora_layers
from kiwi_jax.models.dit import WanDiT, WanDiTConfig
from kiwi_jax.utils import atomic

LAYOUTS = ("wan", "diffusers")
# Original Wan releases prefix keys with ``model.``, Kiwi's DiffSynth
# training checkpoints put the DiT under ``dit.`` (``from_civitai``).
STRIP_PREFIXES = ("dit.", "model.")
# Kiwi training checkpoints carry the MLLM side too; its converter reads it.
IGNORE_UNUSED = (r"mllm\..*",)
_LORA_FACTOR = re.compile(r".+\.lora_[AB](\.[^.]+)?\.weight")

# JAX sub-path -> (wan name, diffusers name) for a block's linear layers.
_BLOCK_LINEARS = {
  ("self_attn", "q"): ("self_attn.q", "attn1.to_q"),
  ("self_attn", "k"): ("self_attn.k", "attn1.to_k"),
  ("self_attn", "v"): ("self_attn.v", "attn1.to_v"),
  ("self_attn", "o"): ("self_attn.o", "attn1.to_out.0"),
  ("cross_attn", "q"): ("cross_attn.q", "attn2.to_q"),
  ("cross_attn", "k"): ("cross_attn.k", "attn2.to_k"),
  ("cross_attn", "v"): ("cross_attn.v", "attn2.to_v"),
  ("cross_attn", "o"): ("cross_attn.o", "attn2.to_out.0"),
  ("ffn", "fc1"): ("ffn.0", "ffn.net.0.proj"),
  ("ffn", "fc2"): ("ffn.2", "ffn.net.2"),
}
# JAX sub-path -> (wan name, diffusers name) for a block's 1-D / table params.
_BLOCK_VECTORS = {
  ("self_attn", "norm_q", "weight"): (
    "self_attn.norm_q.weight",
    "attn1.norm_q.weight",
  ),
  ("self_attn", "norm_k", "weight"): (
    "self_attn.norm_k.weight",
    "attn1.norm_k.weight",
  ),
  ("cross_attn", "norm_q", "weight"): (
    "cross_attn.norm_q.weight",
    "attn2.norm_q.weight",
  ),
  ("cross_attn", "norm_k", "weight"): (
    "cross_attn.norm_k.weight",
    "attn2.norm_k.weight",
  ),
  ("norm3", "weight"): ("norm3.weight", "norm2.weight"),
  ("norm3", "bias"): ("norm3.bias", "norm2.bias"),
  ("modulation",): ("modulation", "scale_shift_table"),
}
_TOP_LINEARS = {
  ("text_embedding", "fc1"): (
    "text_embedding.0",
    "condition_embedder.text_embedder.linear_1",
  ),
  ("text_embedding", "fc2"): (
    "text_embedding.2",
    "condition_embedder.text_embedder.linear_2",
  ),
  ("time_embedding", "fc1"): (
    "time_embedding.0",
    "condition_embedder.time_embedder.linear_1",
  ),
  ("time_embedding", "fc2"): (
    "time_embedding.2",
    "condition_embedder.time_embedder.linear_2",
  ),
  ("time_projection",): ("time_projection.1", "condition_embedder.time_proj"),
  ("head", "proj"): ("head.head", "proj_out"),
}


def _patch_embedding_maps(
  torch_prefix: str, jax_prefix: tuple, cfg: WanDiTConfig
) -> list[KeyMap]:
  """Conv3d ``(dim, c, pt, ph, pw)`` -> Dense kernel ``[pt*ph*pw*c, dim]``."""
  pt, ph, pw = cfg.patch_size
  conv_to_dense = compose(
    CONV,
    reshape(
      (pt, ph, pw, cfg.in_channels, cfg.dim), (cfg.patch_features, cfg.dim)
    ),
  )
  return [
    KeyMap(
      f"{torch_prefix}.weight", jax_prefix + ("proj", "kernel"), conv_to_dense
    ),
    KeyMap(f"{torch_prefix}.bias", jax_prefix + ("proj", "bias")),
  ]


def keymaps(cfg: WanDiTConfig, layout: str = "wan") -> list[KeyMap]:
  """The conversion plan for a model built from ``cfg``.

  Args:
    cfg: the model config (layers, conditional embedders).
    layout: ``"wan"`` (original Wan / DiffSynth names) or ``"diffusers"``.
      The conditional embedders are ``vae_condition.patch_embedding.*`` and
      ``ref_vae_condition.patch_embedding.*`` in both (see
      :func:`open_diffusers` for the diffusers folders).

  Returns:
    One ``KeyMap`` per torch tensor.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"Unknown layout {layout!r}; use one of {LAYOUTS}.")
  col = LAYOUTS.index(layout)
  maps = _patch_embedding_maps("patch_embedding", ("patch_embedding",), cfg)
  for path, names in _TOP_LINEARS.items():
    maps.append(KeyMap(f"{names[col]}.weight", path + ("kernel",), LINEAR))
    maps.append(KeyMap(f"{names[col]}.bias", path + ("bias",)))
  head_mod = ("head.modulation", "scale_shift_table")[col]
  maps.append(KeyMap(head_mod, ("head", "modulation")))
  for i in range(cfg.num_layers):
    for path, names in _BLOCK_LINEARS.items():
      maps.append(
        KeyMap(
          f"blocks.{i}.{names[col]}.weight",
          ("blocks",) + path + ("kernel",),
          LINEAR,
          layer=i,
        )
      )
      maps.append(
        KeyMap(
          f"blocks.{i}.{names[col]}.bias",
          ("blocks",) + path + ("bias",),
          IDENTITY,
          layer=i,
        )
      )
    for path, names in _BLOCK_VECTORS.items():
      maps.append(
        KeyMap(
          f"blocks.{i}.{names[col]}", ("blocks",) + path, IDENTITY, layer=i
        )
      )
  if cfg.source_condition:
    maps += _patch_embedding_maps(
      "vae_condition.patch_embedding", ("vae_condition", "patch_embedding"), cfg
    )
  if cfg.reference_condition:
    maps += _patch_embedding_maps(
      "ref_vae_condition.patch_embedding",
      ("ref_vae_condition", "patch_embedding"),
      cfg,
    )
  return maps


def lora_keymaps(
  cfg: WanDiTConfig, layout: str = "wan", adapter: str | None = "default"
) -> list[KeyMap]:
  """The plan for the blocks' LoRA factors (``cfg.lora_rank`` > 0).

  Torch keys are peft's ``blocks.{i}.<linear>.lora_A.<adapter>.weight``
  (A (r, in)) and ``...lora_B...`` (B (out, r)) on every block linear
  (``self_attn`` / ``cross_attn`` ``q, k, v, o``, ``ffn.0``, ``ffn.2``; spec
  7.2), without ``.<adapter>`` when ``adapter`` is None. They fill
  ``lora_a`` [in, r] and ``lora_b`` [r, out] (transposed) at layer ``i``.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"Unknown layout {layout!r}; use one of {LAYOUTS}.")
  col = LAYOUTS.index(layout)
  mid = "." if adapter is None else f".{adapter}."
  maps = []
  for i in range(cfg.num_layers):
    for path, names in _BLOCK_LINEARS.items():
      for ab in ("A", "B"):
        maps.append(
          KeyMap(
            f"blocks.{i}.{names[col]}.lora_{ab}{mid}weight",
            ("blocks",) + path + (f"lora_{ab.lower()}",),
            LINEAR,
            layer=i,
          )
        )
  return maps


def has_lora(ckpt: Checkpoint) -> bool:
  """Whether ``ckpt`` holds peft LoRA factors (``*.lora_A.*.weight``)."""
  return any(_LORA_FACTOR.fullmatch(k) for k in ckpt)


def detect_layout(ckpt: Checkpoint) -> str:
  """``"diffusers"`` or ``"wan"`` from the checkpoint's key names."""
  if "condition_embedder.time_proj.weight" in ckpt:
    return "diffusers"
  if "time_projection.1.weight" in ckpt:
    return "wan"
  raise CheckpointError(
    f"{ckpt.source}: neither a diffusers WanTransformer3DModel "
    "(condition_embedder.time_proj.weight) nor an original Wan / DiffSynth "
    "DiT (time_projection.1.weight, optional dit./model. prefix)."
  )


def merge_checkpoints(parts: Mapping[str, Checkpoint]) -> Checkpoint:
  """One lazy view over several checkpoints, each under a key prefix."""
  index, owner = {}, {}
  for prefix, ckpt in parts.items():
    for key in ckpt:
      index[prefix + key] = {"shape": ckpt.shape(key), "dtype": ckpt.dtype(key)}
      owner[prefix + key] = (ckpt, key)

  def reader(raw_key, item):
    ckpt, key = owner[raw_key]
    return ckpt.read(key) if item is None else ckpt.read_slice(key, item)

  source = " + ".join(f"{p or ''}{c.source}" for p, c in parts.items())
  return Checkpoint(source, index, reader)


def open_diffusers(
  transformer: str | os.PathLike,
  source_embedder: str | os.PathLike | None = None,
  ref_embedder: str | os.PathLike | None = None,
) -> Checkpoint:
  """Kiwi's diffusers folders as one checkpoint (embedders prefixed
  ``vae_condition.`` / ``ref_vae_condition.``)."""
  parts = {"": open_checkpoint(transformer)}
  if source_embedder is not None:
    parts["vae_condition."] = open_checkpoint(source_embedder)
  if ref_embedder is not None:
    parts["ref_vae_condition."] = open_checkpoint(ref_embedder)
  return parts[""] if len(parts) == 1 else merge_checkpoints(parts)


def load_wan_dit(
  ckpt: Checkpoint | str | os.PathLike,
  cfg: WanDiTConfig,
  *,
  base: Checkpoint | str | os.PathLike | None = None,
  layout: str | None = None,
  mesh=None,
  dtype: Any = None,
  ignore_unused=IGNORE_UNUSED,
  seed: int = 0,
) -> WanDiT:
  """Builds a :class:`WanDiT` from a PyTorch checkpoint, streaming.

  Args:
    ckpt: a :class:`Checkpoint` or a path (safetensors file or folder,
      ``.pth``); paths get the ``dit.`` / ``model.`` prefixes stripped. PEFT
      LoRA pairs in it (Kiwi's 14B DiT LoRA) are merged into their weights
      when ``cfg.lora_rank`` is 0 and kept as the model's LoRA factors
      otherwise; a ``cfg.lora_rank`` model loaded from a checkpoint without
      LoRA gets fresh factors (``lora_b`` zero, seeded by ``seed``).
    base: the base Wan DiT under a partial (e.g. LoRA-only) Kiwi training
      checkpoint; ``ckpt``'s tensors replace or LoRA-update its tensors.
    cfg: model config; its ``param_dtype`` is the stored dtype unless
      ``dtype`` overrides it.
    layout: ``"wan"`` / ``"diffusers"``; detected from the keys if None.
    mesh: shard each parameter by its logical axes on this mesh.
    dtype: cast parameters to this dtype.
    ignore_unused: regexes of checkpoint keys allowed to stay unused.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected and
      mis-shaped key before any tensor is read.
  """
  if not isinstance(ckpt, Checkpoint):
    ckpt = open_checkpoint(ckpt, strip_prefixes=STRIP_PREFIXES)
  if base is not None:
    if not isinstance(base, Checkpoint):
      base = open_checkpoint(base, strip_prefixes=STRIP_PREFIXES)
    ckpt = overlay(base, ckpt, skip=ignore_unused)
  keep = bool(cfg.lora_rank) and has_lora(ckpt)
  if not keep:
    ckpt = merge_lora(ckpt)
  layout = layout or detect_layout(ckpt)

  def ctor():
    return WanDiT(cfg, rngs=nnx.Rngs(seed))

  maps = keymaps(cfg, layout)
  if keep:
    graphdef, abstract = nnx.split(nnx.eval_shape(ctor))
    state = assign(
      abstract,
      maps + lora_keymaps(cfg, layout),
      ckpt,
      dtype=dtype,
      mesh=mesh,
      ignore_unused=ignore_unused,
    )
    return nnx.merge(graphdef, state)
  graphdef, lora_abstract, base_abstract = nnx.split(
    nnx.eval_shape(ctor), nnx.LoRAParam, ...
  )
  base_state = assign(
    base_abstract,
    maps,
    ckpt,
    dtype=dtype,
    mesh=mesh,
    ignore_unused=ignore_unused,
  )
  lora = lora_abstract
  if jax.tree.leaves(lora_abstract):
    # Only the LoRA factors leave the jitted init; XLA drops the rest.
    lora = jax.jit(lambda: nnx.state(ctor(), nnx.LoRAParam))()
  return nnx.merge(graphdef, lora, base_state)


def load_kiwi_diffusers(
  root: str | os.PathLike, *, mesh=None, dtype: Any = None, **overrides
) -> WanDiT:
  """Loads Kiwi's diffusers release layout (``transformer/`` plus optional
  ``source_embedder/`` and ``ref_embedder/``), reading ``ref_pad_first``
  from ``ref_embedder/config.json`` rather than assuming it (reference §7.4)."""
  root = pathlib.Path(root)
  source, ref = root / "source_embedder", root / "ref_embedder"
  fields = dict(
    source_condition=source.is_dir(), reference_condition=ref.is_dir()
  )
  if ref.is_dir():
    ref_config = json.loads((ref / "config.json").read_text())
    fields["ref_pad_first"] = bool(ref_config.get("ref_pad_first", False))
  fields.update(overrides)
  cfg = config_from_diffusers(root / "transformer", **fields)
  ckpt = open_diffusers(
    root / "transformer",
    source if cfg.source_condition else None,
    ref if cfg.reference_condition else None,
  )
  return load_wan_dit(ckpt, cfg, layout="diffusers", mesh=mesh, dtype=dtype)


def diffusers_config(cfg: WanDiTConfig) -> dict[str, Any]:
  """``WanTransformer3DModel`` config for ``cfg``."""
  return {
    "_class_name": "WanTransformer3DModel",
    "patch_size": list(cfg.patch_size),
    "num_attention_heads": cfg.num_heads,
    "attention_head_dim": cfg.head_dim,
    "in_channels": cfg.in_channels,
    "out_channels": cfg.out_channels,
    "text_dim": cfg.text_dim,
    "freq_dim": cfg.freq_dim,
    "ffn_dim": cfg.ffn_dim,
    "num_layers": cfg.num_layers,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": cfg.eps,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": cfg.rope_max_seq_len,
    "pos_embed_seq_len": None,
  }


def config_from_diffusers(
  config: Mapping[str, Any] | str | os.PathLike, **overrides
) -> WanDiTConfig:
  """``WanDiTConfig`` from a diffusers ``config.json`` (dict or path)."""
  if not isinstance(config, Mapping):
    path = pathlib.Path(config)
    config = json.loads(
      (path / "config.json" if path.is_dir() else path).read_text()
    )
  unsupported = {
    k: config.get(k)
    for k in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")
    if config.get(k) is not None
  }
  if (
    unsupported
    or config.get("qk_norm") != "rms_norm_across_heads"
    or (not config.get("cross_attn_norm", True))
  ):
    raise ValueError(
      f"Unsupported WanTransformer3DModel config (I2V image "
      f"branch or other norms): {unsupported or config}."
    )
  fields = dict(
    dim=config["num_attention_heads"] * config["attention_head_dim"],
    num_layers=config["num_layers"],
    num_heads=config["num_attention_heads"],
    ffn_dim=config["ffn_dim"],
    in_channels=config["in_channels"],
    out_channels=config.get("out_channels") or config["in_channels"],
    patch_size=tuple(config["patch_size"]),
    text_dim=config["text_dim"],
    freq_dim=config["freq_dim"],
    eps=config["eps"],
    rope_max_seq_len=config["rope_max_seq_len"],
  )
  fields.update(overrides)
  return WanDiTConfig(**fields)


def _write_json(obj, path: pathlib.Path) -> None:
  atomic.write_text(path, json.dumps(obj, indent=2))


def save_diffusers(
  model: WanDiT,
  transformer_dir: str | os.PathLike,
  *,
  source_embedder_dir: str | os.PathLike | None = None,
  ref_embedder_dir: str | os.PathLike | None = None,
) -> None:
  """Writes the model in diffusers layout (``config.json`` and
  ``diffusion_pytorch_model.safetensors`` per folder, each atomically).

  The conditional embedders go to Kiwi's ``source_embedder`` /
  ``ref_embedder`` folders when the model has them and a folder is given.
  LoRA factors (``cfg.lora_rank`` > 0) are merged into the weights written
  (``W + B @ A`` in fp32), unless the model is already merged.
  """
  cfg = model.cfg
  state = nnx.state(model, nnx.Param)
  maps = keymaps(cfg, "diffusers")
  merged = any(layer.merged for layer in lora_layers(model))
  lora_maps = (
    lora_keymaps(cfg, "diffusers", adapter=None)
    if cfg.lora_rank and not merged
    else []
  )
  targets = [("", pathlib.Path(transformer_dir), diffusers_config(cfg))]
  for flag, prefix, folder, pad_first in (
    (cfg.source_condition, "vae_condition.", source_embedder_dir, False),
    (
      cfg.reference_condition,
      "ref_vae_condition.",
      ref_embedder_dir,
      cfg.ref_pad_first,
    ),
  ):
    if flag and folder is not None:
      targets.append(
        (
          prefix,
          pathlib.Path(folder),
          {
            "_class_name": "ConditionalEmbedder",
            "in_dim": cfg.in_channels,
            "dim": cfg.dim,
            "patch_size": list(cfg.patch_size),
            "zero_init": True,
            "ref_pad_first": pad_first,
          },
        )
      )
  embedder_prefixes = ("vae_condition.", "ref_vae_condition.")
  for prefix, folder, config in targets:
    if prefix:
      part = [m for m in maps if m.torch_key.startswith(prefix)]
      items = ((k[len(prefix) :], v) for k, v in export(state, part))
    else:
      part = [m for m in maps if not m.torch_key.startswith(embedder_prefixes)]
      items = export_merged(state, part, lora_maps)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(items, folder / "diffusion_pytorch_model.safetensors")
    _write_json(config, folder / "config.json")


def convert_to_diffusers(
  src: str | os.PathLike,
  dst: str | os.PathLike,
  cfg: WanDiTConfig,
  *,
  layout: str | None = None,
) -> pathlib.Path:
  """Converts a Wan / DiffSynth (or diffusers) checkpoint to Kiwi's
  diffusers folders under ``dst``: ``transformer/`` and, when ``cfg`` has
  them, ``source_embedder/`` and ``ref_embedder/``.

  The whole plan is checked before anything is written; on any mismatch
  nothing is created under ``dst``.
  """
  model = load_wan_dit(src, cfg, layout=layout)
  dst = pathlib.Path(dst)
  save_diffusers(
    model,
    dst / "transformer",
    source_embedder_dir=dst / "source_embedder"
    if cfg.source_condition
    else None,
    ref_embedder_dir=dst / "ref_embedder" if cfg.reference_condition else None,
  )
  return dst


__all__ = [
  "IGNORE_UNUSED",
  "LAYOUTS",
  "STRIP_PREFIXES",
  "config_from_diffusers",
  "convert_to_diffusers",
  "load_kiwi_diffusers",
  "detect_layout",
  "diffusers_config",
  "keymaps",
  "load_wan_dit",
  "merge_checkpoints",
  "open_diffusers",
  "save_diffusers",
]
