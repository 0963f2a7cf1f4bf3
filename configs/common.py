"""Pieces shared by every config file.

``parse_arg`` turns the text after the colon of ``--config=file.py:ARG`` into
a ConfigDict, big_vision style::

  parse_arg("stage=2,variant=14b,runlocal", stage=1, variant="5b",
            runlocal=False)
  -> {"stage": 2, "variant": "14b", "runlocal": True}

Bare words are booleans set to True; values are converted to the type of the
default (so ``stage=2`` is an int); unknown keys fail with the valid ones
listed.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from kiwi_jax import sharding


def _convert(value: str, default: Any, key: str) -> Any:
  if isinstance(default, bool):
    low = value.lower()
    if low in ("1", "true", "yes", "on", ""):
      return True
    if low in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"Config arg {key}={value!r} is not a boolean.")
  if isinstance(default, int):
    return int(value)
  if isinstance(default, float):
    return float(value)
  return value


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``"k=v,k2=v2,flag"`` against ``defaults``."""
  out = dict(defaults)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"Unknown config arg {key!r}; valid args: "
                       f"{sorted(defaults)}.")
    out[key] = _convert(value.strip(), defaults[key],
                        key) if "=" in item else _convert("", defaults[key],
                                                          key)
  return ml_collections.ConfigDict(out)


def mesh_config(**sizes: int) -> ml_collections.ConfigDict:
  """``config.mesh``: sizes per mesh axis; ``-1`` fills the rest."""
  base = {name: 1 for name in sharding.MESH_AXES}
  base["data"] = -1
  base.update(sizes)
  return ml_collections.ConfigDict(base)


def sharding_rules() -> list[tuple[str, Any]]:
  """The default logical-axis rules as a config-editable list."""
  return [(name, axes) for name, axes in sharding.LOGICAL_AXIS_RULES]


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks the config so that a mistyped override fails with a hint."""
  config.lock()
  return config


# Qwen LoRA targets of the Kiwi scripts (peft names, spec 4.2): q/k/v/o in
# the 5B scripts, plus the MLP's gate/up/down in the 14B scripts.
MLLM_ATTENTION_LORA = ("q_proj", "k_proj", "v_proj", "o_proj")
MLLM_ALL_LORA = MLLM_ATTENTION_LORA + ("gate_proj", "up_proj", "down_proj")


def kiwi_block(*, variant: str, family: str, stage: int, lora_rank: int,
               sources: list[dict[str, Any]], tokenizer_dir: str,
               max_pixels: int, size_multiple: int = 32,
               fixed_size: tuple[int, int] | None = None,
               codec: str = "vae", ref_tokens: int = 768,
               seq_len: int = 0, num_patches: int = 0,
               model: dict[str, Any] | None = None,
               batch_size: int = 1, num_workers: int = 0,
               dit_lora_rank: int = 0,
               loss_weighting: str = "gaussian",
               lora_targets: tuple[str, ...] = MLLM_ATTENTION_LORA
               ) -> ml_collections.ConfigDict:
  """``config.kiwi``: what ``kiwi_jax.tasks.kiwi_task.KiwiTask`` reads.

  ``sources``: ``[{path, weight, name, max_frames}]``, mixed batch by batch
  (spec 4.4). ``seq_len``/``num_patches`` 0 pad the MLLM inputs to the
  bucket ladders of ``kiwi_jax.models.mllm.bucketing``. ``lora_rank`` /
  ``lora_targets``: the Qwen LoRA; ``dit_lora_rank``: the DiT LoRA (14B
  stage 2).
  """
  return ml_collections.ConfigDict({
      "variant": variant,
      "variant_family": family,
      "stage": stage,
      "mllm_lora_rank": lora_rank,
      "mllm_lora_targets": tuple(lora_targets),
      "dit_lora_rank": dit_lora_rank,
      "model": model or {},
      "codec": codec,
      "loss_weighting": loss_weighting,
      "unshuffle_factor": 2,
      "tokenizer_dir": tokenizer_dir,
      "seq_len": seq_len,
      "num_patches": num_patches,
      "ref_tokens": ref_tokens,
      "data": {
          "sources": sources,
          "fixed_size": fixed_size,
          "max_pixels": max_pixels,
          "size_multiple": size_multiple,
          "batch_size": batch_size,
          "seed": 0,
          "num_workers": num_workers,
      },
  })


def optimizer(learning_rate: float, grad_accum_steps: int
              ) -> ml_collections.ConfigDict:
  """The reference optimiser (spec 4.3): AdamW wd 0.01, ConstantLR 1/3 for
  5 steps, clipping 1.0."""
  return ml_collections.ConfigDict({
      "learning_rate": learning_rate, "weight_decay": 0.01,
      "grad_clip_norm": 1.0, "grad_accum_steps": grad_accum_steps})
