"""Lazy checkpoint views: overlays and PEFT LoRA merging.

Kiwi's training checkpoints (reference §7.2) hold only what was trained: for the
14B scripts the DiT arrives as PEFT LoRA pairs
``blocks.{i}.self_attn.q.lora_A.default.weight`` (rank r, in) and
``...lora_B.default.weight`` (out, r) on top of the base Wan weights, merged
as ``W + (alpha / r) * B @ A`` with alpha / r = 1 (the diffusers export
merges in fp32 and casts back, ``convert_weights.py``). These views do the
same lazily, one tensor at a time, so the assigner can stream from them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from kiwi_jax.converters.assign import KeyMap, export
from kiwi_jax.converters.checkpoint_io import Checkpoint, CheckpointError

_LORA = re.compile(
  r"(?P<module>.+)\.lora_(?P<part>[AB])\.(?P<adapter>[^.]+)"
  r"\.weight"
)


def overlay(
  base: Checkpoint, top: Checkpoint, skip: Iterable[str] = ()
) -> Checkpoint:
  """Keys of ``base`` and ``top``; ``top`` wins. Keys of ``top`` matching a
  ``skip`` regex are left out."""
  skips = [re.compile(p) for p in skip]
  owner = {k: base for k in base}
  owner.update({k: top for k in top if not any(r.fullmatch(k) for r in skips)})
  index = {
    k: {"shape": c.shape(k), "dtype": c.dtype(k)} for k, c in owner.items()
  }

  def reader(key, item):
    ckpt = owner[key]
    return ckpt.read(key) if item is None else ckpt.read_slice(key, item)

  return Checkpoint(f"{top.source} over {base.source}", index, reader)


def merge_lora(
  ckpt: Checkpoint, scale: float = 1.0, adapter: str = "default"
) -> Checkpoint:
  """Folds PEFT LoRA pairs into their base ``<module>.weight``.

  Args:
    ckpt: a checkpoint holding base weights and LoRA pairs (e.g. an
      :func:`overlay` of a Kiwi checkpoint on the base model).
    scale: alpha / rank (1 in Kiwi-Edit).
    adapter: the PEFT adapter name in the keys.

  Returns:
    A view without LoRA keys whose merged weights read as
    ``(W + scale * B @ A)`` computed in fp32 and cast to W's dtype.

  Raises:
    CheckpointError: a LoRA pair is incomplete, has no base weight, or its
      shapes do not multiply to the base weight's shape.
  """
  pairs: dict[str, dict[str, str]] = {}
  for key in ckpt:
    m = _LORA.fullmatch(key)
    if m and m["adapter"] == adapter:
      pairs.setdefault(m["module"] + ".weight", {})[m["part"]] = key
  problems = []
  for weight, parts in sorted(pairs.items()):
    if set(parts) != {"A", "B"}:
      problems.append(f"{weight}: only lora_{''.join(parts)} present")
    elif weight not in ckpt:
      problems.append(f"{weight}: LoRA pair without a base weight")
    else:
      (r, fan_in), (fan_out, r2) = (
        ckpt.shape(parts["A"]),
        ckpt.shape(parts["B"]),
      )
      if r != r2 or ckpt.shape(weight) != (fan_out, fan_in):
        problems.append(
          f"{weight} {ckpt.shape(weight)}: A "
          f"{ckpt.shape(parts['A'])} and B "
          f"{ckpt.shape(parts['B'])} do not fit"
        )
  if problems:
    raise CheckpointError(
      f"{ckpt.source}: bad LoRA pairs:\n  " + "\n  ".join(problems)
    )
  lora_keys = {k for parts in pairs.values() for k in parts.values()}
  index = {
    k: {"shape": ckpt.shape(k), "dtype": ckpt.dtype(k)}
    for k in ckpt
    if k not in lora_keys
  }

  def reader(key, item):
    if key not in pairs:
      return ckpt.read(key) if item is None else ckpt.read_slice(key, item)
    base = ckpt.read(key)
    a = ckpt.read(pairs[key]["A"]).astype(np.float32)
    b = ckpt.read(pairs[key]["B"]).astype(np.float32)
    merged = (base.astype(np.float32) + scale * (b @ a)).astype(base.dtype)
    return merged if item is None else merged[item]

  return Checkpoint(f"{ckpt.source} (LoRA merged)", index, reader)


def export_merged(
  state,
  maps: Sequence[KeyMap],
  lora_maps: Sequence[KeyMap] = (),
  scale: float = 1.0,
) -> Iterator[tuple[str, np.ndarray]]:
  """:func:`~kiwi_jax.converters.assign.export` of ``maps`` with LoRA folded in.

  ``lora_maps`` name the factors ``<module>.lora_A.weight`` /
  ``<module>.lora_B.weight`` (no adapter); each exported
  ``<module>.weight`` with a pair becomes ``W + scale * B @ A`` in fp32,
  cast back to W's dtype. The factors themselves are not written.
  """
  lora = dict(export(state, list(lora_maps))) if lora_maps else {}
  for key, value in export(state, list(maps)):
    module = key[: -len(".weight")]
    if f"{module}.lora_B.weight" in lora:
      b = np.asarray(lora[f"{module}.lora_B.weight"], np.float32)
      a = np.asarray(lora[f"{module}.lora_A.weight"], np.float32)
      value = (np.asarray(value, np.float32) + scale * (b @ a)).astype(
        np.asarray(value).dtype
      )
    yield key, value
