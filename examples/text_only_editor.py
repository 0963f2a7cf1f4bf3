r"""A text-only video editor composed from kiwi_jax's parts.

  python examples/text_only_editor.py --steps 4

Your own conditioning (here: a token-embedding table, no MLLM) gives the
cross-attention context; the Wan DiT (``kiwi_jax.WanDiT``) predicts the
velocity with Kiwi's source-video injection (``source_condition``); the Wan
VAE (``kiwi_jax.WanVAE``) encodes the source and decodes the result; the
flow-matching sampler (``kiwi_jax.sample``) runs every Euler step as one
compiled program. Tiny configs and random weights, so it runs in seconds
on a CPU; swap in ``WanDiTConfig.from_variant("wan2.2-ti2v-5b", ...)`` and
converted weights for the real thing.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import kiwi_jax
from kiwi_jax.layers import Dense


class TextOnlyEditor(nnx.Module):
  """Token embeddings -> context; Wan DiT over Wan VAE latents."""

  def __init__(
    self,
    vocab: int,
    dit: kiwi_jax.WanDiTConfig,
    vae: kiwi_jax.WanVAEConfig,
    *,
    rngs: nnx.Rngs,
  ):
    self.embed = nnx.Embed(vocab, dit.dim, rngs=rngs)
    self.project = Dense(dit.dim, dit.dim, rngs=rngs)
    self.dit = kiwi_jax.WanDiT(dit, rngs=rngs)
    self.vae = kiwi_jax.WanVAE(vae, rngs=rngs)

  def context(self, token_ids: jax.Array) -> jax.Array:
    """int[B, L] -> float[B, L, dim]: the conditioning you design."""
    return self.project(self.embed(token_ids))


def velocity(graphdef, latents, timestep, sigma, step, state, context, source):
  """The sampler's velocity function (``kiwi_jax.diffusion.euler_loop``)."""
  del step
  model = nnx.merge(graphdef, state)
  batch = latents.shape[0]
  return model.dit(
    latents,
    jnp.full((batch,), timestep),
    context,
    source_latents=source,
    sigma=jnp.full((batch,), sigma),
  ).velocity


def build(seed: int = 0) -> TextOnlyEditor:
  dit = kiwi_jax.WanDiTConfig.from_variant(
    "tiny", in_channels=12, out_channels=12, source_condition=True
  )
  vae = kiwi_jax.WanVAEConfig.from_variant("wan2.2-tiny")
  return TextOnlyEditor(vocab=64, dit=dit, vae=vae, rngs=nnx.Rngs(seed))


def edit(
  model: TextOnlyEditor,
  video: np.ndarray,
  token_ids: np.ndarray,
  *,
  steps: int,
  seed: int = 0,
) -> np.ndarray:
  """float[1, T, H, W, 3] in [-1, 1] + int[1, L] -> the edited video."""
  graphdef, state = nnx.split(model)
  source = nnx.jit(lambda m, v: m.vae.encode(v))(model, jnp.asarray(video))
  context = nnx.jit(lambda m, t: m.context(t))(model, jnp.asarray(token_ids))
  noise = kiwi_jax.diffusion.initial_noise(seed, source.shape, jnp.float32)
  latents = kiwi_jax.sample(
    functools.partial(velocity, graphdef),
    noise,
    state,
    context,
    source,
    num_steps=steps,
    timestep_dtype=jnp.float32,
  )
  return np.asarray(nnx.jit(lambda m, z: m.vae.decode(z))(model, latents))


def main(argv=None, model: TextOnlyEditor | None = None) -> np.ndarray:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--tokens", type=int, nargs="+", default=[3, 14, 15])
  args = parser.parse_args(argv)
  model = model or build()
  video = np.random.default_rng(0).uniform(-1, 1, (1, 5, 32, 32, 3))
  out = edit(
    model, video.astype(np.float32), np.asarray([args.tokens]), steps=args.steps
  )
  print(
    f"edited video {out.shape}, values in [{out.min():.2f}, {out.max():.2f}]"
  )
  return out


if __name__ == "__main__":
  main()
