"""Building blocks of the Wan VAEs, channels-last, with explicit caches.

Every block that mixes time takes ``cache`` (``None`` at the start of the
video) and returns ``(y, new_cache)``; the reference's first-chunk special
cases (``Resample`` time convs, ``DupUp3D``) key on ``cache is None``, which
is exactly when the reference's ``feat_cache`` entries are still ``None``.
Facts from ``diffsynth/models/wan_video_vae.py`` (showlab/Kiwi-Edit) and
diffusers' ``autoencoder_kl_wan.py``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.layers import dot_product_attention
from kiwi_jax.models.vae.causal_conv import (
  CACHE_FRAMES,
  CausalConv3d,
  FrameConv2d,
)


class ChannelRMSNorm(nnx.Module):
  """The reference's ``RMS_norm``: ``F.normalize(x, dim=C) * sqrt(C) * gamma``.

  That is an L2 normalisation over channels only (eps 1e-12 on the norm, as
  ``F.normalize`` has), not a mean-square RMSNorm with eps inside the root.
  Statistics in fp32 (diffusers' ``WanRMS_norm`` upcasts bf16 too).

  Attributes:
    gamma: float[C] (torch ``(C, 1, 1, 1)`` or ``(C, 1, 1)``).
  """

  def __init__(
    self, dim: int, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32
  ):
    self.scale = float(dim) ** 0.5
    self.dtype = dtype
    self.gamma = sharding.param(
      jax.nn.initializers.ones, None, (dim,), param_dtype, ("norm",)
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[..., C] -> same shape in the compute dtype."""
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
    y = (x32 / jnp.maximum(norm, 1e-12)).astype(self.dtype)
    return y * (self.scale * self.gamma[...].astype(self.dtype))


class ResidualBlock(nnx.Module):
  """norm, SiLU, conv3 (causal), norm, SiLU, conv3, plus a 1x1x1 shortcut
  when the width changes (reference ``ResidualBlock``; dropout is 0)."""

  def __init__(
    self,
    in_dim: int,
    out_dim: int,
    *,
    dtype: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.norm1 = ChannelRMSNorm(in_dim, **kw)
    self.conv1 = CausalConv3d(in_dim, out_dim, 3, rngs=rngs, **kw)
    self.norm2 = ChannelRMSNorm(out_dim, **kw)
    self.conv2 = CausalConv3d(out_dim, out_dim, 3, rngs=rngs, **kw)
    self.shortcut = (
      CausalConv3d(in_dim, out_dim, 1, rngs=rngs, **kw)
      if in_dim != out_dim
      else None
    )

  def __call__(self, x: jax.Array, cache=None):
    """x: float[B, T, H, W, in] -> (float[B, T, H, W, out], cache)."""
    c1, c2 = cache if cache is not None else (None, None)
    h = x if self.shortcut is None else self.shortcut(x)[0]
    y, c1 = self.conv1(jax.nn.silu(self.norm1(x)), c1)
    y, c2 = self.conv2(jax.nn.silu(self.norm2(y)), c2)
    return y + h, (c1, c2)


class AttentionBlock(nnx.Module):
  """Single-head self-attention over the H*W positions of each frame (no
  mixing in time), with a residual (reference ``AttentionBlock``)."""

  def __init__(
    self,
    dim: int,
    *,
    dtype: Any,
    param_dtype: Any,
    implementation: str | None,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.norm = ChannelRMSNorm(dim, **kw)
    self.to_qkv = FrameConv2d(dim, 3 * dim, 1, rngs=rngs, **kw)
    self.proj = FrameConv2d(dim, dim, 1, rngs=rngs, **kw)
    self.implementation = implementation

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[B, T, H, W, C] -> same shape."""
    b, t, h, w, c = x.shape
    qkv = self.to_qkv(self.norm(x)).reshape(b * t, h * w, 1, 3 * c)
    # torch chunks the 3C channels in order q, k, v.
    q, k, v = jnp.split(qkv, 3, axis=-1)
    y = dot_product_attention(q, k, v, implementation=self.implementation)
    y = self.proj(y.reshape(b, t, h, w, c))
    return y + x


class MidBlock(nnx.Module):
  """ResidualBlock, AttentionBlock, ResidualBlock."""

  def __init__(
    self,
    dim: int,
    *,
    dtype: Any,
    param_dtype: Any,
    implementation: str | None,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.res0 = ResidualBlock(dim, dim, **kw)
    self.attn = AttentionBlock(dim, implementation=implementation, **kw)
    self.res1 = ResidualBlock(dim, dim, **kw)

  def __call__(self, x: jax.Array, cache=None):
    c0, c1 = cache if cache is not None else (None, None)
    x, c0 = self.res0(x, c0)
    x = self.attn(x)
    x, c1 = self.res1(x, c1)
    return x, (c0, c1)


def _upsample_nearest2x(x: jax.Array) -> jax.Array:
  """``nearest-exact`` x2 in H and W (computed in fp32 in the reference; a
  pure copy, so the dtype does not change values)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)


class Resample(nnx.Module):
  """Spatial (and temporal) down/upsampling (reference ``Resample``).

  Modes:
    ``downsample2d``: pad right/bottom by 1, Conv2d k3 s2, per frame.
    ``downsample3d``: the same, then ``time_conv`` (k (3,1,1), stride 2, no
      padding) over ``[last frame of the previous chunk, chunk]``; on the
      first chunk the frame passes through untouched.
    ``upsample2d``: nearest x2, Conv2d k3 p1 (to ``out_dim``), per frame.
    ``upsample3d``: first ``time_conv`` (causal, C -> 2C) whose two halves
      become interleaved frames (T -> 2T), then as ``upsample2d``; skipped on
      the first chunk, run with zero history on the second.
  """

  MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")

  def __init__(
    self,
    dim: int,
    mode: str,
    *,
    out_dim: int | None = None,
    dtype: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
  ):
    if mode not in self.MODES:
      raise ValueError(f"Resample mode {mode!r} not in {self.MODES}.")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.mode = mode
    if mode.startswith("down"):
      self.conv = FrameConv2d(
        dim, dim, 3, stride=2, padding=((0, 1), (0, 1)), **kw
      )
      self.time_conv = (
        CausalConv3d(dim, dim, (3, 1, 1), padding=0, stride_t=2, **kw)
        if mode == "downsample3d"
        else None
      )
    else:
      self.conv = FrameConv2d(
        dim, out_dim or dim, 3, padding=((1, 1), (1, 1)), **kw
      )
      self.time_conv = (
        CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0), **kw)
        if mode == "upsample3d"
        else None
      )

  def __call__(self, x: jax.Array, cache=None):
    """x: float[B, T, H, W, C] -> (resampled x, cache)."""
    if self.mode == "upsample3d":
      if cache is None:
        # Reference: cache := 'Rep', no time conv; the next chunk then runs
        # the causal conv with zero history, i.e. a zero cache.
        cache = jnp.zeros(
          x.shape[:1] + (CACHE_FRAMES,) + x.shape[2:], self.conv.dtype
        )
      else:
        b, t, h, w, c = x.shape
        y, cache = self.time_conv(x, cache)
        # Channel halves [C | C] at time t become frames 2t and 2t + 1.
        x = y.reshape(b, t, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5)
        x = x.reshape(b, 2 * t, h, w, c)
    if self.mode.startswith("up"):
      x = _upsample_nearest2x(x)
    x = self.conv(x)
    if self.mode == "downsample3d":
      new_cache = x[:, -1:]
      if cache is not None:
        x = self.time_conv.conv(
          jnp.concatenate([cache.astype(x.dtype), x], axis=1)
        )
      cache = new_cache
    return x, cache


def avg_down_3d(
  x: jax.Array, out_channels: int, factor_t: int, factor_s: int
) -> jax.Array:
  """Reference ``AvgDown3D``: fold (ft, fs, fs) into channels, average groups.

  Time is zero-padded at the front to a multiple of ``factor_t`` (so a
  1-frame first chunk averages with a zero frame). Folded channel order is
  ``c, t_off, h_off, w_off``; groups of consecutive folded channels average.

  x: float[B, T, H, W, C] -> float[B, ceil(T/ft), H/fs, W/fs, out_channels].
  """
  pad_t = (-x.shape[1]) % factor_t
  if pad_t:
    x = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
  b, t, h, w, c = x.shape
  ft, fs = factor_t, factor_s
  x = x.reshape(b, t // ft, ft, h // fs, fs, w // fs, fs, c)
  x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # b t h w | c ft fs_h fs_w
  folded = c * ft * fs * fs
  x = x.reshape(
    b, t // ft, h // fs, w // fs, out_channels, folded // out_channels
  )
  return jnp.mean(x, axis=-1)


def dup_up_3d(
  x: jax.Array,
  out_channels: int,
  factor_t: int,
  factor_s: int,
  first_chunk: bool,
) -> jax.Array:
  """Reference ``DupUp3D``: repeat channels, unfold them into (ft, fs, fs).

  On the first chunk the first ``ft - 1`` output frames are dropped.

  x: float[B, T, H, W, C] -> float[B, T*ft (- ft + 1), H*fs, W*fs, out].
  """
  b, t, h, w, c = x.shape
  ft, fs = factor_t, factor_s
  repeats = out_channels * ft * fs * fs // c
  x = jnp.repeat(x, repeats, axis=-1)
  x = x.reshape(b, t, h, w, out_channels, ft, fs, fs)
  x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4)  # b t ft h fs w fs c
  x = x.reshape(b, t * ft, h * fs, w * fs, out_channels)
  return x[:, ft - 1 :] if first_chunk else x


def patchify(x: jax.Array, p: int) -> jax.Array:
  """Pixel unshuffle with the reference's channel order ``c, r(w), q(h)``.

  x: float[B, T, H, W, C] -> float[B, T, H/p, W/p, C*p*p].
  """
  if p == 1:
    return x
  b, t, h, w, c = x.shape
  x = x.reshape(b, t, h // p, p, w // p, p, c)  # q = height, r = width offset
  x = x.transpose(0, 1, 2, 4, 6, 5, 3)  # b t h w | c r q
  return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
  """Inverse of :func:`patchify`."""
  if p == 1:
    return x
  b, t, h, w, cpp = x.shape
  c = cpp // (p * p)
  x = x.reshape(b, t, h, w, c, p, p)  # c r q
  x = x.transpose(0, 1, 2, 6, 3, 5, 4)  # b t h q w r c
  return x.reshape(b, t, h * p, w * p, c)
