"""Matmul FLOPs of one Kiwi-Edit training micro-step, from shapes.

``KiwiTask.loss_fn`` runs Qwen2.5-VL on the prompt (+ source frames, +
reference image), the connectors on the read-out queries (and reference
tokens), and the DiT once on the noisy target latents. The Wan VAE that
encodes pixels into latents is frozen and gets no gradient; it is a
convolution stack, not in this formula (count it with
:func:`kiwi_jax.flops.jaxpr_matmul_flops` over ``KiwiEdit.encode_video``;
runs on cached latents skip it).
"""

from __future__ import annotations

from kiwi_jax.flops.dit import add_dit_terms
from kiwi_jax.flops.qwen import add_connector_terms, add_qwen_terms
from kiwi_jax.flops.terms import (
  FlopCount,
  TermBuilder,
  Trained,
  trained_by_regex,
)
from kiwi_jax.models.kiwi.config import KiwiEditConfig

_QUERY_PATHS = {
  "image": "image_queries",
  "video": "video_queries",
  "reference": "ref_queries",
}


def kiwi_flops(
  cfg: KiwiEditConfig,
  *,
  mode: str,
  batch: int,
  latent_grid: tuple[int, int, int],
  text_len: int,
  vision_patches: int = 0,
  vision_full_pairs: float | None = None,
  ref_tokens: int = 0,
  source: bool = True,
  trained: Trained | None = None,
  dense_attention: bool = False,
) -> FlopCount:
  """Matmul FLOPs of MLLM encode + connectors + one DiT call.

  Args:
    cfg: the Kiwi-Edit config.
    mode: "image", "video" or "reference".
    batch: samples.
    latent_grid: ``(t, h, w)`` of the target latents.
    text_len: MLLM tokens per sample (padded).
    vision_patches: MLLM patch slots per sample (0: no pixels).
    vision_full_pairs: see :func:`kiwi_jax.flops.qwen.add_qwen_terms`.
    ref_tokens: reference rows of the context (reference mode).
    source: whether the DiT gets the source latents (stage >= 2).
    trained: which parameter paths train (e.g.
      ``trained_by_regex(*stages.trainable_sets(stage))``; default all).
    dense_attention: count masked attention pairs too.

  Returns:
    the :class:`FlopCount` (``.forward``, ``.train``, ``.hardware_train``
    with the configs' remat).
  """
  b = TermBuilder(trained or trained_by_regex())
  queries = cfg.num_queries(mode)
  queries_grad = b.trained(f"{_QUERY_PATHS[mode]}/q")
  hidden_grad = add_qwen_terms(
    b,
    cfg.mllm,
    batch=batch,
    text_len=text_len,
    vision_patches=vision_patches,
    vision_full_pairs=vision_full_pairs,
    queries_grad=queries_grad,
    dense_attention=dense_attention,
  )
  common = dict(
    mllm_hidden=cfg.mllm_hidden, dim=cfg.dit.dim, input_grad=hidden_grad
  )
  context_grad = add_connector_terms(
    b, "connector", rows=batch * queries, **common
  )
  context_len = queries
  ref_frames = 0
  if mode == "reference":
    context_grad |= add_connector_terms(
      b, "ref_connector", rows=batch * ref_tokens, **common
    )
    context_len += ref_tokens
    ref_frames = cfg.dit.patch_size[0]
  add_dit_terms(
    b,
    cfg.dit,
    batch=batch,
    latent_grid=latent_grid,
    context_len=context_len,
    ref_frames=ref_frames,
    source=source,
    context_grad=context_grad,
  )
  return b.count()


__all__ = ["kiwi_flops"]
