"""Causal 3D and per-frame 2D convolutions, channels-last, with explicit
feature caches for chunked (streamed) processing in time.

The reference (``CausalConv3d`` in ``diffsynth/models/wan_video_vae.py``)
zero-pads time only at the front, by ``2 * padding_t`` frames, and when a
video is processed in chunks it prepends the last ``CACHE_T = 2`` input
frames of the previous chunk instead of zeros. Here that cache is an explicit
value: ``None`` means "start of the video" (zeros), and every call returns the
cache for the next chunk, so a chunk loop is a pure function that
``lax.scan`` can carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax import sharding

# Frames of history a causal k_t = 3 conv needs (``CACHE_T`` in the reference).
CACHE_FRAMES = 2


def _torch_conv_init(fan_in: int):
  """PyTorch's default Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / max(fan_in, 1) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _conv_params(
  module,
  kernel_shape: Sequence[int],
  in_ch: int,
  out_ch: int,
  param_dtype: Any,
  rngs: nnx.Rngs,
) -> None:
  fan_in = in_ch
  for k in kernel_shape:
    fan_in *= k
  init = _torch_conv_init(fan_in)
  spatial_axes = (None,) * len(kernel_shape)
  module.kernel = sharding.param(
    init,
    rngs.params(),
    tuple(kernel_shape) + (in_ch, out_ch),
    param_dtype,
    spatial_axes + ("conv_in", "conv_out"),
  )
  module.bias = sharding.param(
    init, rngs.params(), (out_ch,), param_dtype, ("conv_out",)
  )


class CausalConv3d(nnx.Module):
  """``nn.Conv3d`` that is causal in time (reference ``CausalConv3d``).

  Attributes:
    kernel: float[kt, kh, kw, in, out] (torch weight ``(out, in, kt, kh, kw)``).
    bias: float[out].
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int] = 3,
    *,
    padding: int | Sequence[int] | None = None,
    stride_t: int = 1,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    """
    Args:
      in_channels: input channels.
      out_channels: output channels.
      kernel_size: ``k`` or ``(kt, kh, kw)``.
      padding: torch-style ``(pt, ph, pw)``; time gets ``2 * pt`` zero frames
        in front only, space ``ph``/``pw`` on both sides. Default ``k // 2``.
      stride_t: temporal stride (2 in the downsampling time conv).
      dtype: compute dtype.
      param_dtype: parameter dtype.
      rngs: random streams for initialisation.
    """
    ks = (
      (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
    )
    if padding is None:
      padding = tuple(k // 2 for k in ks)
    elif isinstance(padding, int):
      padding = (padding,) * 3
    self.kernel_size = ks
    self.time_pad = 2 * padding[0]
    self.spatial_pad = tuple(padding[1:])
    self.stride_t = stride_t
    self.dtype = dtype
    _conv_params(self, ks, in_channels, out_channels, param_dtype, rngs)

  def conv(self, x: jax.Array) -> jax.Array:
    """The convolution with no temporal padding ("valid" in time).

    x: float[B, T, H, W, in] -> float[B, T', H, W, out].
    """
    ph, pw = self.spatial_pad
    y = jax.lax.conv_general_dilated(
      x.astype(self.dtype),
      self.kernel[...].astype(self.dtype),
      window_strides=(self.stride_t, 1, 1),
      padding=((0, 0), (ph, ph), (pw, pw)),
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    )
    return y + self.bias[...].astype(self.dtype)

  def __call__(
    self, x: jax.Array, cache: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array | None]:
    """Causal convolution of one chunk.

    Args:
      x: float[B, T, H, W, in], the chunk.
      cache: float[B, 2 * pt, H, W, in], the last input frames of the
        previous chunk, or ``None`` at the start of the video (zeros).

    Returns:
      ``(y, new_cache)``: y float[B, T', H, W, out]; new_cache holds the last
      ``2 * pt`` frames of ``[cache, x]`` (``None`` when ``pt == 0``). Chunked
      calls then equal one call on the whole sequence.
    """
    if self.time_pad == 0:
      return self.conv(x), None
    x = x.astype(self.dtype)
    if cache is None:
      cache = jnp.zeros(x.shape[:1] + (self.time_pad,) + x.shape[2:], x.dtype)
    x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
    return self.conv(x), x[:, -self.time_pad :]


class FrameConv2d(nnx.Module):
  """``nn.Conv2d`` applied to every frame of a video.

  Attributes:
    kernel: float[kh, kw, in, out] (torch weight ``(out, in, kh, kw)``).
    bias: float[out].
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)),
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    """
    Args:
      padding: ``((top, bottom), (left, right))`` zero padding.
    """
    self.stride = stride
    self.padding = tuple(tuple(p) for p in padding)
    self.dtype = dtype
    _conv_params(
      self,
      (kernel_size, kernel_size),
      in_channels,
      out_channels,
      param_dtype,
      rngs,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[B, T, H, W, in] -> float[B, T, H', W', out]."""
    b, t = x.shape[:2]
    frames = x.reshape((b * t,) + x.shape[2:]).astype(self.dtype)
    y = jax.lax.conv_general_dilated(
      frames,
      self.kernel[...].astype(self.dtype),
      window_strides=(self.stride, self.stride),
      padding=self.padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    y = y + self.bias[...].astype(self.dtype)
    return y.reshape((b, t) + y.shape[1:])
