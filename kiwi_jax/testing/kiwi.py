"""Tiny Kiwi-Edit models and checkpoints for tests and examples.

``tiny_kiwi_config`` is the ``"tiny"`` variant (tiny Qwen2.5-VL, tiny Wan
DiT), by default over the parameter-free pixel-unshuffle codec (the CPU
demo's, ``models.kiwi.codec``); ``save_tiny_kiwi`` writes a random one as
an ordinary converted directory that ``EditPipeline.from_pretrained`` and
``kiwi-edit`` open. Its weights are moved off their initialisation
(``perturb``): the connectors and the source/reference embedders start at
zero, so a fresh model would ignore its conditions.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax.data import refvie_mini
from kiwi_jax.media import transforms
from kiwi_jax.models.dit.config import WanDiTConfig
from kiwi_jax.models.kiwi import checkpoint
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.models.kiwi.model import KiwiEdit
from kiwi_jax.models.kiwi.processor import KiwiProcessor
from kiwi_jax.models.mllm.config import Qwen25VLConfig
from kiwi_jax.models.vae.config import WanVAEConfig
from kiwi_jax.testing.tokenizer import build_tiny_qwen_tokenizer


def tiny_configs() -> dict[str, Any]:
  """Test-sized configs of every model: ``dit``, ``vae``, ``mllm`` (the
  ``"tiny"`` variants) and ``kiwi`` (:func:`tiny_kiwi_config`)."""
  return {
    "dit": WanDiTConfig.from_variant("tiny"),
    "vae": WanVAEConfig.from_variant("wan2.2-tiny"),
    "mllm": Qwen25VLConfig.from_variant("tiny"),
    "kiwi": tiny_kiwi_config(),
  }


def tiny_kiwi_config(
  codec: str = "pixel_unshuffle", **overrides
) -> KiwiEditConfig:
  """The tiny variant (12 latent channels) over ``codec``."""
  return KiwiEditConfig.from_variant("tiny", codec=codec, **overrides)


def perturbed_state(
  model: nnx.Module, scale: float = 0.05, seed: int = 1
) -> nnx.State:
  """``nnx.state(model)`` with every floating leaf moved by Gaussian noise
  of std ``scale``."""
  state = nnx.state(model)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
    treedef,
    [
      x + scale * jax.random.normal(k, x.shape, x.dtype)
      if jnp.issubdtype(x.dtype, jnp.floating)
      else x
      for x, k in zip(leaves, keys)
    ],
  )


def save_tiny_kiwi(
  directory: str | os.PathLike,
  cfg: KiwiEditConfig | None = None,
  *,
  tokenizer_dir: str | os.PathLike | None = None,
  seed: int = 0,
  perturb: float = 0.05,
) -> pathlib.Path:
  """Writes a random tiny Kiwi-Edit checkpoint directory.

  Args:
    directory: destination (must not exist).
    cfg: the model config (default :func:`tiny_kiwi_config`).
    tokenizer_dir: a local Qwen tokenizer; default: a tiny one is built.
    seed: initialisation seed.
    perturb: std of the noise added to every weight (0: the plain init).
  """
  directory = pathlib.Path(directory)
  cfg = cfg or tiny_kiwi_config()

  @jax.jit
  def init():  # jitted: eager initialisation is slow on CPU
    model = KiwiEdit(cfg, rngs=nnx.Rngs(seed))
    return perturbed_state(model, perturb) if perturb else nnx.state(model)

  state = init()
  if tokenizer_dir is None:
    tokenizer_dir = build_tiny_qwen_tokenizer(
      directory.parent / f".{directory.name}.tokenizer"
    )
  files = {
    p.name: p for p in pathlib.Path(tokenizer_dir).iterdir() if p.is_file()
  }
  return checkpoint.save(state, cfg, directory, processor_files=files)


# The RefVIE-mini edit type each mode's fake batch shows.
_EDIT_TYPES = {
  "image": "local_recolor",
  "video": "local_remove",
  "reference": "subject_reference",
}


def fake_kiwi_batch(
  processor: KiwiProcessor,
  mode: str = "video",
  *,
  batch_size: int = 2,
  height: int = 32,
  width: int = 32,
  num_frames: int = 5,
  seed: int = 3,
) -> dict[str, Any]:
  """A host training batch of one mode, in the data pipeline's format
  (``source_video`` / ``target_video`` uint8[B, T, H, W, 3], ``ref_image``
  in reference mode, ``mllm`` from ``processor.example``), from generated
  RefVIE-mini edits."""
  if mode not in _EDIT_TYPES:
    raise ValueError(f"mode must be one of {tuple(_EDIT_TYPES)}, got {mode!r}.")
  cfg = refvie_mini.MiniConfig(
    height=height, width=width, num_frames=1 if mode == "image" else num_frames
  )
  samples = [
    refvie_mini.make_sample(seed, i, cfg, _EDIT_TYPES[mode])
    for i in range(batch_size)
  ]
  batch = {
    "source_video": np.stack([s.source for s in samples]),
    "target_video": np.stack([s.target for s in samples]),
  }
  if mode == "reference":
    batch["ref_image"] = np.stack(
      [
        transforms.shrink_and_pad_centered(s.ref_image, height, width, 0.85)
        for s in samples
      ]
    )
  mllm = [processor.example(s.source, s.prompt, s.ref_image) for s in samples]
  batch["mllm"] = {k: np.stack([m[k] for m in mllm]) for k in mllm[0]}
  return batch


__all__ = [
  "fake_kiwi_batch",
  "perturbed_state",
  "save_tiny_kiwi",
  "tiny_configs",
  "tiny_kiwi_config",
]
