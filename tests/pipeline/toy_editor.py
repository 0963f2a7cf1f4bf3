"""A toy editing model with KiwiEdit's methods, for the pipeline's tests.

``ToyEditor`` has the methods ``EditPipeline`` calls on a ``KiwiEdit``
(``encode_conditions``, ``encode_video``, ``decode_latents``,
``denoise_step``, with KiwiEdit's signatures) and a ``cfg`` with the latent
geometry, at toy size: a pooling "VAE" with Wan's factors (first frame
alone, then groups of 4 frames; 16 x 16 pixels per latent pixel), a
token-embedding "MLLM", and a velocity net with Kiwi's conditioning shape
(sigma-scaled source injection, reference tokens, cross-context, bf16
timestep sinusoid). Every parameter carries logical axes, so the sharded
pipeline can be tested on fake devices. Build one with
:func:`make_toy_editor`; library code never imports it.
"""

from __future__ import annotations

import dataclasses
import hashlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.layers import Dense, GeluTanhMLP, timestep_sinusoid
from kiwi_jax.models.kiwi import KiwiConditions

TOKENS = ("act_batch", "act_seq", "act_embed")


@dataclasses.dataclass(frozen=True)
class ToyEditorConfig:
  latent_channels: int = 4
  dim: int = 16
  hidden: int = 32
  vocab: int = 61
  context_len: int = 7
  temporal_factor: int = 4
  spatial_factor: int = 16
  codec: str = "toy"  # no tiled VAE runner
  flow_shift: float = 5.0  # the schedule's sigma shift, as KiwiEditConfig

  # float32 latents and bf16 timesteps (the released runs' rounding).
  latent_dtype = jnp.float32
  timestep_dtype = jnp.bfloat16

  def modes(self) -> tuple[str, ...]:
    return ("image", "video", "reference")


class ToyEditor(nnx.Module):
  """Toy stand-in for ``KiwiEdit`` in ``EditPipeline``; channels-last,
  float32."""

  def __init__(
    self, cfg: ToyEditorConfig = ToyEditorConfig(), *, rngs: nnx.Rngs
  ):
    self.cfg = cfg
    self.latent_channels = cfg.latent_channels
    self.temporal_factor = cfg.temporal_factor
    self.spatial_factor = cfg.spatial_factor
    self.latent_dtype = jnp.float32
    c, d = cfg.latent_channels, cfg.dim
    self.token_embed = nnx.Param(
      sharding.param(
        nnx.initializers.normal(1.0),
        rngs.params(),
        (cfg.vocab, d),
        jnp.float32,
        ("vocab", "embed"),
      )
    )
    self.pixel_proj = Dense(3, d, kernel_axes=(None, "embed"), rngs=rngs)
    self.vae_in = Dense(3, c, kernel_axes=(None, None), rngs=rngs)
    self.vae_out = Dense(c, 3, kernel_axes=(None, None), rngs=rngs)
    self.in_proj = Dense(c, d, kernel_axes=("embed_in", "embed"), rngs=rngs)
    self.source_proj = Dense(c, d, kernel_axes=("embed_in", "embed"), rngs=rngs)
    self.ref_proj = Dense(c, d, kernel_axes=("embed_in", "embed"), rngs=rngs)
    self.context_proj = Dense(
      d, d, kernel_axes=("embed_in", "embed"), rngs=rngs
    )
    self.time_proj = Dense(d, d, kernel_axes=("embed_in", "embed"), rngs=rngs)
    self.mlp = GeluTanhMLP(d, cfg.hidden, d, rngs=rngs)
    self.out_proj = Dense(d, c, kernel_axes=("embed", None), rngs=rngs)

  def encode_conditions(self, mllm_inputs, mode=None, *, ref_tokens=0):
    """{input_ids int[B, L], pixel_mean float[B, 3]} -> conditions with
    the context [B, L, d]."""
    del mode, ref_tokens
    ids = mllm_inputs["input_ids"]
    context = self.token_embed[...][ids]
    context = context + self.pixel_proj(mllm_inputs["pixel_mean"])[:, None]
    return KiwiConditions(
      context=context, mask=jnp.ones(context.shape[:2], bool)
    )

  def encode_video(self, video):
    """float[B, T, H, W, 3] -> [B, (T-1)/4+1, H/16, W/16, c]."""
    b, t, h, w, _ = video.shape
    s, k = self.spatial_factor, self.temporal_factor
    pooled = video.reshape(b, t, h // s, s, w // s, s, 3).mean((3, 5))
    first = pooled[:, :1]
    rest = pooled[:, 1:].reshape(b, (t - 1) // k, k, h // s, w // s, 3)
    frames = jnp.concatenate([first, rest.mean(2)], axis=1)
    return self.vae_in(frames)

  def decode_latents(self, latents):
    """[B, t, h, w, c] -> float[B, 4(t-1)+1, 16h, 16w, 3]."""
    s, k = self.spatial_factor, self.temporal_factor
    x = jnp.tanh(self.vae_out(latents))
    x = jnp.repeat(jnp.repeat(x, s, axis=2), s, axis=3)
    return jnp.concatenate([x[:, :1], jnp.repeat(x[:, 1:], k, axis=1)], 1)

  def denoise_step(
    self,
    latents,
    timestep,
    context,
    *,
    source_latents=None,
    sigma=None,
    ref_latents=None,
    context_mask=None,
  ):
    """Velocity [B, t, h, w, c]; tokens sharded like the DiT's."""
    b, f, h, w, c = latents.shape
    x = self.in_proj(latents.reshape(b, f * h * w, c))
    if source_latents is not None:
      src = self.source_proj(source_latents.reshape(b, f * h * w, c))
      x = x + sigma.astype(jnp.float32)[:, None, None] * src
    s = timestep_sinusoid(timestep.astype(jnp.float32), self.cfg.dim)
    x = x + self.time_proj(s)[:, None]
    del context_mask
    x = x + self.context_proj(context).mean(1, keepdims=True)
    if ref_latents is not None:
      ref = self.ref_proj(ref_latents.reshape(b, -1, c))
      x = x + ref.mean(1, keepdims=True)
    x = sharding.constrain(x, TOKENS)
    x = x + self.mlp(x)
    x = sharding.constrain(x, TOKENS)
    return self.out_proj(x).reshape(b, f, h, w, c).astype(latents.dtype)


class ToyProcessor:
  """Host inputs of ``ToyEditor``: hashed words and the mean source (and
  reference) colour, batch 1."""

  def __init__(self, cfg: ToyEditorConfig = ToyEditorConfig()):
    self.cfg = cfg

  def __call__(self, instruction, *, frames, ref_image=None):
    words = instruction.split() or [""]
    ids = [
      int(hashlib.md5(w.encode()).hexdigest(), 16) % self.cfg.vocab
      for w in words
    ][: self.cfg.context_len]
    ids += [0] * (self.cfg.context_len - len(ids))
    mean = frames.reshape(-1, 3).mean(0) / 127.5 - 1
    if ref_image is not None:
      mean = (mean + ref_image.reshape(-1, 3).mean(0) / 127.5 - 1) / 2
    return {
      "input_ids": np.asarray([ids], np.int32),
      "pixel_mean": np.asarray([mean], np.float32),
    }, {}


def make_toy_editor(
  cfg: ToyEditorConfig = ToyEditorConfig(), seed: int = 0
) -> tuple[ToyEditor, ToyProcessor]:
  """A random toy editor and its processor (``EditPipeline(*...)``)."""
  return ToyEditor(cfg, rngs=nnx.Rngs(seed)), ToyProcessor(cfg)
