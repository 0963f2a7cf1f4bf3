"""``WanVAE``: the Wan2.2 / Wan2.1 video VAE with causal chunked encode/decode.

Encode follows ``VideoVAE_.encode`` / ``VideoVAE38_.encode``: (patchify,)
frame 0 alone, then chunks of 4 frames, with every causal conv carrying the
last input frames of the previous chunk; ``quant_conv`` then gives (mu,
logvar); only mu is used and it is normalised as ``(mu - mean) / std``.
Decode runs one latent frame per chunk (``first_chunk`` rules for the
upsampling time convs and ``DupUp3D``), then unpatchifies and clamps to
[-1, 1] as ``WanVideoVAE.single_decode`` does.

The chunk loop is ``jax.lax.scan`` over the uniform chunks after the special
first one, so ``encode``/``decode`` are pure and jit-able (one compiled
chunk body whatever the length). :mod:`kiwi_jax.models.vae.tiling` runs the
same chunk functions from the host for tiled and streamed inference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax.models.vae.blocks import patchify, unpatchify
from kiwi_jax.models.vae.causal_conv import CausalConv3d
from kiwi_jax.models.vae.config import ENCODER_CHUNK_FRAMES, WanVAEConfig
from kiwi_jax.models.vae.encoder_decoder import Decoder, Encoder
from kiwi_jax.utils.rngs import cheap_draws


def nearest_valid_frames(t: int, factor: int = 4) -> list[int]:
  """The valid frame counts (``factor * k + 1``) nearest to ``t``."""
  below = max(1, (t - 1) // factor * factor + 1)
  above = below + factor
  if t - below == above - t:
    return [below, above]
  return [below if t - below < above - t else above]


def check_video_shape(cfg: WanVAEConfig, shape) -> None:
  """Raises ``ValueError`` naming the rule and the nearest valid size."""
  if len(shape) != 5 or shape[-1] != cfg.video_channels:
    raise ValueError(
      f"Wan VAE ({cfg.name}) expects video float[B, T, H, W, "
      f"{cfg.video_channels}] (channels-last), got shape {tuple(shape)}."
    )
  t, h, w = shape[1:4]
  tf = cfg.temporal_factor
  if t < 1 or (t - 1) % tf:
    near = " or ".join(str(n) for n in nearest_valid_frames(t, tf))
    raise ValueError(
      f"Wan VAE ({cfg.name}): frame count must be {tf}k+1 (1, {tf + 1}, "
      f"{2 * tf + 1}, ...), got T={t}; nearest valid: {near}."
    )
  sf = cfg.spatial_factor
  for name, size in (("height", h), ("width", w)):
    if size < sf or size % sf:
      lower = max(sf, size // sf * sf)
      upper = lower + sf if size >= sf else sf
      near = (
        str(lower)
        if size < sf or size - lower < upper - size
        else str(upper)
        if upper - size < size - lower
        else f"{lower} or {upper}"
      )
      raise ValueError(
        f"Wan VAE ({cfg.name}): {name} must be a positive multiple of the "
        f"spatial factor {sf}, got {size}; nearest valid: {near}."
      )


def check_latent_shape(cfg: WanVAEConfig, shape) -> None:
  if len(shape) != 5 or shape[-1] != cfg.z_dim or min(shape[1:4]) < 1:
    raise ValueError(
      f"Wan VAE ({cfg.name}) expects latents float[B, t, h, w, "
      f"{cfg.z_dim}] with t, h, w >= 1, got shape {tuple(shape)}."
    )


def _moveaxis_chunks(x: jax.Array, size: int) -> jax.Array:
  """float[B, n*size, ...] -> float[n, B, size, ...] (scan-major)."""
  b, t = x.shape[:2]
  x = x.reshape((b, t // size, size) + x.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def _merge_chunks(first: jax.Array, rest: jax.Array | None) -> jax.Array:
  """first float[B, t0, ...], rest float[n, B, t1, ...] -> [B, t0+n*t1, ...]."""
  if rest is None:
    return first
  rest = jnp.moveaxis(rest, 0, 1)
  rest = rest.reshape((rest.shape[0], -1) + rest.shape[3:])
  return jnp.concatenate([first, rest], axis=1)


class WanVAE(nnx.Module):
  """Wan video VAE (``VideoVAE38_`` for Wan2.2, ``VideoVAE_`` for Wan2.1).

  Attributes:
    encoder, decoder: the chunked networks.
    quant_conv: 1x1x1 conv on the encoder moments (reference ``conv1``).
    post_quant_conv: 1x1x1 conv before the decoder (reference ``conv2``).
  """

  @cheap_draws
  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    self.encoder = Encoder(cfg, rngs=rngs)
    self.quant_conv = CausalConv3d(
      2 * cfg.z_dim, 2 * cfg.z_dim, 1, rngs=rngs, **kw
    )
    self.post_quant_conv = CausalConv3d(
      cfg.z_dim, cfg.z_dim, 1, rngs=rngs, **kw
    )
    self.decoder = Decoder(cfg, rngs=rngs)

  # -- Chunk functions (pure; used by the scans below and by tiling.py).

  def encode_chunk(self, video_chunk: jax.Array, cache=None):
    """Encoder on one chunk of pixels.

    Args:
      video_chunk: float[B, t, H, W, 3] in [-1, 1]; t = 1 for the first chunk
        (``cache=None``), 4 afterwards.
      cache: the cache returned by the previous chunk.

    Returns:
      ``(moments, cache)``: float[B, t', H/f, W/f, 2*z_dim] raw (mu, logvar).
    """
    x = patchify(video_chunk.astype(self.cfg.dtype), self.cfg.patch_size)
    moments, cache = self.encoder(x, cache)
    return self.quant_conv(moments)[0], cache

  def decode_chunk(self, latent_frame: jax.Array, cache=None):
    """Decoder on one latent frame.

    Args:
      latent_frame: float[B, 1, h, w, z_dim], normalised latents.
      cache: the cache returned by the previous chunk (``None`` first).

    Returns:
      ``(frames, cache)``: float[B, 1 or 4, h*f, w*f, 3], not clamped.
    """
    z = self.denormalize(latent_frame.astype(self.cfg.dtype))
    x = self.post_quant_conv(z)[0]
    frames, cache = self.decoder(x, cache)
    return unpatchify(frames, self.cfg.patch_size), cache

  # -- Latent normalisation (``scale = [mean, 1/std]`` in the reference).

  def _stats(self, dtype):
    mean = jnp.asarray(self.cfg.latents_mean, jnp.float32).astype(dtype)
    std = jnp.asarray(self.cfg.latents_std, jnp.float32).astype(dtype)
    return mean, std

  def normalize(self, mu: jax.Array) -> jax.Array:
    """``(mu - mean) * (1 / std)`` per channel, as the reference computes."""
    mean, std = self._stats(mu.dtype)
    return (mu - mean) * (1.0 / std)

  def denormalize(self, z: jax.Array) -> jax.Array:
    """``z / (1 / std) + mean`` per channel."""
    mean, std = self._stats(z.dtype)
    return z / (1.0 / std) + mean

  # -- Whole videos.

  def encode_moments(self, video: jax.Array) -> jax.Array:
    """Raw encoder moments (mu, logvar concatenated on channels).

    Args:
      video: float[B, T, H, W, 3] in [-1, 1], T = 4k+1, H and W multiples of
        ``cfg.spatial_factor``.

    Returns:
      float[B, k+1, H/f, W/f, 2*z_dim].
    """
    check_video_shape(self.cfg, video.shape)
    first, cache = self.encode_chunk(video[:, :1])
    if video.shape[1] == 1:
      return first
    chunks = _moveaxis_chunks(video[:, 1:], ENCODER_CHUNK_FRAMES)

    def step(carry, chunk):
      out, carry = self.encode_chunk(chunk, carry)
      return carry, out

    _, rest = jax.lax.scan(step, cache, chunks)
    return _merge_chunks(first, rest)

  def encode(self, video: jax.Array) -> jax.Array:
    """Normalised latents ``(mu - mean) / std`` (mu only, no sampling).

    Args:
      video: float[B, T, H, W, 3] in [-1, 1]; T = 4k+1; H, W multiples of
        ``cfg.spatial_factor`` (16 for Wan2.2, 8 for Wan2.1).

    Returns:
      float[B, (T-1)/4 + 1, H/f, W/f, z_dim].
    """
    mu = self.encode_moments(video)[..., : self.cfg.z_dim]
    return self.normalize(mu)

  def decode(self, latents: jax.Array, clamp: bool = True) -> jax.Array:
    """Video from normalised latents.

    Args:
      latents: float[B, t, h, w, z_dim].
      clamp: clamp to [-1, 1] (the reference's ``single_decode`` does).

    Returns:
      float[B, 4(t-1)+1, h*f, w*f, 3].
    """
    check_latent_shape(self.cfg, latents.shape)
    first, cache = self.decode_chunk(latents[:, :1])
    rest = None
    if latents.shape[1] > 1:

      def step(carry, frame):
        out, carry = self.decode_chunk(frame, carry)
        return carry, out

      _, rest = jax.lax.scan(step, cache, _moveaxis_chunks(latents[:, 1:], 1))
    video = _merge_chunks(first, rest)
    return jnp.clip(video, -1.0, 1.0) if clamp else video


def init_wan_vae(cfg: WanVAEConfig, seed: int = 0) -> WanVAE:
  """A randomly initialised :class:`WanVAE`, drawn on the host with numpy.

  Same distributions as the modules' own initialisers (PyTorch's conv
  default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for kernels and biases,
  ones for norm gammas) but no XLA compile: eager or jitted ``nnx.Rngs``
  init compiles one RNG program per parameter shape, minutes on a loaded
  2-core CPU. For sharded models use ``kiwi_jax.sharding.create_sharded``.
  """
  graphdef, abstract = nnx.split(
    nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(seed)))
  )
  rng = np.random.default_rng(seed)
  flat = nnx.to_flat_state(abstract)
  kernel_fan_in = {
    path[:-1]: int(np.prod(var.get_value().shape[:-1]))
    for path, var in flat
    if path[-1] == "kernel"
  }
  leaves = []
  for path, var in flat:
    shape, dtype = var.get_value().shape, var.get_value().dtype
    if path[-1] == "gamma":
      value = np.ones(shape, np.float32)
    else:
      bound = 1.0 / np.sqrt(kernel_fan_in[path[:-1]])
      value = rng.uniform(-bound, bound, shape).astype(np.float32)
    leaves.append((path, var.replace(jnp.asarray(value, dtype))))
  return nnx.merge(graphdef, nnx.from_flat_state(leaves))
