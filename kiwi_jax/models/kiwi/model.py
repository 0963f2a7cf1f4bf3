"""Kiwi-Edit: Qwen2.5-VL condition encoder + connectors + Wan DiT + Wan VAE.

Data flow (reference §2 and 3)::

  prompt ids (+ source frames, + ref image) --Qwen2.5-VL, queries in place-->
  last hidden states --readout--> connector (+ ref_connector on the ref
  image's tokens, in front) --> context
  noisy latents (+ sigma * vae_condition(source latents))
                (+ ref_vae_condition(ref latent) tokens) --DiT--> velocity

The methods are the pieces a pipeline and a trainer call under ``jit``;
:func:`pure` turns any of them into a function of an explicit state pytree
(``nnx.split`` once, ``nnx.merge`` inside the traced function).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax.diffusion import step_cache
from kiwi_jax.models.dit import WanDiT
from kiwi_jax.models.kiwi import readout
from kiwi_jax.models.kiwi.codec import PixelUnshuffle
from kiwi_jax.models.kiwi.config import MODES, KiwiEditConfig
from kiwi_jax.models.kiwi.connectors import Connector, LearnableQueries
from kiwi_jax.models.mllm import Qwen25VL
from kiwi_jax.models.mllm.vision import kiwi_encoder_pixels
from kiwi_jax.models.vae import WanVAE
from kiwi_jax.utils.rngs import cheap_draws


@flax.struct.dataclass
class KiwiConditions:
  """What the MLLM side hands to the DiT.

  Attributes:
    context: float[B, L, dim] cross-attention context; in reference mode
      ``[ref_connector(ref tokens) (ref_tokens rows) | connector(queries)]``.
    mask: bool[B, L], false on reference rows past a row's token count
      (all true when ``ref_tokens`` is the exact count, the reference case);
      pass it to :meth:`KiwiEdit.denoise_step` as ``context_mask``.
  """

  context: jax.Array
  mask: jax.Array


class KiwiEdit(nnx.Module):
  """The full Kiwi-Edit model.

  Children: ``mllm`` (:class:`Qwen25VL`), ``image_queries`` /
  ``video_queries`` / ``ref_queries`` (:class:`LearnableQueries` or None),
  ``connector``, ``ref_connector`` (:class:`Connector` or None), ``dit``
  (:class:`WanDiT`, holding ``vae_condition`` / ``ref_vae_condition``) and
  ``vae`` (:class:`WanVAE`, or :class:`codec.PixelUnshuffle` when
  ``cfg.codec`` is ``"pixel_unshuffle"``).
  """

  @cheap_draws
  def __init__(self, cfg: KiwiEditConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    hidden, dim = cfg.mllm_hidden, cfg.dit.dim
    pdt = cfg.mllm.param_dtype
    self.mllm = Qwen25VL(cfg.mllm, rngs=rngs)

    def queries(n):
      return (
        LearnableQueries(n, hidden, param_dtype=pdt, rngs=rngs) if n else None
      )

    self.image_queries = queries(cfg.num_image_queries)
    self.video_queries = queries(cfg.num_video_queries)
    self.ref_queries = queries(cfg.num_ref_queries)
    kw = dict(dtype=cfg.dit.dtype, param_dtype=cfg.dit.param_dtype, rngs=rngs)
    self.connector = Connector(hidden, dim, **kw)
    self.ref_connector = (
      Connector(hidden, dim, **kw) if cfg.ref_connector else None
    )
    self.dit = WanDiT(cfg.dit, rngs=rngs)
    # The latent codec (``cfg.codec``): the Wan VAE or a parameter-free
    # stand-in with the same encode/decode methods.
    self.vae = (
      WanVAE(cfg.vae, rngs=rngs)
      if cfg.codec == "wan_vae"
      else PixelUnshuffle(cfg.unshuffle_factor)
    )

  # -- MLLM side.

  def queries(self, mode: str) -> LearnableQueries:
    """The query set of ``mode``; a clear error if this model lacks it."""
    if mode not in MODES:
      raise ValueError(f"Unknown mode {mode!r}; choose one of {MODES}.")
    q = {
      "image": self.image_queries,
      "video": self.video_queries,
      "reference": self.ref_queries,
    }[mode]
    if q is None:
      raise ValueError(
        f"This Kiwi-Edit model has no {mode} queries (its checkpoint "
        f"predates that training stage); modes: {self.cfg.modes()}."
      )
    return q

  def mllm_hidden_states(
    self, inputs: Mapping[str, Any], mode: str
  ) -> jax.Array:
    """float[B, T, hidden]: Qwen2.5-VL's last hidden states (after the
    final norm) with the mode's queries in place of the placeholders.

    Args:
      inputs: ``input_ids`` int[B, T], ``position_ids`` int[3, B, T], and
        optionally ``segment_ids`` int[B, T] (1 on tokens, 0 on padding),
        ``pixel_values``
        float[B, N, 1176], ``vision_meta`` (see :class:`Qwen25VL`); e.g.
        ``mllm.bucketing.model_inputs(collate(...))``.
      mode: "image", "video" or "reference".
    """
    q = self.queries(mode)(self.cfg.mllm.dtype)
    pixels = inputs.get("pixel_values")
    if pixels is not None:  # bf16 into the tower, as the reference's encoder
      pixels = kiwi_encoder_pixels(pixels)
    out = self.mllm(
      inputs["input_ids"],
      inputs["position_ids"],
      pixel_values=pixels,
      vision_meta=inputs.get("vision_meta"),
      queries=q,
      segment_ids=_token_mask(inputs),
    )
    return out.last_hidden_state

  def conditions_from_hidden(
    self,
    hidden: jax.Array,
    input_ids: jax.Array,
    mode: str,
    *,
    attention_mask: jax.Array | None = None,
    ref_tokens: int = 0,
  ) -> KiwiConditions:
    """Readout + connectors (reference §2.4) on given MLLM hidden states.

    Args:
      hidden: float[B, T, hidden].
      input_ids: int[B, T].
      mode: "image", "video" or "reference".
      attention_mask: int[B, T] for padded batches.
      ref_tokens: static number of reference-image rows (reference mode);
        pass the exact count (``readout.host_reference_count``) to get the
        reference's context; a larger value pads and masks.
    """
    cfg = self.cfg
    n = self.queries(mode).num_queries
    feats = readout.read_queries(
      hidden,
      input_ids,
      n,
      query_token_id=cfg.mllm.query_token_id,
      attention_mask=attention_mask,
      mode=cfg.readout,
    )
    context = self.connector(feats)
    mask = jnp.ones(context.shape[:2], bool)
    if mode != "reference":
      return KiwiConditions(context=context, mask=mask)
    if self.ref_connector is None:
      raise ValueError(
        "Reference mode needs ref_connector, which this model does not have."
      )
    if not 0 < ref_tokens <= cfg.max_ref_tokens:
      raise ValueError(
        f"ref_tokens must be in 1..{cfg.max_ref_tokens} "
        f"(max_ref_tokens), got {ref_tokens}."
      )
    ref_feats, ref_mask = readout.read_reference(
      hidden,
      input_ids,
      ref_tokens,
      vision_start_id=cfg.mllm.vision_start_token_id,
      vision_end_id=cfg.mllm.vision_end_token_id,
      attention_mask=attention_mask,
    )
    ref_context = self.ref_connector(ref_feats)
    return KiwiConditions(
      context=jnp.concatenate([ref_context, context], axis=1),
      mask=jnp.concatenate([ref_mask, mask], axis=1),
    )

  def encode_conditions(
    self, inputs: Mapping[str, Any], mode: str, *, ref_tokens: int = 0
  ) -> KiwiConditions:
    """MLLM inputs -> DiT context (``QwenVLMLLMEncoder.forward``)."""
    hidden = self.mllm_hidden_states(inputs, mode)
    return self.conditions_from_hidden(
      hidden,
      inputs["input_ids"],
      mode,
      attention_mask=_token_mask(inputs),
      ref_tokens=ref_tokens,
    )

  # -- DiT and VAE.

  def denoise_step(
    self,
    latents: jax.Array,
    timestep: jax.Array,
    context: jax.Array,
    *,
    source_latents: jax.Array | None = None,
    sigma: jax.Array | None = None,
    ref_latents: jax.Array | None = None,
    context_mask: jax.Array | None = None,
  ) -> jax.Array:
    """Velocity float[B, t, h, w, c] at one timestep (``model_fn_wan_video``).

    Args:
      latents: float[B, t, h, w, c] noisy latents.
      timestep: float[B] (bf16-rounded as the reference feeds it).
      context: float[B, L, dim] from :meth:`encode_conditions`.
      source_latents: float[B, t, h, w, c] source-video latents.
      sigma: float[B] schedule sigma of ``timestep`` (needed with
        ``source_latents``).
      ref_latents: float[B, 1, h, w, c] reference-image latent.
      context_mask: bool[B, L] (``KiwiConditions.mask``): needed when a
        batch pads reference rows (different reference sizes per sample).
    """
    return self.dit(
      latents,
      timestep,
      context,
      source_latents=source_latents,
      sigma=sigma,
      ref_latents=ref_latents,
      context_mask=context_mask,
    ).velocity

  def split_denoise_step(
    self,
    latents: jax.Array,
    timestep: jax.Array,
    context: jax.Array,
    *,
    source_latents: jax.Array | None = None,
    sigma: jax.Array | None = None,
    ref_latents: jax.Array | None = None,
    context_mask: jax.Array | None = None,
  ) -> step_cache.SplitStep:
    """:meth:`denoise_step` cut around the DiT's blocks, for the step
    cache (``kiwi_jax.diffusion.step_cache``); the same arguments."""
    dit = self.dit
    parts = dit.embed(
      latents,
      timestep,
      context,
      source_latents=source_latents,
      sigma=sigma,
      ref_latents=ref_latents,
      context_mask=context_mask,
    )
    return step_cache.SplitStep(
      tokens=parts.tokens,
      indicator=dit.first_block_input(parts),
      blocks=lambda x: dit.run_blocks(parts, x),
      head=lambda x: dit.unembed(parts, x).velocity,
      num_blocks=dit.cfg.num_layers,
    )

  def encode_video(self, video: jax.Array) -> jax.Array:
    """float[B, T, H, W, 3] in [-1, 1] -> normalised latents."""
    return self.vae.encode(video)

  def decode_latents(self, latents: jax.Array, clamp: bool = True) -> jax.Array:
    """Normalised latents -> float[B, T, H, W, 3] in [-1, 1]."""
    return self.vae.decode(latents, clamp=clamp)


def _token_mask(inputs: Mapping[str, Any]) -> jax.Array | None:
  """1 on real tokens (``KiwiProcessor.model_inputs``' ``segment_ids``)."""
  return inputs.get("segment_ids")


@functools.lru_cache(maxsize=8)
def abstract_kiwi(cfg: KiwiEditConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """``nnx.split`` of the shape-only model (cached: tracing the
  initialisers of a full model takes seconds)."""
  return nnx.split(nnx.eval_shape(lambda: KiwiEdit(cfg, rngs=nnx.Rngs(0))))


def pure(graphdef: nnx.GraphDef, method: str) -> Callable[..., Any]:
  """``fn(state, *args, **kwargs)`` calling ``KiwiEdit.<method>``.

  Example::

    graphdef, state = nnx.split(model)
    step = jax.jit(pure(graphdef, "denoise_step"))
    velocity = step(state, latents, t, context)
  """
  if method.startswith("_") or not callable(getattr(KiwiEdit, method, None)):
    raise ValueError(f"KiwiEdit has no public method {method!r}.")

  def fn(state, *args, **kwargs):
    return getattr(nnx.merge(graphdef, state), method)(*args, **kwargs)

  fn.__name__ = method
  return fn


__all__ = ["KiwiConditions", "KiwiEdit", "abstract_kiwi", "pure"]
