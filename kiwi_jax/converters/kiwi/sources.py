"""Read a released Kiwi-Edit checkpoint, in either layout, lazily.

:func:`from_diffsynth` (a DiffSynth training checkpoint plus the base Wan
DiT, the Wan VAE ``.pth`` and a Qwen2.5-VL directory) and
:func:`from_diffusers` (a ``KiwiEditPipeline`` directory) both return a
:class:`KiwiSources`: one lazy :class:`~kiwi_jax.converters.checkpoint_io.Checkpoint`
in the canonical namespace of :mod:`kiwi_jax.converters.kiwi.names`, the metadata the
model config needs (``ref_pad_first``, query counts, the Qwen config, the
processor files) and a report of what each component came from, or that it
is absent.

Nothing is read until a tensor is asked for; a merged LoRA weight reads its
base tensor and its two factors and adds ``B @ A`` in fp32 (``W + alpha *
B @ A`` with alpha 1, ``merge_mllm_lora_into_qwen`` / ``load_lora`` in the
reference; reference §7.2). Problems found while reading the layout (a LoRA factor
without its pair or target, a fine-tuned tensor whose shape differs from the
base, keys that belong to no component) are collected and raised together.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from kiwi_jax.converters.checkpoint_io import (
  Checkpoint,
  CheckpointError,
  open_checkpoint,
)
from kiwi_jax.converters.kiwi import names

# peft target names, in the order of ``QwenTextConfig.lora_targets``.
from kiwi_jax.models.mllm.config import LORA_TARGET_NAMES

LORA_MODES = ("merge", "keep")
COMPONENTS = (
  "dit",
  "vae",
  "qwen",
  "image_queries",
  "video_queries",
  "ref_queries",
  "connector",
  "ref_connector",
  "vae_condition",
  "ref_vae_condition",
)
# Files of a Qwen directory that are not weights: tokenizer and processor.
_WEIGHT_FILE = re.compile(
  r"(model|pytorch_model|diffusion_pytorch_model)"
  r"([-.].*)?\.(safetensors|bin)(\.index\.json)?"
)


# LoRA that kiwi_jax can keep as separate factors (``kiwi_jax.layers.lora``):
# the Qwen decoder's attention and MLP projections (``lora_targets``) and
# the Wan DiT blocks' attention q/k/v/o and FFN linears (the 14B scripts).
# LoRA on anything else is always merged.
_KEEPABLE_QWEN = re.compile(
  r"qwen\.model\.layers\.\d+\.(self_attn\.(?P<attn>[qkvo]_proj)|"
  r"mlp\.(?P<mlp>gate_proj|up_proj|down_proj))"
)
_KEEPABLE_DIT = re.compile(
  r"dit\.blocks\.\d+\.((self|cross)_attn\.[qkvo]|"
  r"ffn\.[02])"
)


@dataclasses.dataclass
class _Tensor:
  shape: tuple[int, ...]
  dtype: str
  read: Callable[[], np.ndarray]
  origin: str


@dataclasses.dataclass
class KiwiSources:
  """A Kiwi checkpoint in the canonical namespace, lazily readable.

  Attributes:
    checkpoint: canonical key -> tensor (see :mod:`kiwi_jax.converters.kiwi.names`).
    layout: ``"diffsynth"`` or ``"diffusers"``.
    report: component -> where it comes from, or ``"absent"``.
    ref_pad_first: reference tokens before the video (diffusers:
      ``ref_embedder/config.json``; DiffSynth: given by the caller).
    qwen_config: the Hugging Face Qwen2.5-VL ``config.json`` (dict).
    mllm_config: the diffusers ``mllm_encoder/config.json`` (or {}).
    dit_config / vae_config: configs found next to the weights (or {}).
    dit_config_path: where ``dit_config`` is (or would be) read from.
    processor_files: tokenizer / processor files to ship with the model.
    lora: ``"merge"`` or ``"keep"``; kept LoRA factors appear as
      ``<target>.lora_A.weight`` / ``.lora_B.weight``.
    lora_rank: rank of the kept MLLM LoRA (0 without kept LoRA).
    lora_targets: the Qwen projections with kept LoRA factors (peft
      names, e.g. ``("q_proj", ..., "down_proj")``; empty without).
    dit_lora_rank: rank of the kept DiT LoRA (0 without kept LoRA).
    problems: layout problems found while reading (``missing``,
      ``unexpected``, ``misshaped`` lists); the converter reports them
      together with the model plan's own, before writing anything.
  """

  checkpoint: Checkpoint
  layout: str
  report: dict[str, str]
  ref_pad_first: bool | None
  qwen_config: dict[str, Any]
  mllm_config: dict[str, Any]
  dit_config: dict[str, Any]
  vae_config: dict[str, Any]
  processor_files: dict[str, pathlib.Path]
  lora: str
  lora_rank: int
  problems: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  lora_targets: tuple[str, ...] = ()
  dit_lora_rank: int = 0
  dit_config_path: pathlib.Path | None = None

  def has(self, component: str) -> bool:
    return self.report.get(component, "absent") != "absent"


class _Builder:
  """Accumulates canonical tensors and layout problems."""

  def __init__(self, lora: str):
    if lora not in LORA_MODES:
      raise ValueError(f"lora must be one of {LORA_MODES}, got {lora!r}.")
    self.lora = lora
    self.tensors: dict[str, _Tensor] = {}
    self.factors: dict[str, dict[str, tuple[Checkpoint, str]]] = {}
    self.unexpected: list[str] = []
    self.misshaped: list[str] = []
    self.missing: list[str] = []

  def add(self, key: str, ckpt: Checkpoint, raw: str) -> None:
    self.tensors[key] = _Tensor(
      ckpt.shape(raw),
      ckpt.dtype(raw),
      lambda: ckpt.read(raw),
      f"{ckpt.source}:{raw}",
    )

  def add_all(
    self,
    ckpt: Checkpoint,
    prefix: str,
    rename: Callable[[str], str | None] = lambda k: k,
  ) -> None:
    for raw in ckpt:
      key = rename(raw)
      if key is None:
        self.unexpected.append(f"{ckpt.source}:{raw}")
      else:
        self.add(prefix + key, ckpt, raw)

  def override(self, key: str, ckpt: Checkpoint, raw: str) -> None:
    """A fine-tuned tensor replacing a base one of the same shape."""
    base = self.tensors.get(key)
    if base is None:
      self.unexpected.append(f"{ckpt.source}:{raw} (no such base tensor {key})")
    elif base.shape != ckpt.shape(raw):
      self.misshaped.append(
        f"{ckpt.source}:{raw}: {ckpt.shape(raw)}, base {key} is {base.shape}"
      )
    else:
      self.add(key, ckpt, raw)

  def add_factor(
    self, target: str, ab: str, ckpt: Checkpoint, raw: str
  ) -> None:
    self.factors.setdefault(target, {})[ab] = (ckpt, raw)

  def resolve_lora(self) -> dict[str, Any]:
    """Merges (or keeps) every LoRA pair.

    Returns:
      ``{"qwen": rank, "dit": rank, "qwen_targets": (peft names)}`` of the
      kept factors (rank 0 when none is kept).
    """
    ranks = {"qwen": set(), "dit": set()}
    qwen_targets = set()
    for target, pair in sorted(self.factors.items()):
      if set(pair) != {"A", "B"}:
        have = next(iter(pair))
        ckpt, raw = pair[have]
        other = "B" if have == "A" else "A"
        self.missing.append(
          f"{ckpt.source}:"
          f"{raw.replace('lora_' + have, 'lora_' + other)}"
          f" (the partner of {raw})"
        )
        continue
      (ca, ra), (cb, rb) = pair["A"], pair["B"]
      weight = target + ".weight"
      base = self.tensors.get(weight)
      a_shape, b_shape = ca.shape(ra), cb.shape(rb)
      if base is None:
        self.unexpected.append(
          f"{cb.source}:{rb} (LoRA target {weight} is not in the base model)"
        )
        continue
      if (
        len(a_shape) != 2
        or len(b_shape) != 2
        or a_shape[0] != b_shape[1]
        or (b_shape[0], a_shape[1]) != base.shape
      ):
        self.misshaped.append(
          f"{cb.source}:{rb} {b_shape} @ {ra} {a_shape} "
          f"does not fit {weight} {base.shape}"
        )
        continue
      qwen = _KEEPABLE_QWEN.fullmatch(target)
      dit = _KEEPABLE_DIT.fullmatch(target)
      if self.lora == "keep" and (qwen or dit):
        ranks["qwen" if qwen else "dit"].add(a_shape[0])
        if qwen:
          qwen_targets.add(qwen.group("attn") or qwen.group("mlp"))
        self.add(f"{target}.lora_A.weight", ca, ra)
        self.add(f"{target}.lora_B.weight", cb, rb)
      else:
        self.tensors[weight] = _merged(base, ca, ra, cb, rb)
    for part, name in (("qwen", "MLLM"), ("dit", "DiT")):
      if len(ranks[part]) > 1:
        self.misshaped.append(
          f"{name} LoRA factors have different ranks {sorted(ranks[part])}"
        )
    return {
      "qwen": max(ranks["qwen"], default=0),
      "dit": max(ranks["dit"], default=0),
      "qwen_targets": tuple(t for t in LORA_TARGET_NAMES if t in qwen_targets),
    }

  def problems(self) -> dict[str, list[str]]:
    return {
      "missing": sorted(self.missing),
      "unexpected": sorted(self.unexpected),
      "misshaped": sorted(self.misshaped),
    }

  def checkpoint(self, source: str) -> Checkpoint:
    index = {
      k: {"shape": t.shape, "dtype": t.dtype} for k, t in self.tensors.items()
    }
    tensors = dict(self.tensors)

    def reader(key, item):
      value = tensors[key].read()
      return value if item is None else value[item]

    return Checkpoint(source, index, reader)


def _merged(base: _Tensor, ca, ra, cb, rb) -> _Tensor:
  """``W + B @ A`` in fp32 (``merge_mllm_lora_into_qwen``; DiffSynth's
  ``load_lora`` adds in bf16), cast to the model's dtype by ``assign``."""

  def read():
    w = np.asarray(base.read(), np.float32)
    a = np.asarray(ca.read(ra), np.float32)
    b = np.asarray(cb.read(rb), np.float32)
    return w + b @ a

  return _Tensor(
    base.shape, "float32", read, f"{base.origin} + {cb.source}:{rb} @ {ra}"
  )


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return {}
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: invalid JSON ({e}).") from e


def _processor_files(*dirs: pathlib.Path | None) -> dict[str, pathlib.Path]:
  files = {}
  for d in dirs:
    if d is None or not d.is_dir():
      continue
    for f in sorted(d.iterdir()):
      if (
        f.is_file()
        and not _WEIGHT_FILE.fullmatch(f.name)
        and f.name != "config.json"
        and not f.name.endswith(".py")
      ):
        files.setdefault(f.name, f)
  return files


def _qwen_keys(b: _Builder, qwen: Checkpoint) -> None:
  for raw in qwen:
    key = names.qwen_hub_name(raw)
    if key.startswith(("visual.", "model.")):
      b.add("qwen." + key, qwen, raw)
    elif not key.startswith("lm_head."):  # Kiwi has no lm_head (tied).
      b.unexpected.append(f"{qwen.source}:{raw}")


def _component_report(b: _Builder, origins: dict[str, str]) -> dict[str, str]:
  keys = b.tensors.keys()
  prefixes = {
    "dit": "dit.",
    "vae": "vae.",
    "qwen": "qwen.",
    "image_queries": "mllm.image_queries",
    "video_queries": "mllm.video_queries",
    "ref_queries": "mllm.ref_queries",
    "connector": "mllm.connector.",
    "ref_connector": "mllm.ref_connector.",
    "vae_condition": "vae_condition.",
    "ref_vae_condition": "ref_vae_condition.",
  }
  return {
    c: (
      origins.get(c, "present")
      if any(k.startswith(p) for k in keys)
      else "absent"
    )
    for c, p in prefixes.items()
  }


def from_diffsynth(
  kiwi_checkpoint,
  base_dit,
  vae,
  qwen_dir,
  *,
  lora: str = "merge",
  ref_pad_first: bool | None = None,
) -> KiwiSources:
  """A DiffSynth-format Kiwi training checkpoint with its base models.

  Args:
    kiwi_checkpoint: the ``.safetensors`` of trainable tensors (keys
      ``mllm.*``, ``dit.*``, ``vae_condition.*``, ``ref_vae_condition.*``,
      optionally behind ``pipe.``).
    base_dit: the Wan2.2-TI2V-5B (or Wan2.1) DiT, a safetensors file or
      shard directory (original names, optional ``model.`` prefix).
    vae: ``Wan2.2_VAE.pth`` (or a safetensors of the same names).
    qwen_dir: a Qwen2.5-VL-3B-Instruct directory (weights, config,
      tokenizer and processor files).
    lora: ``"merge"`` LoRA factors into their base weights or ``"keep"``
      them as separate parameters.
    ref_pad_first: how the reference-only model was trained; DiffSynth
      checkpoints do not record it (the released ``..._pad_first`` model
      needs True).
  """
  b = _Builder(lora)
  qwen_dir = pathlib.Path(qwen_dir)
  base = open_checkpoint(base_dit, strip_prefixes=("model.",))
  b.add_all(
    base,
    "dit.",
    (lambda k: names.dit_from_diffusers(k))
    if names.is_diffusers_dit(base.keys())
    else (lambda k: k),
  )
  b.add_all(
    open_checkpoint(vae, strip_prefixes=("model.", "module.", "vae.")), "vae."
  )
  _qwen_keys(b, open_checkpoint(qwen_dir))
  kiwi = open_checkpoint(kiwi_checkpoint, strip_prefixes=("pipe.",))
  origins = {
    "dit": f"base {base.source}",
    "vae": f"{vae}",
    "qwen": f"base {qwen_dir}",
  }
  fine_tuned_dit = False
  lora_on = set()
  for raw in kiwi:
    key = raw
    if key.startswith(names.DIT_TOP_LEVEL):
      key = "dit." + key  # remove_prefix "pipe.dit." leaves bare DiT keys
    lora_match = names.LORA_KEY.fullmatch(key)
    if lora_match:
      target = lora_match.group("target")
      if target.startswith("mllm.model."):
        target = "qwen." + names.qwen_hub_name(target[len("mllm.model.") :])
      elif not target.startswith("dit."):
        b.unexpected.append(f"{kiwi.source}:{raw} (LoRA on an unknown module)")
        continue
      b.add_factor(target, lora_match.group("ab"), kiwi, raw)
      lora_on.add("qwen" if target.startswith("qwen.") else "dit")
      continue
    mllm = names.diffsynth_mllm_name(key)
    if mllm is not None:
      b.add(mllm, kiwi, raw)
    elif key.startswith("dit."):
      b.override(key, kiwi, raw)
      fine_tuned_dit = True
    elif key.startswith("mllm.model."):
      b.override(
        "qwen." + names.qwen_hub_name(key[len("mllm.model.") :]), kiwi, raw
      )
    elif key.startswith(("vae_condition.", "ref_vae_condition.")):
      b.add(key, kiwi, raw)
    else:
      b.unexpected.append(f"{kiwi.source}:{raw}")
  if fine_tuned_dit:
    origins["dit"] = f"{kiwi.source} (fine-tuned over {base.source})"
  for component in lora_on:
    origins[component] += (
      f" + LoRA from {kiwi.source} ({dict(merge='merged', keep='kept')[lora]})"
    )
  kept = b.resolve_lora()
  source = f"DiffSynth Kiwi checkpoint {kiwi.source}"
  dit_dir = pathlib.Path(base_dit)
  dit_dir = dit_dir if dit_dir.is_dir() else dit_dir.parent
  return KiwiSources(
    checkpoint=b.checkpoint(source),
    layout="diffsynth",
    report=_component_report(b, origins),
    ref_pad_first=ref_pad_first,
    qwen_config=_read_json(qwen_dir / "config.json"),
    mllm_config={},
    dit_config=_read_json(dit_dir / "config.json"),
    vae_config={},
    processor_files=_processor_files(qwen_dir),
    lora=lora,
    lora_rank=kept["qwen"],
    lora_targets=kept["qwen_targets"],
    dit_lora_rank=kept["dit"],
    problems=b.problems(),
    dit_config_path=dit_dir / "config.json",
  )


def _open_weights(folder: pathlib.Path, pattern: str) -> Checkpoint | None:
  files = sorted(folder.glob(pattern))
  if not files:
    return None
  index = sorted(folder.glob(pattern.split("*")[0] + "*.index.json"))
  return (
    open_checkpoint(folder if index else files[0])
    if (index or len(files) == 1)
    else _open_shards(folder, files)
  )


def _open_shards(folder, files) -> Checkpoint:
  parts = [open_checkpoint(f) for f in files]
  index, owner = {}, {}
  for part in parts:
    for k in part:
      index[k] = {"shape": part.shape(k), "dtype": part.dtype(k)}
      owner[k] = part
  return Checkpoint(
    str(folder),
    index,
    lambda k, item: (
      owner[k].read(k) if item is None else owner[k].read_slice(k, item)
    ),
  )


def from_diffusers(directory) -> KiwiSources:
  """A diffusers ``KiwiEditPipeline`` directory (``model_index.json``, ...).

  LoRA is already merged in this layout. ``ref_pad_first`` is read from
  ``ref_embedder/config.json``; components whose weights are absent are
  reported absent.
  """
  root = pathlib.Path(directory)
  index = _read_json(root / "model_index.json")
  if not index:
    raise CheckpointError(
      f"{root}: no model_index.json; not a diffusers Kiwi-Edit directory."
    )
  b = _Builder("merge")
  origins = {}
  transformer = _open_weights(
    root / "transformer", "diffusion_pytorch_model*.safetensors"
  )
  if transformer is None:
    raise CheckpointError(
      f"{root / 'transformer'}: no diffusion_pytorch_model*.safetensors."
    )
  b.add_all(transformer, "dit.", names.dit_from_diffusers)
  vae = _open_weights(root / "vae", "diffusion_pytorch_model*.safetensors")
  if vae is not None:
    b.add_all(vae, "vae.")
  mllm_dir = root / "mllm_encoder"
  qwen = _open_weights(mllm_dir, "model*.safetensors")
  if qwen is not None:
    _qwen_keys(b, qwen)
  custom = _open_weights(mllm_dir, "diffusion_pytorch_model*.safetensors")
  if custom is not None:
    b.add_all(custom, "", names.diffusers_mllm_name)
  for folder, prefix in (
    ("source_embedder", "vae_condition."),
    ("ref_embedder", "ref_vae_condition."),
  ):
    part = _open_weights(root / folder, "diffusion_pytorch_model*.safetensors")
    if part is not None:
      b.add_all(
        part, prefix, lambda k: k if k.startswith("patch_embedding.") else None
      )
      origins[prefix[:-1]] = str(root / folder)
  source = f"diffusers Kiwi directory {root}"
  ref_cfg = _read_json(root / "ref_embedder" / "config.json")
  processor = root / "processor"
  qwen_config = _read_json(processor / "qwen_config.json") or _read_json(
    mllm_dir / "qwen_config.json"
  )
  return KiwiSources(
    checkpoint=b.checkpoint(source),
    layout="diffusers",
    report=_component_report(b, origins),
    ref_pad_first=(
      bool(ref_cfg["ref_pad_first"]) if "ref_pad_first" in ref_cfg else None
    ),
    qwen_config=qwen_config,
    mllm_config=_read_json(mllm_dir / "config.json"),
    dit_config=_read_json(root / "transformer" / "config.json"),
    vae_config=_read_json(root / "vae" / "config.json"),
    processor_files=_processor_files(processor),
    lora="merge",
    lora_rank=0,
    problems=b.problems(),
    dit_config_path=root / "transformer" / "config.json",
  )
