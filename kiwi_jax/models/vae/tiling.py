"""Host-driven VAE inference: chunk by chunk in time, optionally tiled in space.

:class:`VAERunner` compiles the model's two chunk functions (first chunk,
uniform chunk) once per tile shape and loops over time on the host, so every
frame count reuses the same executables, decode can stream frames out as
they are produced, and peak memory is that of one chunk of one tile.

Spatial tiling reproduces ``WanVideoVAE.tiled_encode`` / ``tiled_decode`` in
``diffsynth/models/wan_video_vae.py`` (reference §5.1): tiles of ``tile_size`` with
``tile_stride`` (latent units; the encoder multiplies both by the spatial
factor), a tile whose predecessor already reaches the end is skipped, the last
tile may be cut short by the border, and tiles are averaged with weights that
ramp linearly ``(i+1)/border`` over the overlap on every side that is not the
frame border (the min of the height and width ramps). The reference
accumulates in bf16 on the CPU; here accumulation is fp32 on the device.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax.models.vae.config import ENCODER_CHUNK_FRAMES
from kiwi_jax.models.vae.model import (
  WanVAE,
  check_latent_shape,
  check_video_shape,
)

# DiffSynth's inference defaults (``test_benchmark.py``, ``demo.py``), in
# latent units.
DEFAULT_TILE_SIZE = (30, 52)
DEFAULT_TILE_STRIDE = (15, 26)


def tile_ranges(size: int, tile: int, stride: int) -> list[tuple[int, int]]:
  """``[(start, end)]`` of the tiles along one axis (``end`` unclipped)."""
  if tile <= 0 or stride <= 0 or stride > tile:
    raise ValueError(
      f"Tiles need 0 < stride <= size, got size {tile}, stride {stride}."
    )
  out = []
  for start in range(0, size, stride):
    if start - stride >= 0 and start - stride + tile >= size:
      continue  # the previous tile already reaches the end
    out.append((start, start + tile))
  return out


def ramp_mask_1d(
  length: int, at_start: bool, at_end: bool, border: int
) -> np.ndarray:
  """Ones with linear ramps ``(i+1)/border`` on the sides that are not frame
  borders (the end ramp overwrites the start one if they overlap)."""
  mask = np.ones((length,), np.float32)
  ramp = (np.arange(border, dtype=np.float32) + 1) / max(border, 1)
  if border > 0 and not at_start:
    mask[:border] = ramp[:length]
  if border > 0 and not at_end:
    mask[-border:] = ramp[::-1][-length:]
  return mask


def tile_mask(
  shape: tuple[int, int], bounds: Sequence[bool], borders: tuple[int, int]
) -> np.ndarray:
  """float32[h, w]: min of the height ramp and the width ramp."""
  mh = ramp_mask_1d(shape[0], bounds[0], bounds[1], borders[0])
  mw = ramp_mask_1d(shape[1], bounds[2], bounds[3], borders[1])
  return np.minimum(mh[:, None], mw[None, :])


def _tiles(h: int, w: int, tile_size, tile_stride):
  """(h0, h1, w0, w1, bounds) with ends clipped, bounds as in the reference."""
  out = []
  for h0, h1 in tile_ranges(h, tile_size[0], tile_stride[0]):
    for w0, w1 in tile_ranges(w, tile_size[1], tile_stride[1]):
      bounds = (h0 == 0, h1 >= h, w0 == 0, w1 >= w)
      out.append((h0, min(h1, h), w0, min(w1, w), bounds))
  return out


@functools.partial(jax.jit, donate_argnums=(0,))
def _accumulate(canvas, tile, mask, h0, w0):
  """canvas[:, :, h0:, w0:] += tile * mask (canvas float[B, T, H, W, C])."""
  start = (0, 0, h0, w0, 0)
  cur = jax.lax.dynamic_slice(canvas, start, tile.shape)
  upd = cur + tile.astype(canvas.dtype) * mask[None, None, :, :, None]
  return jax.lax.dynamic_update_slice(canvas, upd, start)


class VAERunner:
  """Compiled chunk loops over a :class:`WanVAE` (tiled or not, streamed).

  Example::

    runner = VAERunner(vae)
    latents = runner.encode(video, tiled=True)           # [B, t, h, w, z]
    for frames in runner.decode_stream(latents, tiled=True):
      writer.write(frames)                               # [B, 1 or 4, H, W, 3]
  """

  def __init__(self, model: WanVAE, *, compiler_options: dict | None = None):
    """
    Args:
      model: the VAE (its parameters are shared, not copied).
      compiler_options: XLA options for the chunk functions, e.g.
        ``{"xla_backend_optimization_level": 0}`` to compile faster on CPU.
    """
    self.cfg = model.cfg
    graphdef, self.state = nnx.split(model)
    # Donating the cache lets XLA reuse its buffers between chunks; the CPU
    # backend does not implement donation (it would only warn).
    donate = (1,) if jax.default_backend() != "cpu" else ()

    def enc(state, cache, x):
      return nnx.merge(graphdef, state).encode_chunk(x, cache)

    def dec(state, cache, z):
      return nnx.merge(graphdef, state).decode_chunk(z, cache)

    jit = functools.partial(jax.jit, compiler_options=compiler_options)
    self._enc_first = jit(lambda s, x: enc(s, None, x))
    self._enc_step = jit(enc, donate_argnums=donate)
    self._dec_first = jit(lambda s, z: dec(s, None, z))
    self._dec_step = jit(dec, donate_argnums=donate)

  # -- One tile, whole duration.

  def encode_moments_untiled(self, video) -> jax.Array:
    """Raw moments float[B, t, h, w, 2z] of a video, chunk loop on the host.

    ``video`` may be a numpy array (sliced on the host, one chunk sent to the
    device at a time) or a jax array.
    """
    out, cache = self._enc_first(self.state, video[:, :1])
    outs = [out]
    for start in range(1, video.shape[1], ENCODER_CHUNK_FRAMES):
      chunk = video[:, start : start + ENCODER_CHUNK_FRAMES]
      out, cache = self._enc_step(self.state, cache, chunk)
      outs.append(out)
    return jnp.concatenate(outs, axis=1)

  def _encode_tile(self, video: jax.Array) -> jax.Array:
    moments = self.encode_moments_untiled(video)
    mean = jnp.asarray(self.cfg.latents_mean, moments.dtype)
    std = jnp.asarray(self.cfg.latents_std, moments.dtype)
    return (moments[..., : self.cfg.z_dim] - mean) * (1.0 / std)

  # -- Public API.

  def encode(
    self,
    video,
    *,
    tiled: bool = False,
    tile_size: tuple[int, int] = DEFAULT_TILE_SIZE,
    tile_stride: tuple[int, int] = DEFAULT_TILE_STRIDE,
  ) -> jax.Array:
    """Normalised latents, as ``WanVAE.encode``.

    Args:
      video: float[B, T, H, W, 3] in [-1, 1] (T = 4k+1; H, W multiples of
        the spatial factor).
      tiled: encode overlapping spatial tiles and blend them.
      tile_size: tile (height, width) in latent pixels.
      tile_stride: tile stride in latent pixels.

    Returns:
      float32[B, k+1, H/f, W/f, z_dim].
    """
    check_video_shape(self.cfg, video.shape)
    if not tiled:
      return self._encode_tile(video).astype(jnp.float32)
    f = self.cfg.spatial_factor
    b, t, h, w, _ = video.shape
    size = (tile_size[0] * f, tile_size[1] * f)
    stride = (tile_stride[0] * f, tile_stride[1] * f)
    borders = (tile_size[0] - tile_stride[0], tile_size[1] - tile_stride[1])
    t_lat = (t - 1) // self.cfg.temporal_factor + 1
    canvas = jnp.zeros((b, t_lat, h // f, w // f, self.cfg.z_dim), jnp.float32)
    weight = np.zeros((h // f, w // f), np.float32)
    for h0, h1, w0, w1, bounds in _tiles(h, w, size, stride):
      latent = self._encode_tile(video[:, :, h0:h1, w0:w1])
      mask = tile_mask(latent.shape[2:4], bounds, borders)
      canvas = _accumulate(canvas, latent, jnp.asarray(mask), h0 // f, w0 // f)
      weight[
        h0 // f : h0 // f + mask.shape[0], w0 // f : w0 // f + mask.shape[1]
      ] += mask
    return canvas / jnp.asarray(weight)[None, None, :, :, None]

  def decode_stream(
    self,
    latents,
    *,
    tiled: bool = False,
    tile_size: tuple[int, int] = DEFAULT_TILE_SIZE,
    tile_stride: tuple[int, int] = DEFAULT_TILE_STRIDE,
    clamp: bool = True,
  ) -> Iterator[jax.Array]:
    """Decodes one latent frame at a time and yields its video frames.

    Yields float32[B, 1, H, W, 3] for the first latent frame, then
    float32[B, temporal_factor, H, W, 3] per latent frame, clamped to
    [-1, 1] unless ``clamp=False``. Tiles keep their own caches, so a tiled
    stream equals the tiled whole-video decode.
    """
    check_latent_shape(self.cfg, latents.shape)
    b, t, h, w, _ = latents.shape
    f = self.cfg.spatial_factor
    if tiled:
      tiles = _tiles(h, w, tile_size, tile_stride)
      borders = (
        (tile_size[0] - tile_stride[0]) * f,
        (tile_size[1] - tile_stride[1]) * f,
      )
    else:
      tiles = [(0, h, 0, w, (True,) * 4)]
      borders = (0, 0)
    masks = [
      tile_mask(((h1 - h0) * f, (w1 - w0) * f), bounds, borders)
      for h0, h1, w0, w1, bounds in tiles
    ]
    weight = np.zeros((h * f, w * f), np.float32)
    for (h0, _, w0, _, _), mask in zip(tiles, masks):
      weight[
        h0 * f : h0 * f + mask.shape[0], w0 * f : w0 * f + mask.shape[1]
      ] += mask
    inv_weight = jnp.asarray(1.0 / weight)[None, None, :, :, None]
    masks = [jnp.asarray(m) for m in masks]
    caches = [None] * len(tiles)
    for k in range(t):
      frames = 1 if k == 0 else self.cfg.temporal_factor
      canvas = jnp.zeros(
        (b, frames, h * f, w * f, self.cfg.video_channels), jnp.float32
      )
      for i, (h0, h1, w0, w1, _) in enumerate(tiles):
        z = latents[:, k : k + 1, h0:h1, w0:w1]
        if caches[i] is None:
          out, caches[i] = self._dec_first(self.state, z)
        else:
          out, caches[i] = self._dec_step(self.state, caches[i], z)
        if len(tiles) == 1:
          canvas = out.astype(jnp.float32)
        else:
          canvas = _accumulate(canvas, out, masks[i], h0 * f, w0 * f)
      video = canvas if len(tiles) == 1 else canvas * inv_weight
      yield jnp.clip(video, -1.0, 1.0) if clamp else video

  def decode(
    self,
    latents,
    *,
    tiled: bool = False,
    tile_size: tuple[int, int] = DEFAULT_TILE_SIZE,
    tile_stride: tuple[int, int] = DEFAULT_TILE_STRIDE,
    clamp: bool = True,
  ) -> jax.Array:
    """float32[B, 4(t-1)+1, H, W, 3]: the frames of :meth:`decode_stream`."""
    return jnp.concatenate(
      list(
        self.decode_stream(
          latents,
          tiled=tiled,
          tile_size=tile_size,
          tile_stride=tile_stride,
          clamp=clamp,
        )
      ),
      axis=1,
    )
