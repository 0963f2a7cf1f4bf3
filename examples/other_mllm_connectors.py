r"""Another MLLM's hidden states through Kiwi's connector into the Wan DiT.

  python examples/other_mllm_connectors.py --hidden 96 --steps 4

Kiwi-Edit reads Qwen2.5-VL's last hidden states at its learnable-query
positions and maps them to the DiT's width with a two-layer ``Connector``
(``kiwi_jax.Connector``, reference §2.4). Any encoder whose hidden states you
have (another MLLM, a text encoder) can take Qwen's place: build the
connector at that encoder's width and pass its output as the DiT's
cross-attention context. The hidden states here are random stand-ins of
width ``--hidden``; the connector's weights are moved off their zero init,
as training would, so the context matters.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import kiwi_jax
from kiwi_jax.testing.kiwi import perturbed_state


class HiddenStateEditor(nnx.Module):
  """Connector(other MLLM width -> DiT width) + Wan DiT."""

  def __init__(self, mllm_hidden: int, *, rngs: nnx.Rngs):
    dit = kiwi_jax.WanDiTConfig.from_variant(
      "tiny", in_channels=12, out_channels=12, source_condition=True
    )
    self.connector = kiwi_jax.Connector(mllm_hidden, dit.dim, rngs=rngs)
    self.dit = kiwi_jax.WanDiT(dit, rngs=rngs)


def velocity(graphdef, latents, timestep, sigma, step, state, hidden, source):
  del step
  model = nnx.merge(graphdef, state)
  batch = latents.shape[0]
  return model.dit(
    latents,
    jnp.full((batch,), timestep),
    model.connector(hidden),
    source_latents=source,
    sigma=jnp.full((batch,), sigma),
  ).velocity


def build(mllm_hidden: int) -> HiddenStateEditor:
  """Random weights, moved off the connector's zero init (as training
  would), so that the context matters."""
  model = HiddenStateEditor(mllm_hidden, rngs=nnx.Rngs(0))
  nnx.update(model, perturbed_state(model, 0.1))
  return model


def edit(
  model: HiddenStateEditor,
  hidden: jax.Array,
  source: jax.Array,
  *,
  steps: int,
  seed: int = 0,
) -> jax.Array:
  """hidden float[B, N, mllm_hidden], source latents [B, t, h, w, 12]."""
  graphdef, state = nnx.split(model)
  noise = kiwi_jax.diffusion.initial_noise(seed, source.shape, jnp.float32)
  return kiwi_jax.sample(
    functools.partial(velocity, graphdef),
    noise,
    state,
    hidden,
    source,
    num_steps=steps,
    timestep_dtype=jnp.float32,
  )


def main(argv=None) -> np.ndarray:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--hidden",
    type=int,
    default=96,
    help="width of the other encoder's hidden states",
  )
  parser.add_argument("--queries", type=int, default=8)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument(
    "--seed", type=int, default=0, help="noise and source latents"
  )
  parser.add_argument(
    "--hidden-seed", type=int, default=0, help="the stand-in hidden states"
  )
  args = parser.parse_args(argv)
  model = build(args.hidden)
  hidden = jnp.asarray(
    np.random.default_rng(args.hidden_seed).normal(
      size=(1, args.queries, args.hidden)
    ),
    jnp.float32,
  )
  source = jnp.asarray(
    np.random.default_rng(args.seed).normal(size=(1, 2, 4, 4, 12)), jnp.float32
  )
  out = np.asarray(
    edit(model, hidden, source, steps=args.steps, seed=args.seed)
  )
  print(f"latents {out.shape} from hidden states {tuple(hidden.shape)}")
  return out


if __name__ == "__main__":
  main()
