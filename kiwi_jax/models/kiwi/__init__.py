"""Kiwi-Edit: the MLLM condition encoder, connectors and DiT/VAE assembly.

Public surface:
  * :class:`KiwiEditConfig` (``from_variant("kiwi-5b" | "kiwi-14b" |
    "tiny")``) and :class:`KiwiEdit` with ``encode_conditions``,
    ``denoise_step``, ``encode_video``, ``decode_latents``;
  * :func:`pure` (a method as a function of an explicit state) and
    :func:`abstract_kiwi`;
  * ``readout`` (query and reference-feature readout) and ``checkpoint``
    (converted-directory ``load`` / ``save``).
"""

from kiwi_jax.models.kiwi import checkpoint, readout
from kiwi_jax.models.kiwi.config import MODES, VARIANTS, KiwiEditConfig
from kiwi_jax.models.kiwi.model import (KiwiConditions, KiwiEdit,
                                        abstract_kiwi, pure)

__all__ = ["MODES", "VARIANTS", "KiwiConditions", "KiwiEdit",
           "KiwiEditConfig", "abstract_kiwi", "checkpoint", "pure", "readout"]
