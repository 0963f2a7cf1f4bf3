"""Qwen2.5-VL as Kiwi-Edit runs it: vision tower + decoder + query hook.

Equivalent to the reference's patched ``Qwen2_5_VLModel.forward``
(``diffsynth/models/modeling_qwen2_5_vl.py``, reference §1.6):

1. token embeddings;
2. image features scattered into the ``<|image_pad|>`` rows, in order, then
   video features into the ``<|video_pad|>`` rows (``masked_scatter``);
3. the learnable queries replace the ``<|object_ref_start|>`` rows, in order;
4. the decoder with M-RoPE positions (``rope_index.mrope_position_ids``).

Shapes are static: the vision tower runs once over a packed, padded patch
sequence per batch row (images first, then videos, each in prompt order:
the order in which transformers concatenates them), and the scatter indices
are computed on device from ``input_ids`` with cumulative sums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from kiwi_jax.models.mllm.config import Qwen25VLConfig
from kiwi_jax.models.mllm.text import TextModel
from kiwi_jax.models.mllm.vision import VisionTower
from kiwi_jax.utils.rngs import cheap_draws


@struct.dataclass
class Qwen25VLOutput:
  """last_hidden_state: float[B, T, D] (after the final norm);
  hidden_states: float[L + 1, B, T, D] or None (transformers' tuple,
  stacked)."""

  last_hidden_state: jax.Array
  hidden_states: jax.Array | None = None


def _scatter_rows(embeds, mask, rows, offset=None):
  """Replaces ``embeds[b, t]`` where ``mask`` by ``rows[b, k]``, ``k`` being
  the running count of masked positions (plus ``offset[b]``)."""
  index = jnp.cumsum(mask, axis=1) - 1
  if offset is not None:
    index = index + offset[:, None]
  index = jnp.clip(index, 0, rows.shape[1] - 1)
  picked = jnp.take_along_axis(rows, index[..., None], axis=1)
  return jnp.where(mask[..., None], picked.astype(embeds.dtype), embeds)


class Qwen25VL(nnx.Module):
  """Qwen2.5-VL without ``lm_head``.

  Children: ``visual`` (:class:`VisionTower`) and ``language_model``
  (:class:`TextModel`), named like transformers v5's ``model.visual`` and
  ``model.language_model``.
  """

  @cheap_draws
  def __init__(self, cfg: Qwen25VLConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.visual = VisionTower(cfg, rngs=rngs)
    self.language_model = TextModel(cfg, rngs=rngs)

  def embed_inputs(
    self,
    input_ids: jax.Array,
    pixel_values: jax.Array | None = None,
    vision_meta: dict[str, jax.Array] | None = None,
    queries: jax.Array | None = None,
  ) -> jax.Array:
    """Token embeddings with visual features and queries in place.

    Args:
      input_ids: int[B, T].
      pixel_values: float[B, N, 1176] packed patches (images, then videos).
      vision_meta: ``vision.vision_metadata`` arrays, batched.
      queries: float[Q, D] or float[B, Q, D] learnable queries; row ``k``
        replaces the ``k``-th ``<|object_ref_start|>`` token. The caller
        guarantees exactly Q placeholders (``processing`` checks it).

    Returns:
      float[B, T, D].
    """
    cfg = self.cfg
    embeds = self.language_model.embed(input_ids)
    if pixel_values is not None:
      feats = self.visual(pixel_values, vision_meta)
      is_image = input_ids == cfg.image_token_id
      is_video = input_ids == cfg.video_token_id
      embeds = _scatter_rows(embeds, is_image, feats)
      embeds = _scatter_rows(
        embeds, is_video, feats, offset=jnp.sum(is_image, axis=1)
      )
    if queries is not None:
      if queries.ndim == 2:
        queries = jnp.broadcast_to(
          queries[None], (input_ids.shape[0],) + queries.shape
        )
      embeds = _scatter_rows(embeds, input_ids == cfg.query_token_id, queries)
    return embeds

  def __call__(
    self,
    input_ids: jax.Array,
    position_ids: jax.Array,
    pixel_values: jax.Array | None = None,
    vision_meta: dict[str, jax.Array] | None = None,
    queries: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    return_all_hidden_states: bool = False,
  ) -> Qwen25VLOutput:
    """Encodes a (padded) batch of prompts.

    Args:
      input_ids: int[B, T].
      position_ids: int[3, B, T] from ``rope_index.mrope_position_ids``.
      pixel_values, vision_meta, queries: see :meth:`embed_inputs`.
      segment_ids: optional int[B, T] (e.g. 1 for tokens, 0 for padding).
      return_all_hidden_states: also return every hidden state.

    Returns:
      :class:`Qwen25VLOutput`.
    """
    embeds = self.embed_inputs(input_ids, pixel_values, vision_meta, queries)
    last, hidden = self.language_model(
      embeds,
      position_ids,
      segment_ids,
      return_all_hidden_states=return_all_hidden_states,
    )
    return Qwen25VLOutput(last_hidden_state=last, hidden_states=hidden)
