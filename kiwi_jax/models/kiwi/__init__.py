"""Kiwi-Edit: the MLLM condition encoder, connectors and DiT/VAE assembly.

Public surface:
  * :class:`KiwiEditConfig` (``from_variant("kiwi-5b" | "kiwi-14b" |
    "tiny")``) and :class:`KiwiEdit` with ``encode_conditions``,
    ``denoise_step``, ``encode_video``, ``decode_latents``;
  * :func:`pure` (a method as a function of an explicit state) and
    :func:`abstract_kiwi`;
  * :class:`KiwiProcessor`: the MLLM inputs ``encode_conditions`` reads;
  * :func:`load_checkpoint` (``checkpoint.load``): the one loader, for a
    converted directory or a train.py workdir;
  * ``readout`` (query and reference-feature readout), ``codec`` (the
    pixel-unshuffle stand-in for the Wan VAE) and ``checkpoint``
    (``load`` / ``save``).
"""

from kiwi_jax.models.kiwi import checkpoint, codec, readout
from kiwi_jax.models.kiwi.checkpoint import load as load_checkpoint
from kiwi_jax.models.kiwi.config import MODES, VARIANTS, KiwiEditConfig
from kiwi_jax.models.kiwi.model import (
  KiwiConditions,
  KiwiEdit,
  abstract_kiwi,
  pure,
)
from kiwi_jax.models.kiwi.processor import KiwiProcessor

__all__ = [
  "MODES",
  "VARIANTS",
  "KiwiConditions",
  "KiwiEdit",
  "KiwiEditConfig",
  "KiwiProcessor",
  "abstract_kiwi",
  "checkpoint",
  "codec",
  "load_checkpoint",
  "pure",
  "readout",
]
