"""The Wan video DiT with Kiwi-Edit's source and reference conditioning.

Forward pass of ``model_fn_wan_video`` (``diffsynth/pipelines/
wan_video_mllm.py``; reference §3), in channels-last layouts:

  latents [B, t, h, w, c] -> patch tokens (+ sigma * vae_condition(source))
  -> [video | ref] or [ref | video] tokens with 3-D RoPE -> scanned blocks
  -> drop ref tokens -> modulated head -> unpatchify -> velocity.

The Kiwi path feeds the connector output straight to cross-attention; the
stock Wan text path (``text_embedding`` on T5 features, used for diffusers
parity) is ``context_is_text=True`` or :meth:`WanDiT.embed_text`.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.layers import Dense, GeluTanhMLP, timestep_sinusoid
from kiwi_jax.layers.rope import rotary_inv_freq, wan_rope_axis_dims
from kiwi_jax.models.dit import blocks as blocks_lib
from kiwi_jax.models.dit.conditioning import (
  ConditionalEmbedder,
  PatchEmbedding,
  unpatchify,
)
from kiwi_jax.models.dit.config import WanDiTConfig, remat_policy
from kiwi_jax.utils.rngs import cheap_draws


@flax.struct.dataclass
class DiTOutput:
  """Output of :class:`WanDiT`.

  Attributes:
    velocity: float[B, t, h, w, out_channels] flow-matching prediction.
  """

  velocity: jax.Array


@flax.struct.dataclass
class DiTParts:
  """What :meth:`WanDiT.embed` hands to the blocks and the head.

  Attributes:
    tokens: float[B, S, dim] the blocks' input (video + reference tokens).
    context: float[B, L, dim] cross-attention context.
    t_emb: float[B, 1|S, dim] the head's timestep embedding.
    t_mod: float[B, 1|S, 6, dim] the blocks' timestep modulation.
    rope: (cos, sin) float32[S, head_dim / 2].
    context_mask: bool[B, L] or None.
    grid: (f, h, w) video token grid (static).
    video_start: first video token in the sequence (static).
  """

  tokens: jax.Array
  context: jax.Array
  t_emb: jax.Array
  t_mod: jax.Array
  rope: tuple[jax.Array, jax.Array]
  context_mask: jax.Array | None
  grid: tuple[int, int, int] = flax.struct.field(pytree_node=False)
  video_start: int = flax.struct.field(pytree_node=False)


class TimeEmbedding(nnx.Module):
  """``fc2(silu(fc1(s)))`` (``time_embedding.0`` / ``.2``), fp32 like
  diffusers' ``time_embedder`` (``_keep_in_fp32_modules``)."""

  def __init__(self, cfg: WanDiTConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=jnp.float32, param_dtype=cfg.param_dtype, rngs=rngs)
    self.fc1 = Dense(cfg.freq_dim, cfg.dim, kernel_axes=(None, "embed"), **kw)
    self.fc2 = Dense(cfg.dim, cfg.dim, kernel_axes=("embed_in", "embed"), **kw)

  def __call__(self, s: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.silu(self.fc1(s)))


class Head(nnx.Module):
  """Output head: ``proj(LN(x) * (1 + scale) + shift)`` with
  ``(shift, scale) = modulation + t_emb`` (``head.modulation``,
  ``head.head``; the head uses ``t_emb``, not ``t_mod``)."""

  def __init__(self, cfg: WanDiTConfig, *, rngs: nnx.Rngs):
    self.eps = cfg.eps
    self.dtype = cfg.dtype
    self.modulation = blocks_lib.modulation_param(
      rngs, 2, cfg.dim, cfg.param_dtype
    )
    self.proj = Dense(
      cfg.dim,
      cfg.out_patch_features,
      kernel_axes=("embed", None),
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      rngs=rngs,
    )

  def __call__(self, x: jax.Array, t_emb: jax.Array) -> jax.Array:
    """x: float[B, S, dim]; t_emb: float[B, 1 or S, dim]."""
    mod = (
      self.modulation[...].astype(jnp.float32)[None]
      + t_emb.astype(jnp.float32)[:, :, None, :]
    )
    y = blocks_lib.modulate(x, mod[:, :, 0], mod[:, :, 1], self.eps)
    return self.proj(y.astype(self.dtype))


def _axis_tables(positions: np.ndarray, dim: int, theta: float):
  """Host float64 cos/sin float32[len(positions), dim/2] for one RoPE axis."""
  angles = (
    positions.astype(np.float64)[:, None]
    * rotary_inv_freq(dim, theta, xp=np)[None, :]
  )
  return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rope_tables(cfg: WanDiTConfig, segments) -> tuple[jax.Array, jax.Array]:
  """RoPE cos/sin float32[S, head_dim/2] for a sequence of token grids.

  Args:
    cfg: the model config.
    segments: ``(frame_offset, frames, height, width)`` per grid, in
      sequence order; each grid is row-major over (frame, row, column).

  The per-axis tables are built on the host in float64 (the reference's
  ``precompute_freqs_cis_3d`` is float64) and broadcast over the grid on
  the device, so the constants stay O(f + h + w) rather than O(S).
  """
  dims = wan_rope_axis_dims(cfg.head_dim)
  cos_parts, sin_parts = [], []
  for offset, f, h, w in segments:
    longest = max(offset + f, h, w)
    if longest > cfg.rope_max_seq_len:
      raise ValueError(
        f"Token grid (frames {offset}..{offset + f - 1}, {h} x {w}) needs "
        f"{longest} RoPE positions; the model has rope_max_seq_len "
        f"{cfg.rope_max_seq_len}."
      )
    grid = (f, h, w)
    axes = (np.arange(offset, offset + f), np.arange(h), np.arange(w))
    seg_cos, seg_sin = [], []
    for axis, (pos, dim) in enumerate(zip(axes, dims)):
      c, s = _axis_tables(pos, dim, cfg.rope_theta)
      shape = [1, 1, 1, dim // 2]
      shape[axis] = grid[axis]
      seg_cos.append(jnp.broadcast_to(c.reshape(shape), grid + (dim // 2,)))
      seg_sin.append(jnp.broadcast_to(s.reshape(shape), grid + (dim // 2,)))
    n = f * h * w
    cos_parts.append(jnp.concatenate(seg_cos, -1).reshape(n, -1))
    sin_parts.append(jnp.concatenate(seg_sin, -1).reshape(n, -1))
  cos = jnp.concatenate(cos_parts, 0)
  sin = jnp.concatenate(sin_parts, 0)
  names = ("act_seq", None)
  return sharding.constrain(cos, names), sharding.constrain(sin, names)


def _stacked_blocks(cfg: WanDiTConfig, rngs: nnx.Rngs) -> blocks_lib.WanBlock:
  """``num_layers`` blocks whose parameters have a leading layer axis."""

  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def create(rngs):
    return blocks_lib.WanBlock(cfg, rngs=rngs)

  return create(rngs)


class WanDiT(nnx.Module):
  """Wan2.1 / Wan2.2 video DiT with Kiwi's conditional embedders.

  Parameter tree (DiffSynth names where they exist): ``patch_embedding``,
  ``text_embedding`` (``fc1``/``fc2``), ``time_embedding``,
  ``time_projection``, ``blocks`` (stacked, leading axis = layer), ``head``,
  and, when configured, ``vae_condition`` / ``ref_vae_condition``.
  """

  @cheap_draws
  def __init__(self, cfg: WanDiTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.patch_embedding = PatchEmbedding(
      cfg.in_channels, cfg.dim, cfg.patch_size, **kw
    )
    self.text_embedding = GeluTanhMLP(
      cfg.text_dim,
      cfg.dim,
      cfg.dim,
      in_axis="embed_in",
      hidden_axis="mlp",
      out_axis="embed",
      **kw,
    )
    self.time_embedding = TimeEmbedding(cfg, rngs=rngs)
    self.time_projection = Dense(
      cfg.dim, 6 * cfg.dim, kernel_axes=("embed", "mlp"), **kw
    )
    self.blocks = _stacked_blocks(cfg, rngs)
    self.head = Head(cfg, rngs=rngs)
    self.vae_condition = (
      ConditionalEmbedder(cfg.in_channels, cfg.dim, cfg.patch_size, **kw)
      if cfg.source_condition
      else None
    )
    self.ref_vae_condition = (
      ConditionalEmbedder(cfg.in_channels, cfg.dim, cfg.patch_size, **kw)
      if cfg.reference_condition
      else None
    )

  def embed_text(self, text_states: jax.Array) -> jax.Array:
    """Stock Wan text path: float[B, L, text_dim] -> float[B, L, dim]."""
    return self.text_embedding(text_states)

  def embed_timestep(self, timestep: jax.Array):
    """Timestep [B] or per-token [B, S] -> (t_emb [B, 1|S, dim],
    t_mod [B, 1|S, 6, dim])."""
    t = timestep if timestep.ndim == 2 else timestep[:, None]
    s = timestep_sinusoid(t, self.cfg.freq_dim, cos_first=True)
    t_emb = self.time_embedding(s).astype(self.cfg.dtype)
    t_mod = self.time_projection(jax.nn.silu(t_emb))
    t_mod = t_mod.reshape(t_mod.shape[:-1] + (6, self.cfg.dim))
    if timestep.ndim == 2:
      t_emb = sharding.constrain(t_emb, blocks_lib.TOKENS)
      t_mod = sharding.constrain(
        t_mod, ("act_batch", "act_seq", None, "act_embed")
      )
    return t_emb, t_mod

  def __call__(
    self,
    latents: jax.Array,
    timestep: jax.Array,
    context: jax.Array,
    *,
    source_latents: jax.Array | None = None,
    sigma: jax.Array | None = None,
    ref_latents: jax.Array | None = None,
    context_is_text: bool = False,
    context_mask: jax.Array | None = None,
  ) -> DiTOutput:
    """Predicts the flow-matching velocity.

    Args:
      latents: float[B, t, h, w, in_channels] noisy latents z_t.
      timestep: float[B] (one per sample, Kiwi) or float[B, S] per token
        (Wan2.2 TI2V), S the self-attention length (video tokens, plus the
        reference tokens in sequence order when ``ref_latents`` is given).
      context: float[B, L, dim] cross-attention context (Kiwi connector
        output), or float[B, L, text_dim] with ``context_is_text``.
      source_latents: float[B, t, h, w, in_channels] source-video latents,
        added as ``sigma * vae_condition(source)`` after patch embedding.
      sigma: float[B] flow-matching sigma of ``timestep`` (the scheduler's
        nearest-entry lookup); required with ``source_latents``.
      ref_latents: float[B, r, h, w, in_channels] reference latents (r = 1
        for one image) embedded by ``ref_vae_condition`` into extra tokens.
      context_is_text: apply ``text_embedding`` to ``context`` first.
      context_mask: optional bool[B, L], False on context rows to ignore
        (padding; Kiwi's reference rows of a shorter reference image).

    Returns:
      ``DiTOutput(velocity=float[B, t, h, w, out_channels])``.
    """
    parts = self.embed(
      latents,
      timestep,
      context,
      source_latents=source_latents,
      sigma=sigma,
      ref_latents=ref_latents,
      context_is_text=context_is_text,
      context_mask=context_mask,
    )
    return self.unembed(parts, self.run_blocks(parts))

  def embed(
    self,
    latents: jax.Array,
    timestep: jax.Array,
    context: jax.Array,
    *,
    source_latents: jax.Array | None = None,
    sigma: jax.Array | None = None,
    ref_latents: jax.Array | None = None,
    context_is_text: bool = False,
    context_mask: jax.Array | None = None,
  ) -> DiTParts:
    """Everything before the blocks (arguments of :meth:`__call__`).

    ``__call__`` is ``unembed(parts, run_blocks(parts))`` with ``parts``
    from here; a step cache (``kiwi_jax.diffusion.step_cache``) runs the
    three apart so that it can skip the blocks.
    """
    cfg = self.cfg
    x, (f, h, w), ref_frames = self._tokens(
      latents, source_latents, sigma, ref_latents
    )
    b, n_video = x.shape[0], f * h * w

    # RoPE: video frames 0..f-1 then ref frames f.. (default), or ref
    # frames first at 0.. and the video shifted after them (ref_pad_first).
    video_seg = (ref_frames if cfg.ref_pad_first else 0, f, h, w)
    ref_seg = (0 if cfg.ref_pad_first else f, ref_frames, h, w)
    segments = (
      [video_seg]
      if not ref_frames
      else ([ref_seg, video_seg] if cfg.ref_pad_first else [video_seg, ref_seg])
    )
    rope = rope_tables(cfg, segments)

    seq = x.shape[1]
    if (
      timestep.ndim not in (1, 2)
      or timestep.shape[0] != b
      or (timestep.ndim == 2 and timestep.shape[1] != seq)
    ):
      raise ValueError(
        f"timestep must be float[{b}] or float[{b}, {seq}] "
        f"(per token, sequence order), got {timestep.shape}."
      )
    t_emb, t_mod = self.embed_timestep(timestep)

    if context_is_text:
      context = self.embed_text(context)
    if (
      context.ndim != 3
      or context.shape[0] != b
      or (context.shape[-1] != cfg.dim)
    ):
      raise ValueError(
        f"context must be float[{b}, L, {cfg.dim}], got "
        f"{context.shape} (text features need "
        "context_is_text=True)."
      )
    context = sharding.constrain(
      context.astype(cfg.dtype), ("act_batch", None, "act_embed")
    )

    if context_mask is not None and context_mask.shape != context.shape[:2]:
      raise ValueError(
        f"context_mask must be bool{list(context.shape[:2])},"
        f" got {context_mask.shape}."
      )
    return DiTParts(
      tokens=x,
      context=context,
      t_emb=t_emb,
      t_mod=t_mod,
      rope=rope,
      context_mask=context_mask,
      grid=(f, h, w),
      video_start=seq - n_video if cfg.ref_pad_first else 0,
    )

  def run_blocks(
    self, parts: DiTParts, tokens: jax.Array | None = None
  ) -> jax.Array:
    """The block stack on ``tokens`` (default ``parts.tokens``)."""
    x = parts.tokens if tokens is None else tokens
    return self._run_blocks(
      x, parts.context, parts.t_mod, parts.rope, parts.context_mask
    )

  def first_block_input(self, parts: DiTParts) -> jax.Array:
    """float32[B, S, dim]: the first block's timestep-modulated
    self-attention input ``LN(x) * (1 + scale) + shift`` (a step cache's
    change indicator)."""
    mod = self.blocks.modulation[...][0].astype(jnp.float32)[
      None
    ] + parts.t_mod.astype(jnp.float32)
    return blocks_lib.modulate(
      parts.tokens, mod[:, :, 0], mod[:, :, 1], self.cfg.eps
    )

  def unembed(self, parts: DiTParts, x: jax.Array) -> DiTOutput:
    """The blocks' output tokens -> ``DiTOutput`` (drop ref, head)."""
    cfg = self.cfg
    f, h, w = parts.grid
    t_emb = parts.t_emb
    # Reference tokens only condition the video; drop them before the head.
    video = slice(parts.video_start, parts.video_start + f * h * w)
    x = x[:, video]
    if t_emb.shape[1] != 1:
      t_emb = t_emb[:, video]
    out = self.head(x, t_emb)
    velocity = unpatchify(out, (f, h, w), cfg.patch_size)
    return DiTOutput(velocity=velocity)

  def _tokens(self, latents, source_latents, sigma, ref_latents):
    """Patch tokens float[B, S, dim] (video + reference, sequence order),
    the video token grid (f, h, w) and the number of reference frames."""
    cfg = self.cfg
    x = self.patch_embedding(latents, "latents")  # [B, f, h, w, dim]
    b, f, h, w, _ = x.shape
    if source_latents is not None:
      if self.vae_condition is None:
        raise ValueError(
          "source_latents given but the model has no "
          "vae_condition (set source_condition=True)."
        )
      if source_latents.shape != latents.shape:
        raise ValueError(
          f"source_latents shape {source_latents.shape} must "
          f"equal latents shape {latents.shape}."
        )
      if sigma is None or jnp.shape(sigma) != (b,):
        raise ValueError(
          f"sigma must be float[{b}] with source_latents, got "
          f"{None if sigma is None else jnp.shape(sigma)}."
        )
      src = self.vae_condition(source_latents, "source_latents")
      x = x + src * sigma.astype(x.dtype)[:, None, None, None, None]
    x = x.reshape(b, f * h * w, cfg.dim)

    ref_frames = 0
    if ref_latents is not None:
      if self.ref_vae_condition is None:
        raise ValueError(
          "ref_latents given but the model has no "
          "ref_vae_condition (set reference_condition=True)."
        )
      if (
        ref_latents.ndim != 5
        or ref_latents.shape[0] != b
        or ref_latents.shape[2:] != latents.shape[2:]
      ):
        raise ValueError(
          f"ref_latents must be float[{b}, r, {latents.shape[2]}, "
          f"{latents.shape[3]}, {latents.shape[4]}] (same size as the "
          f"video latents), got {tuple(ref_latents.shape)}."
        )
      r = self.ref_vae_condition(ref_latents, "ref_latents")
      ref_frames = r.shape[1]
      r = r.reshape(b, -1, cfg.dim)
      x = jnp.concatenate([r, x] if cfg.ref_pad_first else [x, r], axis=1)
    x = sharding.constrain(x.astype(cfg.dtype), blocks_lib.TOKENS)
    return x, (f, h, w), ref_frames

  def _run_blocks(self, x, context, t_mod, rope, context_mask=None):
    """``lax.scan`` over the stacked blocks, each under the remat policy."""
    graphdef, state = nnx.split(self.blocks)

    def apply_block(layer_state, x, context, t_mod, rope, context_mask):
      return nnx.merge(graphdef, layer_state)(
        x, context, t_mod, rope, context_mask
      )

    if self.cfg.remat_policy != "none":
      apply_block = jax.checkpoint(
        apply_block,
        policy=remat_policy(self.cfg.remat_policy),
        prevent_cse=False,
      )

    def body(carry, layer_state):
      return apply_block(
        layer_state, carry, context, t_mod, rope, context_mask
      ), None

    x, _ = jax.lax.scan(body, x, state)
    return x


def parameter_count(model_or_state) -> int:
  """Number of parameters of a (possibly abstract) model or state."""
  state = nnx.state(model_or_state, nnx.Param)
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(state))


__all__ = ["DiTOutput", "DiTParts", "WanDiT", "parameter_count", "rope_tables"]
