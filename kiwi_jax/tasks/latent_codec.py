"""Latent codecs: what turns pixels into the DiT's latents during training.

Training encodes the source, target and reference online with the frozen
Wan VAE (spec 4.3: untiled, no gradient), or reads latents the data
pipeline cached (``kiwi_jax.data.latent_cache``). The CPU demo cannot train
a useful Wan VAE in its time budget, so it uses :class:`PixelUnshuffle`, a
fixed invertible stand-in with the same *kind* of geometry (per-frame
``s x s`` space-to-depth: ``[B, T, H, W, 3] -> [B, T, H/s, W/s, 3 s^2]``,
no temporal compression), scaled to roughly unit variance. It is exactly
invertible, so every reconstruction error the demo shows is the DiT's.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

CODECS = ("vae", "pixel_unshuffle")


@dataclasses.dataclass(frozen=True)
class PixelUnshuffle:
  """Space-to-depth by ``factor`` per frame, times ``scale``.

  Channel order inside a cell: ``(row, col, rgb)``, rgb fastest.
  """
  factor: int = 2
  scale: float = 2.0

  @property
  def channels(self) -> int:
    return 3 * self.factor ** 2

  def encode(self, video: jax.Array) -> jax.Array:
    """float[B, T, H, W, 3] in [-1, 1] -> float[B, T, H/s, W/s, 3 s^2]."""
    b, t, h, w, c = video.shape
    s = self.factor
    if h % s or w % s:
      raise ValueError(f"Frame size {h}x{w} is not a multiple of the "
                       f"pixel-unshuffle factor {s}.")
    x = video.reshape(b, t, h // s, s, w // s, s, c)
    x = jnp.transpose(x, (0, 1, 2, 4, 3, 5, 6))
    return x.reshape(b, t, h // s, w // s, s * s * c) * self.scale

  def decode(self, latents: jax.Array) -> jax.Array:
    """The exact inverse of :meth:`encode` (clamped to [-1, 1])."""
    b, t, h, w, cs = latents.shape
    s = self.factor
    x = (latents / self.scale).reshape(b, t, h, w, s, s, cs // (s * s))
    x = jnp.transpose(x, (0, 1, 2, 4, 3, 5, 6))
    return jnp.clip(x.reshape(b, t, h * s, w * s, cs // (s * s)), -1.0, 1.0)


def pixels_to_unit(frames: jax.Array) -> jax.Array:
  """uint8 frames -> float32 in [-1, 1] (``transforms.to_unit_range``)."""
  return frames.astype(jnp.float32) / 127.5 - 1.0
