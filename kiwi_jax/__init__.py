"""kiwi_jax: Kiwi-Edit (instruction- and reference-guided video editing) in
JAX/Flax.

The public surface, imported lazily so ``import kiwi_jax`` stays cheap::

  # Models and their configs (named variants: ``from_variant(...)``).
  kiwi_jax.KiwiEdit, kiwi_jax.KiwiEditConfig
  kiwi_jax.WanDiT, kiwi_jax.WanDiTConfig, kiwi_jax.DiTOutput
  kiwi_jax.WanVAE, kiwi_jax.WanVAEConfig, kiwi_jax.VAERunner
  kiwi_jax.Qwen25VL, kiwi_jax.Qwen25VLConfig
  kiwi_jax.Connector, kiwi_jax.LearnableQueries
  kiwi_jax.KiwiProcessor          # the MLLM inputs encode_conditions reads
  kiwi_jax.load_checkpoint        # a converted dir or a train.py workdir
  # Sampling and editing.
  kiwi_jax.sample, kiwi_jax.SamplingPlan   # the flow-matching Euler sampler
  kiwi_jax.EditPipeline
  # Meshes and logical sharding.
  kiwi_jax.sharding

Subpackages: ``layers`` (shared blocks), ``models``, ``diffusion``
(schedules, flow matching, sampler), ``data``, ``train_lib``, ``pipeline``,
``evaluators``, ``refvie`` (dataset construction), ``testing``.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
  "KiwiEdit": "kiwi_jax.models.kiwi",
  "KiwiEditConfig": "kiwi_jax.models.kiwi",
  "WanDiT": "kiwi_jax.models.dit",
  "WanDiTConfig": "kiwi_jax.models.dit",
  "DiTOutput": "kiwi_jax.models.dit",
  "WanVAE": "kiwi_jax.models.vae",
  "WanVAEConfig": "kiwi_jax.models.vae",
  "VAERunner": "kiwi_jax.models.vae",
  "Qwen25VL": "kiwi_jax.models.mllm",
  "Qwen25VLConfig": "kiwi_jax.models.mllm",
  "Connector": "kiwi_jax.models.kiwi.connectors",
  "LearnableQueries": "kiwi_jax.models.kiwi.connectors",
  "KiwiProcessor": "kiwi_jax.models.kiwi",
  "load_checkpoint": "kiwi_jax.models.kiwi",
  "sample": "kiwi_jax.diffusion",
  "SamplingPlan": "kiwi_jax.diffusion",
  "EditPipeline": "kiwi_jax.pipeline",
}
_SUBMODULES = (
  "sharding",
  "layers",
  "models",
  "diffusion",
  "data",
  "train_lib",
  "pipeline",
  "evaluators",
  "refvie",
  "testing",
)

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  if name in _SUBMODULES:
    return importlib.import_module(f"kiwi_jax.{name}")
  raise AttributeError(f"module 'kiwi_jax' has no attribute {name!r}")


def __dir__():
  return __all__
