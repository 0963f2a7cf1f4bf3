"""Hyperparameters of the Wan video VAEs (Wan2.2 z48 and Wan2.1 z16).

Values follow ``diffsynth/models/wan_video_vae.py`` (``VideoVAE38_`` and
``VideoVAE_``) in showlab/Kiwi-Edit and reference §1.4 and §1.5.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# Per-channel latent statistics (``WanVideoVAE38.mean/std`` and
# ``WanVideoVAE.mean/std`` in the reference).
WAN22_LATENTS_MEAN = (
  -0.2289,
  -0.0052,
  -0.1323,
  -0.2339,
  -0.2799,
  0.0174,
  0.1838,
  0.1557,
  -0.1382,
  0.0542,
  0.2813,
  0.0891,
  0.1570,
  -0.0098,
  0.0375,
  -0.1825,
  -0.2246,
  -0.1207,
  -0.0698,
  0.5109,
  0.2665,
  -0.2108,
  -0.2158,
  0.2502,
  -0.2055,
  -0.0322,
  0.1109,
  0.1567,
  -0.0729,
  0.0899,
  -0.2799,
  -0.1230,
  -0.0313,
  -0.1649,
  0.0117,
  0.0723,
  -0.2839,
  -0.2083,
  -0.0520,
  0.3748,
  0.0152,
  0.1957,
  0.1433,
  -0.2944,
  0.3573,
  -0.0548,
  -0.1681,
  -0.0667,
)
WAN22_LATENTS_STD = (
  0.4765,
  1.0364,
  0.4514,
  1.1677,
  0.5313,
  0.4990,
  0.4818,
  0.5013,
  0.8158,
  1.0344,
  0.5894,
  1.0901,
  0.6885,
  0.6165,
  0.8454,
  0.4978,
  0.5759,
  0.3523,
  0.7135,
  0.6804,
  0.5833,
  1.4146,
  0.8986,
  0.5659,
  0.7069,
  0.5338,
  0.4889,
  0.4917,
  0.4069,
  0.4999,
  0.6866,
  0.4093,
  0.5709,
  0.6065,
  0.6415,
  0.4944,
  0.5726,
  1.2042,
  0.5458,
  1.6887,
  0.3971,
  1.0600,
  0.3943,
  0.5537,
  0.5444,
  0.4089,
  0.7468,
  0.7744,
)
WAN21_LATENTS_MEAN = (
  -0.7571,
  -0.7089,
  -0.9113,
  0.1075,
  -0.1745,
  0.9653,
  -0.1517,
  1.5508,
  0.4134,
  -0.0715,
  0.5517,
  -0.3632,
  -0.1922,
  -0.9497,
  0.2503,
  -0.2921,
)
WAN21_LATENTS_STD = (
  2.8184,
  1.4541,
  2.3275,
  2.6558,
  1.2196,
  1.7708,
  2.6052,
  2.0743,
  3.2687,
  2.1526,
  2.8652,
  1.5579,
  1.6382,
  1.1253,
  2.8251,
  1.9160,
)

# Frames per encoder chunk after the first frame (``1 + 4 * i`` slicing in
# ``VideoVAE_.encode``); equals the temporal compression of both VAEs.
ENCODER_CHUNK_FRAMES = 4


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
  """Architecture of a Wan VAE.

  Attributes:
    name: variant name.
    z_dim: latent channels (the encoder emits ``2 * z_dim``: mu, logvar).
    encoder_dim: encoder base width; stage widths are ``encoder_dim * m``.
    decoder_dim: decoder base width (``dec_dim`` in the reference).
    dim_mult: width multipliers of the four stages.
    num_res_blocks: residual blocks per encoder stage (decoder: one more).
    temporal_downsample: per down stage, whether it also halves time; the
      decoder uses the reverse order.
    residual: Wan2.2 style: stages are residual blocks with the
      parameter-free ``AvgDown3D`` / ``DupUp3D`` shortcuts and upsample
      convs keep their width; Wan2.1 style (False) halves the width in
      upsample convs and has no stage shortcuts.
    patch_size: pixel (un)shuffle around the encoder/decoder (2 in Wan2.2).
    video_channels: channels of the video (RGB).
    latents_mean: per-channel mean of ``mu`` (latent normalisation).
    latents_std: per-channel std of ``mu``.
    dtype: compute dtype.
    param_dtype: parameter dtype.
    attention_implementation: passed to ``dot_product_attention`` in the
      middle attention blocks.
  """

  name: str
  z_dim: int
  encoder_dim: int
  decoder_dim: int
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temporal_downsample: tuple[bool, ...] = (False, True, True)
  residual: bool = True
  patch_size: int = 2
  video_channels: int = 3
  latents_mean: tuple[float, ...] = WAN22_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN22_LATENTS_STD
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_implementation: str | None = "xla"

  def __post_init__(self):
    if len(self.temporal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(
        f"{self.name}: temporal_downsample needs {len(self.dim_mult) - 1} "
        f"entries (one per down stage), got {self.temporal_downsample}."
      )
    for field in ("latents_mean", "latents_std"):
      if len(getattr(self, field)) != self.z_dim:
        raise ValueError(
          f"{self.name}: {field} has {len(getattr(self, field))} entries, "
          f"z_dim is {self.z_dim}."
        )

  @property
  def spatial_factor(self) -> int:
    """Pixels per latent pixel (16 for Wan2.2, 8 for Wan2.1)."""
    return self.patch_size * 2 ** (len(self.dim_mult) - 1)

  @property
  def temporal_factor(self) -> int:
    """Frames per latent frame after the first (4 for both)."""
    return 2 ** sum(self.temporal_downsample)

  @property
  def pixel_channels(self) -> int:
    """Channels at the encoder input / decoder output (after patchify)."""
    return self.video_channels * self.patch_size**2

  def encoder_widths(self) -> list[int]:
    """Stage boundary widths: ``[dim, dim*m0, dim*m1, ...]``."""
    return [self.encoder_dim * m for m in (1,) + tuple(self.dim_mult)]

  def decoder_widths(self) -> list[int]:
    """``[dim*m[-1], dim*m[-1], ..., dim*m[0]]`` as in ``Decoder3d``."""
    mults = (self.dim_mult[-1],) + tuple(reversed(self.dim_mult))
    return [self.decoder_dim * m for m in mults]

  def replace(self, **changes) -> WanVAEConfig:
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_variant(cls, name: str, **overrides) -> WanVAEConfig:
    """One of :data:`VARIANTS`, optionally with fields overridden."""
    if name not in VARIANTS:
      raise KeyError(
        f"Unknown Wan VAE variant {name!r}; known: {sorted(VARIANTS)}."
      )
    return VARIANTS[name].replace(**overrides)


VARIANTS: dict[str, WanVAEConfig] = {
  # VideoVAE38_ (Wan2.2_VAE.pth): 704,688,668 parameters.
  "wan2.2": WanVAEConfig(
    name="wan2.2", z_dim=48, encoder_dim=160, decoder_dim=256
  ),
  # VideoVAE_ (Wan2.1_VAE.pth): 126,892,531 parameters.
  "wan2.1": WanVAEConfig(
    name="wan2.1",
    z_dim=16,
    encoder_dim=96,
    decoder_dim=96,
    residual=False,
    patch_size=1,
    latents_mean=WAN21_LATENTS_MEAN,
    latents_std=WAN21_LATENTS_STD,
  ),
  # Tiny models of the same structure, for tests and CPU benchmarks.
  "wan2.2-tiny": WanVAEConfig(
    name="wan2.2-tiny",
    z_dim=12,
    encoder_dim=8,
    decoder_dim=16,
    num_res_blocks=1,
    latents_mean=(0.0,) * 12,
    latents_std=(1.0,) * 12,
  ),
  "wan2.1-tiny": WanVAEConfig(
    name="wan2.1-tiny",
    z_dim=4,
    encoder_dim=8,
    decoder_dim=8,
    num_res_blocks=1,
    residual=False,
    patch_size=1,
    latents_mean=(0.0,) * 4,
    latents_std=(1.0,) * 4,
  ),
}
