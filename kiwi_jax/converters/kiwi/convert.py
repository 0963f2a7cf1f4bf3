"""Released Kiwi-Edit checkpoints -> one directory kiwi_jax loads.

Pipeline::

  from_diffsynth(...) | from_diffusers(...)        (kiwi_jax.converters.kiwi.sources)
    -> KiwiSources: canonical lazy checkpoint + report + metadata
    -> config_for(sources)       KiwiEditConfig, absent parts switched off
    -> keymaps(cfg)              canonical key -> KiwiEdit state path
    -> assign(...)               plan checked first (missing / unexpected /
                                 mis-shaped all listed), then streamed one
                                 tensor at a time into its sharding
    -> checkpoint.save(...)      Orbax + configs + processor, atomically

The per-model plans are the DiT, VAE and Qwen converters' own
(``kiwi_jax.converters.wan_dit``, ``kiwi_jax.converters.wan_vae``, ``kiwi_jax.converters.qwen2_5_vl``)
moved under the canonical prefixes; only the Kiwi pieces (queries,
connectors, LoRA factors) are mapped here.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from kiwi_jax.converters import qwen2_5_vl, wan_dit, wan_vae
from kiwi_jax.converters.assign import (
  LINEAR,
  CheckpointMismatchError,
  KeyMap,
  assign,
  check_plan,
)
from kiwi_jax.converters.kiwi.sources import KiwiSources
from kiwi_jax.models.kiwi import checkpoint as kiwi_checkpoint
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.models.kiwi.model import abstract_kiwi
from kiwi_jax.models.mllm.lora import ATTENTION_TARGETS

_EMBEDDERS = ("vae_condition.", "ref_vae_condition.")


def _moved(maps, torch_prefix: str, jax_prefix: tuple) -> list[KeyMap]:
  out = []
  for km in maps:
    key = km.torch_key
    if not (torch_prefix == "dit." and key.startswith(_EMBEDDERS)):
      key = torch_prefix + key  # the DiT's embedders are top-level in Kiwi
    out.append(
      dataclasses.replace(km, torch_key=key, jax_path=jax_prefix + km.jax_path)
    )
  return out


def _connector_maps(name: str, path: str) -> list[KeyMap]:
  maps = []
  for idx, fc in (("0", "fc1"), ("2", "fc2")):
    maps.append(
      KeyMap(f"mllm.{name}.{idx}.weight", (path, fc, "kernel"), LINEAR)
    )
    maps.append(KeyMap(f"mllm.{name}.{idx}.bias", (path, fc, "bias")))
  return maps


def keymaps(cfg: KiwiEditConfig) -> list[KeyMap]:
  """The conversion plan: canonical key -> ``KiwiEdit`` state path."""
  dit_maps = wan_dit.keymaps(cfg.dit, "wan")
  if cfg.dit.lora_rank:  # kept factors carry no peft adapter name
    dit_maps += wan_dit.lora_keymaps(cfg.dit, "wan", adapter=None)
  maps = _moved(dit_maps, "dit.", ("dit",))
  maps += _moved(wan_vae.keymaps(cfg.vae, "original"), "vae.", ("vae",))
  maps += _moved(qwen2_5_vl.keymaps(cfg.mllm, "hub"), "qwen.", ("mllm",))
  text = cfg.mllm.text
  if text.lora_rank:
    for i in range(text.num_layers):
      for proj in text.lora_targets:
        module = "self_attn" if proj in ATTENTION_TARGETS else "mlp"
        torch = f"qwen.model.layers.{i}.{module}.{proj}"
        path = ("mllm", "language_model", "layers", i, module, proj)
        # torch A (r, in) / B (out, r) -> lora_a [in, r] / lora_b [r, out].
        maps.append(
          KeyMap(f"{torch}.lora_A.weight", path + ("lora_a",), LINEAR)
        )
        maps.append(
          KeyMap(f"{torch}.lora_B.weight", path + ("lora_b",), LINEAR)
        )
  for mode, n in (
    ("image", cfg.num_image_queries),
    ("video", cfg.num_video_queries),
    ("ref", cfg.num_ref_queries),
  ):
    if n:
      maps.append(KeyMap(f"mllm.{mode}_queries", (f"{mode}_queries", "q")))
  maps += _connector_maps("connector", "connector")
  if cfg.ref_connector:
    maps += _connector_maps("ref_connector", "ref_connector")
  return maps


def config_for(sources: KiwiSources, base: KiwiEditConfig) -> KiwiEditConfig:
  """``base`` with the parts ``sources`` lacks switched off.

  Query counts come from the tensors, ``ref_pad_first`` from the source
  (an error if a reference-capable checkpoint does not say), the LoRA
  ranks and Qwen targets from kept LoRA factors, ``max_ref_tokens`` from
  the diffusers MLLM config.
  """
  ckpt = sources.checkpoint

  def rows(key):
    return ckpt.shape(key)[0] if key in ckpt else 0

  has_ref = sources.has("ref_vae_condition")
  if has_ref and sources.ref_pad_first is None:
    raise ValueError(
      f"{ckpt.source} has reference modules but does not record "
      "ref_pad_first; say how it was trained (--ref-pad-first true|false; "
      "the released '..._pad_first' model needs true)."
    )
  dit = base.dit.replace(
    source_condition=sources.has("vae_condition"),
    reference_condition=has_ref,
    ref_pad_first=bool(sources.ref_pad_first) if has_ref else False,
    lora_rank=sources.dit_lora_rank,
  )
  text = dataclasses.replace(base.mllm.text, lora_rank=sources.lora_rank)
  if sources.lora_targets:
    text = dataclasses.replace(text, lora_targets=sources.lora_targets)
  mllm = base.mllm.replace(text=text)
  max_ref = sources.mllm_config.get("max_object_token", base.max_ref_tokens)
  return base.replace(
    dit=dit,
    mllm=mllm,
    num_image_queries=rows("mllm.image_queries"),
    num_video_queries=rows("mllm.video_queries"),
    num_ref_queries=rows("mllm.ref_queries"),
    ref_connector=sources.has("ref_connector"),
    max_ref_tokens=max_ref,
  )


# Every canonical tensor must land in a parameter (the unused Qwen
# ``lm_head`` is dropped while reading; the DiT's ``text_embedding`` is kept,
# as the released checkpoints carry it).
IGNORE_UNUSED: tuple[str, ...] = ()


def build_state(
  sources: KiwiSources, cfg: KiwiEditConfig, *, mesh=None, dtype: Any = None
):
  """``(graphdef, state)`` of a :class:`KiwiEdit` filled from ``sources``.

  Raises:
    CheckpointMismatchError: every missing, unexpected and mis-shaped key,
      before any tensor is read.
  """
  graphdef, abstract = abstract_kiwi(cfg)
  maps = keymaps(cfg)
  check(sources, abstract, maps)
  state = assign(
    abstract,
    maps,
    sources.checkpoint,
    dtype=dtype,
    mesh=mesh,
    ignore_unused=IGNORE_UNUSED,
  )
  return graphdef, state


def check(sources: KiwiSources, abstract, maps) -> None:
  """Raises one error listing the layout's and the plan's problems."""
  found = {k: list(v) for k, v in sources.problems.items()}
  uncovered: list[str] = []
  try:
    check_plan(abstract, maps, sources.checkpoint, IGNORE_UNUSED)
  except CheckpointMismatchError as e:
    for name in ("missing", "unexpected", "misshaped"):
      found.setdefault(name, []).extend(getattr(e, name))
    uncovered = e.uncovered
  if any(found.values()) or uncovered:
    raise CheckpointMismatchError(
      sources.checkpoint.source,
      sorted(found.get("missing", [])),
      sorted(found.get("unexpected", [])),
      sorted(found.get("misshaped", [])),
      uncovered,
    )


def report(sources: KiwiSources, cfg: KiwiEditConfig) -> dict[str, Any]:
  return {
    "layout": sources.layout,
    "source": sources.checkpoint.source,
    "components": dict(sources.report),
    "lora": (
      sources.lora if sources.layout == "diffsynth" else "merged in source"
    ),
    "mllm_lora_rank_kept": sources.lora_rank,
    "mllm_lora_targets_kept": list(sources.lora_targets),
    "dit_lora_rank_kept": sources.dit_lora_rank,
    "ref_pad_first": cfg.dit.ref_pad_first,
    "modes": list(cfg.modes()),
  }


def convert(
  sources: KiwiSources,
  out_dir,
  base: KiwiEditConfig,
  *,
  mesh=None,
  dtype: Any = None,
  overwrite: bool = False,
) -> tuple[pathlib.Path, dict[str, Any]]:
  """Converts and writes ``out_dir`` atomically; returns it and the report.

  Nothing is written when the checkpoint does not match (every problem is
  raised at once) or anything else fails.
  """
  cfg = config_for(sources, base)
  if dtype is not None:
    cfg = cfg.replace(
      dit=cfg.dit.replace(param_dtype=dtype),
      mllm=cfg.mllm.replace(param_dtype=dtype),
      vae=cfg.vae.replace(param_dtype=dtype),
    )
  if pathlib.Path(out_dir).exists() and not overwrite:
    raise FileExistsError(f"{out_dir} already exists; pass --overwrite.")
  _, state = build_state(sources, cfg, mesh=mesh, dtype=dtype)
  rep = report(sources, cfg)
  extra = (
    {"qwen_config.json": sources.qwen_config} if sources.qwen_config else {}
  )
  path = kiwi_checkpoint.save(
    state,
    cfg,
    out_dir,
    processor_files=sources.processor_files,
    processor_json=extra,
    report=rep,
    overwrite=overwrite,
  )
  return path, rep
