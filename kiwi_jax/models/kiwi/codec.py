"""Latent codecs of Kiwi-Edit: what turns pixels into the DiT's latents.

``KiwiEditConfig.codec`` chooses one:

* ``"wan_vae"`` (default, the released models): the Wan VAE
  (``kiwi_jax.models.vae``), 4x temporal and 16x spatial compression;
* ``"pixel_unshuffle"``: :class:`PixelUnshuffle`, a fixed invertible
  stand-in with the same *kind* of geometry (per-frame ``s x s``
  space-to-depth, ``[B, T, H, W, 3] -> [B, T, H/s, W/s, 3 s^2]``, no
  temporal compression), scaled to roughly unit variance. It has no
  parameters and is exactly invertible, so a model trained over it (the CPU
  demo's, which cannot train a useful Wan VAE in its time budget) shows only
  the DiT's errors. A checkpoint with this codec is an ordinary Kiwi-Edit
  checkpoint: ``EditPipeline`` and ``kiwi-edit`` open it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax.media import pixels

CODECS = ("wan_vae", "pixel_unshuffle")


class PixelUnshuffle(nnx.Module):
  """Space-to-depth by ``factor`` per frame, times ``scale``.

  Channel order inside a cell: ``(row, col, rgb)``, rgb fastest. Has the
  ``encode`` / ``decode`` methods of :class:`WanVAE`.
  """

  def __init__(self, factor: int = 2, scale: float = 2.0):
    self.factor = int(factor)
    self.scale = float(scale)

  @property
  def channels(self) -> int:
    return 3 * self.factor**2

  def encode(self, video: jax.Array) -> jax.Array:
    """float[B, T, H, W, 3] in [-1, 1] -> float[B, T, H/s, W/s, 3 s^2]."""
    b, t, h, w, c = video.shape
    s = self.factor
    if h % s or w % s:
      raise ValueError(
        f"Frame size {h}x{w} is not a multiple of the "
        f"pixel-unshuffle factor {s}."
      )
    x = video.reshape(b, t, h // s, s, w // s, s, c)
    x = jnp.transpose(x, (0, 1, 2, 4, 3, 5, 6))
    return x.reshape(b, t, h // s, w // s, s * s * c) * self.scale

  def decode(self, latents: jax.Array, clamp: bool = True) -> jax.Array:
    """The exact inverse of :meth:`encode` (clamped to [-1, 1])."""
    b, t, h, w, cs = latents.shape
    s = self.factor
    x = (latents / self.scale).reshape(b, t, h, w, s, s, cs // (s * s))
    x = jnp.transpose(x, (0, 1, 2, 4, 3, 5, 6))
    x = x.reshape(b, t, h * s, w * s, cs // (s * s))
    return jnp.clip(x, -1.0, 1.0) if clamp else x


# uint8 frames -> float32 in [-1, 1], the training loader's rule.
pixels_to_unit = pixels.to_unit_training
