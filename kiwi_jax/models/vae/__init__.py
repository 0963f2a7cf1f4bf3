"""Wan video VAEs (Wan2.2 z48, Wan2.1 z16) in Flax NNX, channels-last.

``WanVAE.encode/decode`` are pure and jit-able (``lax.scan`` over temporal
chunks); ``VAERunner`` drives the same chunk functions from the host for
tiled encode/decode and streamed decode with bounded memory.
"""

from kiwi_jax.models.vae.config import VARIANTS, WanVAEConfig
from kiwi_jax.models.vae.model import WanVAE, init_wan_vae
from kiwi_jax.models.vae.tiling import VAERunner

__all__ = ["VARIANTS", "VAERunner", "WanVAE", "WanVAEConfig", "init_wan_vae"]
