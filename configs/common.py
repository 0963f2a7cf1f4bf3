"""Pieces shared by every config file.

``parse_arg`` turns the text after the colon of ``--config=file.py:ARG`` into
a ConfigDict, big_vision style::

  parse_arg("stage=2,variant=14b,runlocal", stage=1, variant="5b",
            runlocal=False)
  -> {"stage": 2, "variant": "14b", "runlocal": True}

Bare words are booleans set to True; values are converted to the type of the
default (so ``stage=2`` is an int); unknown keys fail with the valid ones
listed.

``base`` is the run config every file starts from: every key the trainer
(``kiwi_jax.train_lib.run_config.TrainerConfig``) and the Kiwi tasks
(``kiwi_jax.tasks.kiwi_config``) read, with its default, so
``--config.<key>=`` can set any of them; a file sets only its values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from kiwi_jax import sharding
from kiwi_jax.models.mllm import lora
from kiwi_jax.tasks import curriculum as stages
from kiwi_jax.tasks import kiwi_config
from kiwi_jax.train_lib import run_config


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
      raise ValueError(
        f"Unknown config arg {key!r}; valid args: {sorted(defaults)}."
      )
    out[key] = (
      _convert(value.strip(), defaults[key], key)
      if "=" in item
      else _convert("", defaults[key], key)
    )
  return ml_collections.ConfigDict(out)


def base(
  *, task: str, total_steps: int, **blocks: Any
) -> ml_collections.ConfigDict:
  """Every trainer key with its declared default, ``config.task`` and the
  task's ``blocks`` (``kiwi=kiwi_block(...)``); unlocked until ``lock``."""
  return run_config.base_config(total_steps=total_steps, task=task, **blocks)


# The DiT's default remat policy at real size, chosen by the residuals it
# keeps and the FLOPs it recomputes (docs/real_size_configs.md).
DIT_REMAT_POLICY = "full"


def real_size_model() -> dict[str, Any]:
  """``config.kiwi.model`` of the real-size configs: flash attention chosen
  per backend (``None``: splash on TPU, cuDNN on GPU, XLA on CPU), so the
  [S, S] logits never exist whole on an accelerator; the DiT rematerialised
  with ``DIT_REMAT_POLICY`` and Qwen's layers rematerialised. The compute
  dtype comes from ``config.precision.compute_dtype``."""
  return {
    "dit": {"remat_policy": DIT_REMAT_POLICY, "attention": None},
    "mllm": {"attention": None, "remat": True},
    "vae": {"attention_implementation": None},
  }


def set_real_size_run(config: ml_collections.ConfigDict) -> None:
  """fp32 master weights, bf16 compute and bf16 frozen weights (the
  reference keeps every weight in bf16 and only DeepSpeed's fp32 masters of
  the trained ones); ``sharding.FSDP_OVER_SEQUENCE_RULES`` (the default
  rules while ``sequence`` is 1; above 1 the weights shard over
  ``fsdp`` x ``sequence``); ``fit_mesh_to_batch``, so the released one
  clip per step shards its tokens over the devices the batch cannot use
  (on v5p-8, ``fsdp=4`` becomes ``sequence=4``)."""
  config.fit_mesh_to_batch = True
  config.precision.master_dtype = "float32"
  config.precision.compute_dtype = "bfloat16"
  config.precision.frozen_dtype = "bfloat16"
  config.sharding_rules = [
    (name, axes) for name, axes in sharding.FSDP_OVER_SEQUENCE_RULES
  ]


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks the config so that a mistyped override fails with a hint."""
  config.lock()
  return config


# Qwen LoRA targets of the Kiwi scripts (peft names, reference §4.2): q/k/v/o in
# the 5B scripts, plus the MLP's gate/up/down in the 14B scripts (the one
# table is ``kiwi_jax.models.mllm.config``'s).
MLLM_ATTENTION_LORA = lora.ATTENTION_TARGETS
MLLM_ALL_LORA = lora.ALL_LORA_TARGETS


def stage_sources(
  data_dir: str, stage: int, frames: int, names: tuple[str, ...] | None = None
) -> tuple[kiwi_config.DataSource, ...]:
  """The sources of ``stage`` (``training.stages.stage_sources``, or
  ``names``) under ``data_dir``, weighted 1:1; images have one frame."""
  names = names or stages.stage_sources(stage)
  return tuple(
    kiwi_config.DataSource(
      path=f"{data_dir}/{name}",
      name=name,
      max_frames=1 if name == "image" else frames,
    )
    for name in names
  )


_DATA_KEYS = frozenset(
  f.name for f in dataclasses.fields(kiwi_config.KiwiDataConfig)
)


def kiwi_block(
  *,
  family: str,
  lora_rank: int,
  lora_targets: tuple[str, ...] | None = None,
  **fields: Any,
) -> kiwi_config.KiwiConfig:
  """``config.kiwi`` (``kiwi_config.KiwiConfig``): what ``KiwiTask`` reads.

  ``family``/``lora_rank``/``lora_targets`` set ``variant_family`` and the
  Qwen LoRA (``mllm_lora_*``); the ``KiwiDataConfig`` fields (``sources``,
  ``max_pixels``, ``batch_size``, ...) go to ``data``; the rest are
  ``KiwiConfig`` fields. Unset fields keep their declared defaults.
  """
  data = {k: fields.pop(k) for k in list(fields) if k in _DATA_KEYS}
  if "sources" in data:
    data["sources"] = tuple(data["sources"])
  if lora_targets is not None:
    fields["mllm_lora_targets"] = tuple(lora_targets)
  return kiwi_config.KiwiConfig(
    variant_family=family,
    mllm_lora_rank=lora_rank,
    data=kiwi_config.KiwiDataConfig(**data),
    **fields,
  )
