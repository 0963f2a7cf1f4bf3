"""A tiny flow-matching task for trainer tests and examples.

``ToyVelocityNet`` predicts a velocity for latents ``[B, t, h, w, c]`` from
the noisy latents, the bf16 timestep and a "source" latent injected scaled
by sigma (the shape of Kiwi's DiT interface, at toy size). ``ToyFlowTask``
trains it with the reference flow-matching loss on an in-memory Grain
dataset, with one frozen module (``source_proj``) so tests can check that
frozen parameters stay bit-identical.
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.diffusion import flow_matching
from kiwi_jax.layers import Dense, GeluTanhMLP
from kiwi_jax.layers.embeddings import timestep_sinusoid

_GRID = flow_matching.TrainingGrid.from_schedule("diffsynth")


class ToyVelocityNet(nnx.Module):
  """``out(x + mlp(x))`` with ``x = in(z) + sigma * source_proj(s) +
  time(sinusoid(t))``."""

  def __init__(
    self, channels: int = 4, dim: int = 16, hidden: int = 32, *, rngs: nnx.Rngs
  ):
    self.dim = dim
    self.in_proj = Dense(
      channels, dim, kernel_axes=("embed_in", "embed"), rngs=rngs
    )
    self.source_proj = Dense(
      channels, dim, kernel_axes=("embed_in", "embed"), rngs=rngs
    )
    self.time_proj = Dense(
      dim, dim, kernel_axes=("embed_in", "embed"), rngs=rngs
    )
    self.mlp = GeluTanhMLP(dim, hidden, dim, rngs=rngs)
    self.out_proj = Dense(dim, channels, kernel_axes=("embed", None), rngs=rngs)

  def __call__(
    self,
    noisy: jax.Array,
    timestep: jax.Array,
    sigma: jax.Array,
    source: jax.Array,
  ) -> jax.Array:
    """noisy, source: [B, t, h, w, c]; timestep, sigma: [B] -> [B, t, h, w, c]."""
    names = ("act_batch", "act_frames", "act_height", "act_width", "act_embed")
    time = self.time_proj(timestep_sinusoid(timestep, self.dim))
    x = (
      self.in_proj(noisy)
      + sigma.astype(jnp.float32)[:, None, None, None, None]
      * self.source_proj(source)
      + time[:, None, None, None, :]
    )
    x = sharding.constrain(x, names)
    x = x + self.mlp(x)
    return self.out_proj(x).astype(noisy.dtype)


def toy_examples(
  num_examples: int, shape=(3, 4, 5, 4), seed: int = 0
) -> list[dict[str, np.ndarray]]:
  """Deterministic examples: target latents, a source and the index."""
  rng = np.random.default_rng(seed)
  base = rng.standard_normal(shape).astype(np.float32)
  out = []
  for i in range(num_examples):
    target = base + 0.5 * rng.standard_normal(shape).astype(np.float32)
    source = target + 0.1 * rng.standard_normal(shape).astype(np.float32)
    out.append({"target": target, "source": source, "index": np.int32(i)})
  return out


class ToyFlowTask:
  """Trains :class:`ToyVelocityNet` by flow matching (a ``trainer.Task``).

  Args:
    num_examples: dataset size.
    batch_size: global batch size.
    seed: data shuffle seed.
    trainable: regexes of the trainable parameters.
    frozen: regexes overriding ``trainable``.
  """

  def __init__(
    self,
    num_examples: int = 16,
    batch_size: int = 2,
    seed: int = 0,
    trainable=(".*",),
    frozen=("^source_proj/",),
    dim: int = 16,
  ):
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.seed = seed
    self.trainable = tuple(trainable)
    self.frozen = tuple(frozen)
    self.dim = dim

  @property
  def global_batch_size(self) -> int:
    return self.batch_size

  def build_model(self, rngs: nnx.Rngs) -> ToyVelocityNet:
    return ToyVelocityNet(dim=self.dim, rngs=rngs)

  def loss_fn(
    self, model: ToyVelocityNet, batch: dict[str, Any], rng: jax.Array
  ) -> tuple[jax.Array, dict[str, Any]]:
    source = batch["source"]
    loss, aux = flow_matching.flow_matching_loss(
      lambda z, t, s: model(z, t, s, source), batch["target"], rng, _GRID
    )
    # Encodes which examples formed the batch (exact in fp32 for small
    # datasets), so tests can compare data order through the metrics.
    index = batch["index"].astype(jnp.float32)
    aux["data_code"] = jnp.sum(
      index * (self.num_examples ** jnp.arange(index.shape[0]))
    )
    return loss, aux

  def dataset(
    self, shard_index: int = 0, shard_count: int = 1
  ) -> grain.MapDataset:
    if self.batch_size % shard_count:
      raise ValueError(
        f"batch_size {self.batch_size} is not divisible by "
        f"{shard_count} processes."
      )
    # Process p takes local batches p, P + p, ... of one stream: global
    # batch k holds the same examples in the same rows for any process
    # count (``kiwi_jax.data.loader.process_batches``).
    return (
      grain.MapDataset.source(toy_examples(self.num_examples))
      .shuffle(seed=self.seed)
      .repeat(None)
      .batch(self.batch_size // shard_count, drop_remainder=True)[
        shard_index::shard_count
      ]
    )

  def train_iterator(self, shard_index: int = 0, shard_count: int = 1):
    return iter(self.dataset(shard_index, shard_count).to_iter_dataset())

  def batch_counts(self, batch: dict[str, Any]) -> dict[str, int]:
    examples = int(np.shape(batch["target"])[0]) * jax.process_count()
    return {
      "examples": examples,
      "frames": examples * int(np.shape(batch["target"])[1]),
    }


def toy_batch(indices, num_examples: int = 16) -> dict[str, jax.Array]:
  """A batch of the given toy examples (device arrays)."""
  examples = toy_examples(num_examples)
  return {
    k: jnp.asarray(np.stack([examples[i][k] for i in indices]))
    for k in ("target", "source", "index")
  }


def deterministic_toy_loss(
  model: ToyVelocityNet, batch: dict[str, Any], rng: jax.Array
) -> tuple[jax.Array, dict]:
  """A flow-matching loss at a fixed noise level with the source as noise:
  no randomness, so k micro-batches and one big batch see the same data."""
  del rng
  size = batch["target"].shape[0]
  timestep = jnp.full((size,), 500.0, jnp.bfloat16)
  sigma = jnp.full((size,), 0.5)
  noisy = flow_matching.add_noise(batch["target"], batch["source"], sigma)
  prediction = model(noisy, timestep, sigma, batch["source"])
  return flow_matching.weighted_mse(
    prediction, flow_matching.velocity_target(batch["target"], batch["source"])
  ), {}


def toy_training(
  opt_config,
  precision,
  *,
  mesh=None,
  loss_fn=None,
  trainable=(".*",),
  frozen=("^source_proj/",),
):
  """``(split, initial_state, train_step)`` for the toy model."""
  from kiwi_jax.train_lib import optimizers, train_step
  from kiwi_jax.train_lib.train_state import ModelSplit

  def ctor():
    return ToyVelocityNet(rngs=nnx.Rngs(0))

  split = ModelSplit.build(
    ctor, trainable, frozen, mesh=mesh, precision=precision
  )
  optimizer = optimizers.make_optimizer(opt_config)
  state = train_step.init_train_state(
    ctor, split, optimizer, precision, 0, mesh
  )
  step = train_step.make_train_step(
    split,
    loss_fn or ToyFlowTask().loss_fn,
    optimizer,
    opt_config,
    precision,
    mesh=mesh,
  )
  return split, state, step
