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

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax.models.kiwi import checkpoint
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.models.kiwi.model import KiwiEdit
from kiwi_jax.testing.tokenizer import build_tiny_qwen_tokenizer


def tiny_kiwi_config(codec: str = "pixel_unshuffle",
                     **overrides) -> KiwiEditConfig:
  """The tiny variant (12 latent channels) over ``codec``."""
  return KiwiEditConfig.from_variant("tiny", codec=codec, **overrides)


def perturbed_state(model: nnx.Module, scale: float = 0.05,
                    seed: int = 1) -> nnx.State:
  """``nnx.state(model)`` with every floating leaf moved by Gaussian noise
  of std ``scale``."""
  state = nnx.state(model)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      x + scale * jax.random.normal(k, x.shape, x.dtype)
      if jnp.issubdtype(x.dtype, jnp.floating) else x
      for x, k in zip(leaves, keys)])


def save_tiny_kiwi(directory: str | os.PathLike,
                   cfg: KiwiEditConfig | None = None, *,
                   tokenizer_dir: str | os.PathLike | None = None,
                   seed: int = 0, perturb: float = 0.05) -> pathlib.Path:
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
        directory.parent / f".{directory.name}.tokenizer")
  files = {p.name: p for p in pathlib.Path(tokenizer_dir).iterdir()
           if p.is_file()}
  return checkpoint.save(state, cfg, directory, processor_files=files)


__all__ = ["perturbed_state", "save_tiny_kiwi", "tiny_kiwi_config"]
