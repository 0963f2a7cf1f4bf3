"""Wan video VAEs (Wan2.2 z48, Wan2.1 z16) in Flax NNX, channels-last."""

from kiwi_jax.models.vae.config import VARIANTS, WanVAEConfig
from kiwi_jax.models.vae.model import WanVAE, init_wan_vae

__all__ = ["VARIANTS", "WanVAE", "WanVAEConfig", "init_wan_vae"]
