"""A toy editing model with the pipeline's model interface, for tests.

``ToyEditor`` follows ``kiwi_jax.pipeline.model_api.EditModel`` at toy
size: a pooling "VAE" with Wan's factors (first frame alone, then groups
of 4 frames; 16 x 16 pixels per latent pixel), a token-embedding "MLLM",
and a velocity net with Kiwi's conditioning shape (sigma-scaled source
injection, reference tokens, cross-context, bf16 timestep sinusoid). Every
parameter carries logical axes, so the sharded pipeline can be tested on
fake devices. ``save_toy_editor`` writes a directory that
``EditPipeline.from_pretrained`` loads (``toy_editor.json`` +
``params.npz``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.layers import Dense, GeluTanhMLP, timestep_sinusoid
from kiwi_jax.utils import atomic

CONFIG_FILE = "toy_editor.json"
PARAMS_FILE = "params.npz"
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


class ToyEditor(nnx.Module):
  """Toy ``EditModel``; channels-last, float32."""

  def __init__(self, cfg: ToyEditorConfig = ToyEditorConfig(), *,
               rngs: nnx.Rngs):
    self.cfg = cfg
    self.latent_channels = cfg.latent_channels
    self.temporal_factor = cfg.temporal_factor
    self.spatial_factor = cfg.spatial_factor
    self.latent_dtype = jnp.float32
    c, d = cfg.latent_channels, cfg.dim
    self.token_embed = nnx.Param(sharding.param(
        nnx.initializers.normal(1.0), rngs.params(), (cfg.vocab, d),
        jnp.float32, ("vocab", "embed")))
    self.pixel_proj = Dense(3, d, kernel_axes=(None, "embed"), rngs=rngs)
    self.vae_in = Dense(3, c, kernel_axes=(None, None), rngs=rngs)
    self.vae_out = Dense(c, 3, kernel_axes=(None, None), rngs=rngs)
    self.in_proj = Dense(c, d, kernel_axes=("embed_in", "embed"), rngs=rngs)
    self.source_proj = Dense(c, d, kernel_axes=("embed_in", "embed"),
                             rngs=rngs)
    self.ref_proj = Dense(c, d, kernel_axes=("embed_in", "embed"), rngs=rngs)
    self.context_proj = Dense(d, d, kernel_axes=("embed_in", "embed"),
                              rngs=rngs)
    self.time_proj = Dense(d, d, kernel_axes=("embed_in", "embed"), rngs=rngs)
    self.mlp = GeluTanhMLP(d, cfg.hidden, d, rngs=rngs)
    self.out_proj = Dense(d, c, kernel_axes=("embed", None), rngs=rngs)

  def encode_conditions(self, mllm_inputs):
    """{input_ids int[B, L], pixel_mean float[B, 3]} -> context [B, L, d]."""
    ids = mllm_inputs["input_ids"]
    context = self.token_embed[...][ids]
    return context + self.pixel_proj(mllm_inputs["pixel_mean"])[:, None]

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

  def denoise_step(self, latents, timestep, sigma, conditions, *,
                   source_latents=None, ref_latents=None):
    """Velocity [B, t, h, w, c]; tokens sharded like the DiT's."""
    b, f, h, w, c = latents.shape
    x = self.in_proj(latents.reshape(b, f * h * w, c))
    if source_latents is not None:
      src = self.source_proj(source_latents.reshape(b, f * h * w, c))
      x = x + sigma.astype(jnp.float32)[:, None, None] * src
    s = timestep_sinusoid(timestep.astype(jnp.float32), self.cfg.dim)
    x = x + self.time_proj(s)[:, None]
    x = x + self.context_proj(conditions).mean(1, keepdims=True)
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
    ids = [int(hashlib.md5(w.encode()).hexdigest(), 16) % self.cfg.vocab
           for w in words][:self.cfg.context_len]
    ids += [0] * (self.cfg.context_len - len(ids))
    mean = frames.reshape(-1, 3).mean(0) / 127.5 - 1
    if ref_image is not None:
      mean = (mean + ref_image.reshape(-1, 3).mean(0) / 127.5 - 1) / 2
    return {"input_ids": np.asarray([ids], np.int32),
            "pixel_mean": np.asarray([mean], np.float32)}, {}


def save_toy_editor(directory, cfg: ToyEditorConfig = ToyEditorConfig(),
                    seed: int = 0) -> pathlib.Path:
  """Writes a random toy editor that ``EditPipeline.from_pretrained``
  loads."""
  directory = pathlib.Path(os.fspath(directory))
  directory.mkdir(parents=True, exist_ok=True)
  model = ToyEditor(cfg, rngs=nnx.Rngs(seed))
  flat = _flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  with atomic.atomic_path(directory / PARAMS_FILE) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **{k: np.asarray(v) for k, v in flat.items()})
  with atomic.atomic_path(directory / CONFIG_FILE) as tmp:
    tmp.write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
  return directory


def is_toy_editor_dir(directory) -> bool:
  return (pathlib.Path(os.fspath(directory)) / CONFIG_FILE).is_file()


def load_toy_editor(directory) -> tuple[ToyEditor, ToyProcessor]:
  """Loads a directory written by :func:`save_toy_editor`."""
  directory = pathlib.Path(os.fspath(directory))
  cfg = ToyEditorConfig(**json.loads((directory / CONFIG_FILE).read_text()))
  model = nnx.eval_shape(lambda: ToyEditor(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  pure = nnx.to_pure_dict(state)
  with np.load(directory / PARAMS_FILE) as stored:
    missing = sorted(set(_flatten(pure)) - set(stored.files))
    if missing:
      raise ValueError(f"{directory / PARAMS_FILE}: missing {missing}.")
    pure = _unflatten_into(pure, {k: stored[k] for k in stored.files})
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state), ToyProcessor(cfg)


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "/"))
    else:
      out[name] = value
  return out


def _unflatten_into(tree, flat, prefix=""):
  return {key: (_unflatten_into(value, flat, f"{prefix}{key}/")
                if isinstance(value, dict)
                else jnp.asarray(flat[f"{prefix}{key}"]))
          for key, value in tree.items()}
