"""Matmul FLOPs of the Wan DiT forward (``models/dit``), from shapes.

With ``B`` samples, ``S = N + R`` self-attention tokens (``N`` video
tokens, ``R`` reference tokens; tokens = latents / ``patch_size``), ``L``
context rows, width ``D``, FFN width ``F``, ``P_in`` / ``P_out`` patch
features and ``Tt`` timestep rows (1, or ``S`` per token), one forward is

  patch embedding       2 B N P_in D   (+ the same for ``vae_condition``)
  reference embedding   2 B R P_in D
  time embedding        2 B Tt (freq_dim D + D D + 6 D D)
  per block (x layers):
    self-attn q k v o   4 x 2 B S D D
    self-attn Q K^T     2 B S S D      (heads x head_dim = D)
    self-attn P V       2 B S S D
    cross-attn q o      2 x 2 B S D D
    cross-attn k v      2 x 2 B L D D
    cross-attn QK^T PV  2 x 2 B S L D
    FFN                 2 x 2 B S D F
    LoRA (rank r)       2 B rows r (in + out) per adapted linear
  head                  2 B N D P_out

The modulation (shift / scale / gate), norms, RoPE and the timestep
sinusoid are elementwise and not counted. At 5B size and 704 x 1280 x 81
frames (21 x 44 x 80 latents, S = 18,480, L = 512) the forward is 290.5
TFLOP per sample, 43 % of it in the self-attention products
(``docs/flops.md``). Backward and remat: :mod:`kiwi_jax.flops.terms`.
"""

from __future__ import annotations

import functools
import math

from kiwi_jax.flops.terms import (
  FlopCount,
  TermBuilder,
  Trained,
  recompute_filter,
  trained_by_regex,
)
from kiwi_jax.models.dit.config import WanDiTConfig


def dit_tokens(cfg: WanDiTConfig, latent_grid: tuple[int, int, int]) -> int:
  """Tokens of a ``(t, h, w)`` latent grid: ``prod(grid / patch_size)``."""
  for size, patch in zip(latent_grid, cfg.patch_size):
    if size % patch:
      raise ValueError(
        f"latent grid {tuple(latent_grid)} is not divisible "
        f"by the patch size {cfg.patch_size}."
      )
  return math.prod(s // p for s, p in zip(latent_grid, cfg.patch_size))


def dit_flops(
  cfg: WanDiTConfig,
  *,
  batch: int,
  latent_grid: tuple[int, int, int],
  context_len: int,
  trained: Trained | None = None,
  **kwargs,
) -> FlopCount:
  """Matmul FLOPs of one :class:`~kiwi_jax.models.dit.WanDiT` call.

  Args:
    cfg, batch, latent_grid, context_len: see :func:`add_dit_terms`.
    trained: which parameter paths train (default: every parameter).
    **kwargs: the other arguments of :func:`add_dit_terms`.

  Returns:
    the :class:`FlopCount`; ``.forward`` is the forward pass,
    ``.train`` forward + backward and ``.hardware_train`` adds the
    recompute of ``cfg.remat_policy``.
  """
  builder = TermBuilder(trained or trained_by_regex())
  add_dit_terms(
    builder,
    cfg,
    batch=batch,
    latent_grid=latent_grid,
    context_len=context_len,
    **kwargs,
  )
  return builder.count()


def add_dit_terms(
  b: TermBuilder,
  cfg: WanDiTConfig,
  *,
  batch: int,
  latent_grid: tuple[int, int, int],
  context_len: int,
  ref_frames: int = 0,
  source: bool = False,
  per_token_timestep: bool = False,
  context_is_text: bool = False,
  context_grad: bool = False,
  prefix: str = "dit",
) -> bool:
  """Adds the DiT's products to ``b``.

  Args:
    cfg: the DiT config (``lora_rank`` and ``remat_policy`` are read).
    batch: samples ``B``.
    latent_grid: ``(t, h, w)`` of the video latents.
    context_len: cross-attention context rows ``L``.
    ref_frames: reference latent frames (Kiwi reference mode: 1).
    source: whether ``source_latents`` are injected (``vae_condition``).
    per_token_timestep: a timestep per token (Wan2.2 TI2V) rather than one
      per sample.
    context_is_text: the stock text path (``text_embedding`` on ``L``
      rows of ``text_dim`` features).
    context_grad: whether the context needs a gradient (a trained
      connector upstream).
    prefix: the DiT's path inside the trained model (``"dit"`` in
      :class:`~kiwi_jax.models.kiwi.KiwiEdit`).

  Returns:
    whether the velocity needs a gradient.
  """
  trained_fn = b.trained
  d = cfg.dim
  n_video = batch * dit_tokens(cfg, latent_grid)
  n_ref = batch * dit_tokens(cfg, (ref_frames,) + tuple(latent_grid[1:]))
  seq = n_video + n_ref  # B * S
  ctx = batch * context_len

  x_grad = b.dense(
    f"{prefix}/patch_embedding/proj", n_video, cfg.patch_features, d, False
  )
  if source:
    x_grad |= b.dense(
      f"{prefix}/vae_condition/patch_embedding/proj",
      n_video,
      cfg.patch_features,
      d,
      False,
    )
  if n_ref:
    x_grad |= b.dense(
      f"{prefix}/ref_vae_condition/patch_embedding/proj",
      n_ref,
      cfg.patch_features,
      d,
      False,
    )

  time_rows = seq if per_token_timestep else batch
  t_grad = b.dense(
    f"{prefix}/time_embedding/fc1", time_rows, cfg.freq_dim, d, False
  )
  t_emb_grad = b.dense(f"{prefix}/time_embedding/fc2", time_rows, d, d, t_grad)
  t_mod_grad = b.dense(
    f"{prefix}/time_projection", time_rows, d, 6 * d, t_emb_grad
  )

  ctx_grad = context_grad
  if context_is_text:
    h = b.dense(f"{prefix}/text_embedding/fc1", ctx, cfg.text_dim, d, ctx_grad)
    ctx_grad = b.dense(f"{prefix}/text_embedding/fc2", ctx, d, d, h)

  blocks = f"{prefix}/blocks"
  mod_grad = t_mod_grad or trained_fn(f"{blocks}/modulation")
  block = functools.partial(
    _add_block,
    cfg=cfg,
    blocks=blocks,
    seq=seq,
    ctx=ctx,
    batch=batch,
    context_len=context_len,
    mod_grad=mod_grad,
    ctx_grad=ctx_grad,
  )
  # The blocks run under one lax.scan: every layer runs the same backward,
  # so the first layer computes the input gradients the later ones need
  # (the carry's), even where its own input needs none.
  x_grad = x_grad or block(TermBuilder(trained_fn), x_grad)
  outer_recompute = b.recomputed
  b.recomputed = recompute_filter(cfg.remat_policy)
  for _ in range(cfg.num_layers):
    out_grad = block(b, x_grad)
  b.recomputed = outer_recompute
  x_grad = out_grad

  head_grad = x_grad or t_emb_grad or trained_fn(f"{prefix}/head/modulation")
  return b.dense(
    f"{prefix}/head/proj", n_video, d, cfg.out_patch_features, head_grad
  )


def _add_block(
  b: TermBuilder,
  x_grad: bool,
  *,
  cfg: WanDiTConfig,
  blocks: str,
  seq: int,
  ctx: int,
  batch: int,
  context_len: int,
  mod_grad: bool,
  ctx_grad: bool,
) -> bool:
  """One :class:`~kiwi_jax.models.dit.blocks.WanBlock`; returns whether
  its output needs a gradient."""
  d, r, trained = cfg.dim, cfg.lora_rank, b.trained
  heads = batch * cfg.num_heads
  per_sample_seq = seq // batch
  # Self-attention on the modulated tokens.
  y_grad = x_grad or mod_grad
  att = f"{blocks}/self_attn"
  q, k = (
    b.dense(f"{att}/{n}", seq, d, d, y_grad, r)
    or trained(f"{att}/norm_{n}/weight")
    for n in "qk"
  )
  v = b.dense(f"{att}/v", seq, d, d, y_grad, r)
  out = b.attention(
    att, heads, per_sample_seq * per_sample_seq, cfg.head_dim, q, k, v
  )
  x_grad |= b.dense(f"{att}/o", seq, d, d, out, r) or mod_grad
  # Cross-attention on norm3(x), keys and values from the context.
  y_grad = x_grad or trained(f"{blocks}/norm3/weight")
  att = f"{blocks}/cross_attn"
  q = b.dense(f"{att}/q", seq, d, d, y_grad, r) or trained(
    f"{att}/norm_q/weight"
  )
  k = b.dense(f"{att}/k", ctx, d, d, ctx_grad, r) or trained(
    f"{att}/norm_k/weight"
  )
  v = b.dense(f"{att}/v", ctx, d, d, ctx_grad, r)
  out = b.attention(
    att, heads, per_sample_seq * context_len, cfg.head_dim, q, k, v
  )
  x_grad |= b.dense(f"{att}/o", seq, d, d, out, r)
  # Modulated FFN.
  y_grad = x_grad or mod_grad
  h = b.dense(f"{blocks}/ffn/fc1", seq, d, cfg.ffn_dim, y_grad, r)
  x_grad |= b.dense(f"{blocks}/ffn/fc2", seq, cfg.ffn_dim, d, h, r)
  return x_grad or mod_grad


__all__ = ["add_dit_terms", "dit_flops", "dit_tokens"]
