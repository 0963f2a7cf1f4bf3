"""Qwen2.5-VL vision tower (``visual.*``) with static shapes.

The reference (``Qwen2_5_VisionTransformerPretrainedModel`` in transformers'
``modeling_qwen2_5_vl.py``) loops over ``cu_seqlens`` in Python, so every
new image geometry is a new program. Here all geometry lives in host-side
metadata (:func:`vision_metadata`, numpy) padded to a bucket:

* the window reorder (``window_index``) and its inverse (``reverse_index``),
  applied on device at merge-unit granularity, exactly where the reference
  applies them, into a *window-aligned* layout: each window owns a block of
  64 slots, so windowed blocks attend within fixed blocks (a reshape);
* window attention and the full-attention blocks as *segment ids*: one id per
  (visual, frame, window) for windowed blocks and one per (visual, frame) for
  the full blocks (the reference's ``cu_seqlens`` are per frame, so even
  "full" attention never crosses frames); padding gets its own segment;
* the (h, w) patch coordinates for the 2-D rotary embedding.

The device program then only depends on the padded patch count.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.layers import Dense, RMSNorm, SwiGLU, dot_product_attention
from kiwi_jax.layers.attention import choose_implementation
from kiwi_jax.layers.rope import apply_rotary_half, rotary_inv_freq
from kiwi_jax.models.mllm.config import Qwen25VLConfig, QwenVisionConfig
from kiwi_jax.models.mllm.remat import remat_call

PAD_SEGMENT = -1  # segment id of padding patches (they only see each other)
# Above this many patches the full-attention blocks switch from one masked
# [N, N] problem to query chunks (``implementation="chunked"``), unless
# ``None`` chose a flash kernel (splash on TPU), which never holds [N, N].
_DENSE_LIMIT = 4096


# ---------------------------------------------------------------------------
# Host-side metadata.


def _visual_layout(t: int, h: int, w: int, cfg: QwenVisionConfig):
  """Window order, window ids and (h, w) positions of one visual.

  Returns:
    order: int[t*lh*lw] merge units in window order (local indices).
    window_of_unit: int[t*lh*lw] window id of each unit (original order).
    frame_of_unit: int[t*lh*lw] frame of each unit (original order).
    positions: int[t*h*w, 2] (row, col) of each patch (processor order).
  """
  m, ws = cfg.spatial_merge_size, cfg.merger_window
  if h % m or w % m:
    raise ValueError(
      f"Grid {(t, h, w)} is not a multiple of the spatial merge size {m}."
    )
  lh, lw = h // m, w // m
  n_wh, n_ww = -(-lh // ws), -(-lw // ws)
  tt, hh, ww = np.meshgrid(
    np.arange(t), np.arange(lh), np.arange(lw), indexing="ij"
  )
  window = ((tt * n_wh + hh // ws) * n_ww + ww // ws).reshape(-1)
  # Within a window the reference keeps row-major order (get_window_index).
  order = np.lexsort((ww.reshape(-1), hh.reshape(-1), window))
  # Patches are block-major over m x m merge blocks (the processor's order).
  bh, bw, ih, iw = np.meshgrid(
    np.arange(lh), np.arange(lw), np.arange(m), np.arange(m), indexing="ij"
  )
  rows = (bh * m + ih).reshape(-1)
  cols = (bw * m + iw).reshape(-1)
  positions = np.tile(np.stack([rows, cols], -1), (t, 1))
  return order, window, tt.reshape(-1), positions


def _slot_layout(grid_thw, cfg: QwenVisionConfig):
  """Window-aligned order of all merge units, with padding inside windows.

  Returns:
    slots: int[S_units] processor-order unit per slot, -1 for padding; every
      window starts at a multiple of ``window_units`` and fills it.
    window_of_slot, frame_of_slot: int[S_units] global ids (-1 for padding).
    positions: int[N_real, 2] patch (row, col) in processor order.
  """
  wu = cfg.merger_window**2
  slots, slot_windows, slot_frames, positions = [], [], [], []
  unit_offset = window_offset = frame_offset = 0
  for t, h, w in grid_thw:
    order, window, frame, pos = _visual_layout(int(t), int(h), int(w), cfg)
    for win in np.unique(window):
      units = order[window[order] == win]  # this window's units, in order
      pad = wu - units.size
      slots.append(np.concatenate([units + unit_offset, np.full(pad, -1)]))
      slot_windows.append(
        np.concatenate(
          [np.full(units.size, win + window_offset), np.full(pad, -1)]
        )
      )
      slot_frames.append(
        np.concatenate([frame[units] + frame_offset, np.full(pad, -1)])
      )
    positions.append(pos)
    unit_offset += order.size
    window_offset += int(window.max()) + 1
    frame_offset += int(t)
  cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)
  return (
    cat(slots),
    cat(slot_windows),
    cat(slot_frames),
    np.concatenate(positions) if positions else np.zeros((0, 2)),
  )


def required_patches(
  grid_thw: Sequence[Sequence[int]], cfg: QwenVisionConfig
) -> int:
  """Patch slots the visuals need in the window-aligned layout."""
  wu = cfg.merger_window**2
  total = 0
  for t, h, w in grid_thw:
    lh, lw = int(h) // cfg.spatial_merge_size, int(w) // cfg.spatial_merge_size
    total += int(t) * -(-lh // cfg.merger_window) * -(-lw // cfg.merger_window)
  return total * wu * cfg.merge_unit


def vision_metadata(
  grid_thw: Sequence[Sequence[int]],
  cfg: QwenVisionConfig,
  num_patches: int | None = None,
) -> dict[str, np.ndarray]:
  """Static-shape metadata for a packed sequence of visuals.

  On device the patches are reordered into *window-aligned slots*: every
  attention window of the reference (``get_window_index``) occupies its own
  block of ``window_tokens = merger_window^2 * merge_unit`` slots (64 for
  Qwen), padded at its end when the window is cut by the image border. The
  windowed blocks then attend within fixed blocks (a reshape, no mask over
  the whole sequence), and padding slots carry ``PAD_SEGMENT``. Slots map
  one-to-one onto the processor's patch rows: real windows take the real
  rows, padding slots take the padding rows after them, so ``pixel_values``
  must have ``num_patches`` rows (zeros after the real ones).

  Args:
    grid_thw: (t, h, w) patch grid of each visual, in packing order.
    cfg: vision config.
    num_patches: padded patch count, a multiple of ``window_tokens`` and at
      least :func:`required_patches`; default the latter.

  Returns:
    Dict of numpy arrays (M = num_patches / merge_unit merged tokens):
      ``window_index`` int32[M]: processor unit of each slot unit;
      ``reverse_index`` int32[M]: its inverse;
      ``positions`` int32[N, 2]: (row, col) per patch, processor order;
      ``window_segment_ids``, ``full_segment_ids`` int32[N]: window and
        frame ids per slot (``PAD_SEGMENT`` for padding);
      ``merged_mask`` bool[M]: True for real merged tokens (processor
        order, they come first).
  """
  unit = cfg.merge_unit
  block = cfg.merger_window**2 * unit
  need = required_patches(grid_thw, cfg)
  n = need if num_patches is None else int(num_patches)
  if n < need or n % block:
    raise ValueError(
      f"num_patches={n} must be a multiple of {block} (one window) and at "
      f"least the {need} window-aligned slots of grids {list(grid_thw)}."
    )
  slots, slot_window, slot_frame, pos = _slot_layout(grid_thw, cfg)
  m = n // unit
  m_real = int(np.sum(slots >= 0))
  tail = m - slots.size
  slots = np.concatenate([slots, np.full(tail, -1)])
  slot_window = np.concatenate([slot_window, np.full(tail, -1)])
  slot_frame = np.concatenate([slot_frame, np.full(tail, -1)])
  # Padding slots take the padding rows (processor units m_real.. m-1).
  window_index = slots.copy()
  window_index[slots < 0] = np.arange(m_real, m)
  pos = np.concatenate([pos, np.zeros((n - pos.shape[0], 2), np.int64)])
  return {
    "window_index": window_index.astype(np.int32),
    "reverse_index": np.argsort(window_index).astype(np.int32),
    "positions": pos.astype(np.int32),
    "window_segment_ids": np.repeat(
      np.where(slots < 0, PAD_SEGMENT, slot_window), unit
    ).astype(np.int32),
    "full_segment_ids": np.repeat(
      np.where(slots < 0, PAD_SEGMENT, slot_frame), unit
    ).astype(np.int32),
    "merged_mask": np.arange(m) < m_real,
  }


# ---------------------------------------------------------------------------
# Modules.


def vision_rope_cos_sin(
  positions: jax.Array, head_dim: int, theta: float
) -> tuple[jax.Array, jax.Array]:
  """2-D rotate-half tables: float32[..., N, head_dim] from int[..., N, 2].

  Row and column share the frequencies ``theta^(-2j/(head_dim/2))``; the
  angle vector is ``[row * f, col * f]`` repeated twice
  (``Qwen2_5_VLVisionRotaryEmbedding``).
  """
  inv_freq = rotary_inv_freq(head_dim // 2, theta)
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [...,N,2,F]
  angles = angles.reshape(angles.shape[:-2] + (-1,))
  emb = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def kiwi_encoder_pixels(pixel_values: jax.Array) -> jax.Array:
  """Pixel values as Kiwi-Edit's MLLM encoder hands them to the tower.

  ``QwenVLMLLMEncoder.forward`` casts the processor's output to bf16
  (``inputs.to(device, dtype=torch.bfloat16)``) whatever the model's
  dtype, and the tower then casts them to its own; so a float32 run sees
  bf16-rounded pixels too. (The plain Qwen2.5-VL forward does not round.)

  Args:
    pixel_values: float[..., patch_dim].

  Returns:
    The values rounded to bf16, in their own dtype.
  """
  pixel_values = jnp.asarray(pixel_values)
  return pixel_values.astype(jnp.bfloat16).astype(pixel_values.dtype)


class VisionAttention(nnx.Module):
  """Fused ``qkv`` projection, 2-D RoPE, segment-masked attention, ``proj``."""

  def __init__(
    self,
    cfg: QwenVisionConfig,
    *,
    dtype,
    param_dtype,
    attention: str | None,
    rngs: nnx.Rngs,
  ):
    d = cfg.hidden_size
    self.num_heads = cfg.num_heads
    self.attention = attention
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = Dense(d, 3 * d, kernel_axes=("embed", "heads"), **kw)
    self.proj = Dense(d, d, kernel_axes=("heads", "embed"), **kw)

  def __call__(self, x, cos, sin, segment_ids, block: int | None = None):
    """Attention within segments.

    Args:
      x: float[B, N, D].
      cos, sin: float[B, N, head_dim] rotary tables.
      segment_ids: int[B, N]; tokens attend within their segment.
      block: if set, segments never cross multiples of ``block`` (the
        window-aligned layout), so attention runs on [B * N / block, block]
        blocks instead of one masked [N, N] problem.
    """
    b, n, d = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q = apply_rotary_half(q, cos, sin)
    k = apply_rotary_half(k, cos, sin)
    q = sharding.constrain(q, ("act_batch", "act_seq", "act_heads", None))
    impl = self.attention
    if block:
      split = lambda a: a.reshape((b * n // block, block) + a.shape[2:])
      q, k, v, segment_ids = split(q), split(k), split(v), split(segment_ids)
    elif n > _DENSE_LIMIT and (
      impl == "xla"
      or (
        impl is None
        and choose_implementation(q, k, segment_ids=segment_ids) == "xla"
      )
    ):
      impl = "chunked"  # the masked [N, N] logits would not fit
    out = dot_product_attention(
      q, k, v, segment_ids=segment_ids, implementation=impl
    )
    return self.proj(out.reshape(b, n, d))


class VisionBlock(nnx.Module):
  """Pre-norm block: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``."""

  def __init__(
    self,
    cfg: QwenVisionConfig,
    *,
    dtype,
    param_dtype,
    attention,
    rngs: nnx.Rngs,
  ):
    d = cfg.hidden_size
    self.norm1 = RMSNorm(d, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
    self.norm2 = RMSNorm(d, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
    self.attn = VisionAttention(
      cfg, dtype=dtype, param_dtype=param_dtype, attention=attention, rngs=rngs
    )
    self.mlp = SwiGLU(
      d,
      cfg.intermediate_size,
      use_bias=True,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )

  def __call__(self, x, cos, sin, segment_ids, block=None):
    x = x + self.attn(self.norm1(x), cos, sin, segment_ids, block)
    x = x + self.mlp(self.norm2(x))
    return sharding.constrain(x, ("act_batch", "act_seq", "act_embed"))


class PatchMerger(nnx.Module):
  """RMSNorm, group ``merge_unit`` patches, Linear -> GELU(exact) -> Linear."""

  def __init__(
    self, cfg: QwenVisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs
  ):
    d, wide = cfg.hidden_size, cfg.hidden_size * cfg.merge_unit
    self.ln_q = RMSNorm(d, eps=1e-6, param_dtype=param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = Dense(wide, wide, kernel_axes=("embed_in", "mlp"), **kw)
    self.fc2 = Dense(
      wide, cfg.out_hidden_size, kernel_axes=("mlp", "embed"), **kw
    )

  def __call__(self, x):
    """x: float[B, N, D] (window order) -> float[B, N / unit, out]."""
    b, n, d = x.shape
    h = self.ln_q(x).reshape(
      b, n * d // self.fc1.in_features, self.fc1.in_features
    )
    return self.fc2(jax.nn.gelu(self.fc1(h), approximate=False))


class VisionTower(nnx.Module):
  """Patch embedding, 2-D RoPE, windowed/full blocks, 2x2 patch merger."""

  def __init__(self, cfg: Qwen25VLConfig, *, rngs: nnx.Rngs):
    v = cfg.vision
    self.cfg = v
    self.remat = cfg.remat
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    # The reference's Conv3d with kernel == stride == patch is a Dense over
    # the flattened (C, T, P, P) patch the processor already produced.
    self.patch_embed = Dense(
      v.patch_dim,
      v.hidden_size,
      use_bias=False,
      kernel_axes=(None, "embed"),
      rngs=rngs,
      **kw,
    )
    self.blocks = nnx.List(
      [
        VisionBlock(v, attention=cfg.attention, rngs=rngs, **kw)
        for _ in range(v.depth)
      ]
    )
    self.merger = PatchMerger(v, rngs=rngs, **kw)

  def __call__(
    self, pixel_values: jax.Array, meta: dict[str, jax.Array]
  ) -> jax.Array:
    """Encodes a packed, padded sequence of patches.

    Args:
      pixel_values: float[B, N, patch_dim] (processor order, see
        ``processing.patchify``).
      meta: :func:`vision_metadata` arrays with a leading batch axis.

    Returns:
      float[B, N / merge_unit, out_hidden_size] merged tokens in the
      processor's order (padding rows at the end are garbage; see
      ``merged_mask``).
    """
    v = self.cfg
    b, n, _ = pixel_values.shape
    unit = v.merge_unit

    def to_window_order(x):
      x = x.reshape(b, n // unit, unit, -1)
      x = jnp.take_along_axis(x, meta["window_index"][:, :, None, None], 1)
      return x.reshape(b, n, -1)

    x = self.patch_embed(pixel_values)
    x = sharding.constrain(
      to_window_order(x), ("act_batch", "act_seq", "act_embed")
    )
    cos, sin = vision_rope_cos_sin(meta["positions"], v.head_dim, v.rope_theta)
    cos, sin = to_window_order(cos), to_window_order(sin)
    window_tokens = v.merger_window**2 * unit
    for i, blk in enumerate(self.blocks):
      if i in v.fullatt_block_indexes:
        args = (meta["full_segment_ids"], None)
      else:
        args = (meta["window_segment_ids"], window_tokens)
      if self.remat:
        x = remat_call(blk, x, cos, sin, *args)
      else:
        x = blk(x, cos, sin, *args)
    merged = self.merger(x)
    return jnp.take_along_axis(merged, meta["reverse_index"][:, :, None], 1)
