"""The Wan VAE encoder and decoder, one temporal chunk per call.

Structure from ``Encoder3d``/``Encoder3d_38`` and ``Decoder3d``/
``Decoder3d_38`` in ``diffsynth/models/wan_video_vae.py``. Both VAEs are
built from the same stages here: Wan2.1's flat ``downsamples.N`` /
``upsamples.N`` lists are grouped per stage (the converter maps the indices),
and Wan2.2's ``Down_ResidualBlock`` / ``Up_ResidualBlock`` add the
parameter-free ``AvgDown3D`` / ``DupUp3D`` stage shortcuts.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.models.vae.blocks import (
  ChannelRMSNorm,
  MidBlock,
  Resample,
  ResidualBlock,
  avg_down_3d,
  dup_up_3d,
)
from kiwi_jax.models.vae.causal_conv import CausalConv3d
from kiwi_jax.models.vae.config import WanVAEConfig

VIDEO_AXES = (
  "act_batch",
  "act_frames",
  "act_height",
  "act_width",
  "act_channels",
)


def _kw(cfg: WanVAEConfig) -> dict[str, Any]:
  return dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)


class DownStage(nnx.Module):
  """``num_res_blocks`` ResidualBlocks then an optional downsample; in the
  residual (Wan2.2) style plus ``AvgDown3D`` of the stage input."""

  def __init__(
    self,
    in_dim: int,
    out_dim: int,
    *,
    num_res_blocks: int,
    downsample: str | None,
    residual: bool,
    dtype: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.resnets = nnx.List(
      [
        ResidualBlock(in_dim if i == 0 else out_dim, out_dim, **kw)
        for i in range(num_res_blocks)
      ]
    )
    self.downsample = (
      Resample(out_dim, downsample, **kw) if downsample else None
    )
    self.residual = residual
    self.out_dim = out_dim
    self.factor_t = 2 if downsample == "downsample3d" else 1
    self.factor_s = 2 if downsample else 1

  def __call__(self, x: jax.Array, cache=None):
    caches = (
      list(cache) if cache is not None else [None] * (len(self.resnets) + 1)
    )
    stage_input = x
    new = []
    for block, c in zip(self.resnets, caches):
      x, c = block(x, c)
      new.append(c)
    if self.downsample is not None:
      x, c = self.downsample(x, caches[-1])
    else:
      c = None
    new.append(c)
    if self.residual:
      x = x + avg_down_3d(
        stage_input, self.out_dim, self.factor_t, self.factor_s
      ).astype(x.dtype)
    return x, tuple(new)


class UpStage(nnx.Module):
  """``num_res_blocks + 1`` ResidualBlocks then an optional upsample; in the
  residual (Wan2.2) style plus ``DupUp3D`` of the stage input."""

  def __init__(
    self,
    in_dim: int,
    out_dim: int,
    *,
    num_res_blocks: int,
    upsample: str | None,
    upsample_dim: int,
    residual: bool,
    dtype: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.resnets = nnx.List(
      [
        ResidualBlock(in_dim if i == 0 else out_dim, out_dim, **kw)
        for i in range(num_res_blocks + 1)
      ]
    )
    self.upsample = (
      Resample(out_dim, upsample, out_dim=upsample_dim, **kw)
      if upsample
      else None
    )
    self.shortcut = residual and upsample is not None
    self.out_dim = out_dim
    self.factor_t = 2 if upsample == "upsample3d" else 1

  def __call__(self, x: jax.Array, cache=None):
    first_chunk = cache is None
    caches = (
      list(cache) if cache is not None else [None] * (len(self.resnets) + 1)
    )
    stage_input = x
    new = []
    for block, c in zip(self.resnets, caches):
      x, c = block(x, c)
      new.append(c)
    if self.upsample is not None:
      x, c = self.upsample(x, caches[-1])
    else:
      c = None
    new.append(c)
    if self.shortcut:
      x = x + dup_up_3d(
        stage_input, self.out_dim, self.factor_t, 2, first_chunk
      ).astype(x.dtype)
    return x, tuple(new)


class Encoder(nnx.Module):
  """Pixels (patchified) -> ``2 * z_dim`` moments, one chunk per call."""

  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
    kw = _kw(cfg)
    dims = cfg.encoder_widths()
    n = len(cfg.dim_mult)
    self.conv_in = CausalConv3d(cfg.pixel_channels, dims[0], 3, rngs=rngs, **kw)
    stages = []
    for i in range(n):
      down = None
      if i < n - 1:
        down = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
      stages.append(
        DownStage(
          dims[i],
          dims[i + 1],
          num_res_blocks=cfg.num_res_blocks,
          downsample=down,
          residual=cfg.residual,
          rngs=rngs,
          **kw,
        )
      )
    self.stages = nnx.List(stages)
    self.mid = MidBlock(
      dims[-1], implementation=cfg.attention_implementation, rngs=rngs, **kw
    )
    self.norm_out = ChannelRMSNorm(dims[-1], **kw)
    self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, rngs=rngs, **kw)

  def __call__(self, x: jax.Array, cache=None):
    """One chunk: ``x`` float[B, t, H, W, pixel_channels] with t = 1 on the
    first chunk (``cache=None``) and 4 after. Returns (moments, cache)."""
    cache = cache or (None,) * (len(self.stages) + 3)
    x = sharding.constrain(x, VIDEO_AXES)
    new = []
    x, c = self.conv_in(x, cache[0])
    new.append(c)
    for stage, c in zip(self.stages, cache[1:-2]):
      x, c = stage(x, c)
      new.append(c)
    x, c = self.mid(x, cache[-2])
    new.append(c)
    x, c = self.conv_out(jax.nn.silu(self.norm_out(x)), cache[-1])
    new.append(c)
    return sharding.constrain(x, VIDEO_AXES), tuple(new)


class Decoder(nnx.Module):
  """``z_dim`` latents -> pixels (patchified), one latent frame per call."""

  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
    kw = _kw(cfg)
    dims = cfg.decoder_widths()
    n = len(cfg.dim_mult)
    temporal_up = tuple(reversed(cfg.temporal_downsample))
    self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, rngs=rngs, **kw)
    self.mid = MidBlock(
      dims[0], implementation=cfg.attention_implementation, rngs=rngs, **kw
    )
    stages = []
    for i in range(n):
      in_dim, out_dim = dims[i], dims[i + 1]
      if i > 0 and not cfg.residual:
        in_dim //= 2  # Wan2.1: the previous upsample conv halved the width
      up = None
      if i < n - 1:
        up = "upsample3d" if temporal_up[i] else "upsample2d"
      stages.append(
        UpStage(
          in_dim,
          out_dim,
          num_res_blocks=cfg.num_res_blocks,
          upsample=up,
          upsample_dim=out_dim if cfg.residual else out_dim // 2,
          residual=cfg.residual,
          rngs=rngs,
          **kw,
        )
      )
    self.stages = nnx.List(stages)
    self.norm_out = ChannelRMSNorm(dims[-1], **kw)
    self.conv_out = CausalConv3d(
      dims[-1], cfg.pixel_channels, 3, rngs=rngs, **kw
    )

  def __call__(self, x: jax.Array, cache=None):
    """One latent frame ``x`` float[B, 1, h, w, z_dim] -> (pixels, cache):
    1 frame on the first chunk (``cache=None``), ``temporal_factor`` after."""
    cache = cache or (None,) * (len(self.stages) + 3)
    x = sharding.constrain(x, VIDEO_AXES)
    new = []
    x, c = self.conv_in(x, cache[0])
    new.append(c)
    x, c = self.mid(x, cache[1])
    new.append(c)
    for stage, c in zip(self.stages, cache[2:-1]):
      x, c = stage(x, c)
      new.append(c)
    x, c = self.conv_out(jax.nn.silu(self.norm_out(x)), cache[-1])
    new.append(c)
    return sharding.constrain(x, VIDEO_AXES), tuple(new)
