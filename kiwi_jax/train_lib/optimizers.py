"""The reference optimiser as an Optax transformation.

Kiwi-Edit trains with (reference §4.3, quirk 16):

* ``torch.optim.AdamW(trainable, lr, weight_decay=0.01)``: betas 0.9/0.999,
  eps 1e-8, decoupled decay on *every* trainable tensor (biases, norms and
  queries included);
* ``torch.optim.lr_scheduler.ConstantLR(optimizer)`` with torch's defaults:
  ``lr / 3`` for the first 5 scheduler steps, then ``lr``; accelerate steps
  the scheduler once per process per optimizer step, so on N processes the
  warm-up lasts ``ceil(5 / N)`` updates (``scheduler_steps_per_update``);
* global-norm gradient clipping at 1.0 (accelerate fills DeepSpeed's
  ``"auto"``), applied to the accumulated gradient;
* gradient accumulation over ``grad_accum_steps`` micro-batches (the
  reference accumulates one sample of each data type: an image and a video
  in stage 2), averaged.

The optimiser only ever sees the *trainable* parameters (the train state
keeps frozen parameters in a separate tree, see ``train_state``), so frozen
parameters get no moments, no accumulator and no gradient at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimiser hyperparameters (defaults: the reference's).

  Attributes:
    learning_rate: the constant learning rate after warm-up.
    weight_decay: decoupled AdamW decay on every trainable tensor.
    b1: Adam beta1.
    b2: Adam beta2.
    eps: Adam epsilon (added to sqrt(nu_hat), as torch does).
    warmup_factor: ConstantLR ``factor`` (torch default 1/3).
    warmup_steps: ConstantLR ``total_iters`` (torch default 5), in
      scheduler steps.
    scheduler_steps_per_update: scheduler steps per optimiser update (the
      reference's accelerate steps it once per process).
    grad_clip_norm: global-norm clipping threshold, None for none.
    grad_accum_steps: micro-batches per optimiser update.
    decay: "none" (the reference: constant after warm-up) or "cosine"
      (an option for short runs such as the CPU demo): the learning rate
      follows a half cosine from ``learning_rate`` down to
      ``learning_rate * decay_to`` over updates ``0..decay_steps``, times
      the warm-up factor, and stays there.
    decay_steps: optimiser updates the cosine spans (> 0 with "cosine").
    decay_to: the final fraction of ``learning_rate``.
  """

  learning_rate: float = 1e-5
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  warmup_factor: float = 1.0 / 3.0
  warmup_steps: int = 5
  scheduler_steps_per_update: int = 1
  grad_clip_norm: float | None = 1.0
  grad_accum_steps: int = 1
  decay: str = "none"
  decay_steps: int = 0
  decay_to: float = 0.0

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any] | None) -> OptimizerConfig:
    """Builds from a (ConfigDict) mapping; unknown keys fail by name."""
    values = dict(
      values.to_dict() if hasattr(values, "to_dict") else (values or {})
    )
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(
        f"Unknown optimizer settings {unknown}; known: {sorted(known)}."
      )
    config = cls(**values)
    if config.grad_accum_steps < 1:
      raise ValueError(
        f"grad_accum_steps must be >= 1, got {config.grad_accum_steps}."
      )
    if config.decay not in ("none", "cosine"):
      raise ValueError(f"decay={config.decay!r}; choose 'none' or 'cosine'.")
    if config.decay == "cosine" and config.decay_steps <= 0:
      raise ValueError(
        f"decay='cosine' needs decay_steps > 0, got {config.decay_steps}."
      )
    return config


def constant_lr_warmup(config: OptimizerConfig) -> optax.Schedule:
  """torch ``ConstantLR``: ``lr * factor`` while ``scheduler steps <
  total_iters``, then ``lr``; ``count`` counts optimiser updates."""

  def schedule(count):
    scheduler_steps = count * config.scheduler_steps_per_update
    factor = jnp.where(
      scheduler_steps < config.warmup_steps, config.warmup_factor, 1.0
    )
    if config.decay == "cosine":
      progress = jnp.minimum(count / config.decay_steps, 1.0)
      cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
      factor = factor * (config.decay_to + (1.0 - config.decay_to) * cosine)
    return jnp.asarray(config.learning_rate * factor, jnp.float32)

  return schedule


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  """clip(global norm) -> AdamW(ConstantLR warm-up), with accumulation.

  With ``grad_accum_steps = k > 1`` the result is an ``optax.MultiSteps``:
  each call takes one micro-batch's gradient, every k-th call applies the
  mean of the k gradients (the other calls return zero updates, so the
  parameters stay bit-identical in between).
  """
  chain = []
  if config.grad_clip_norm is not None:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  chain.append(
    optax.adamw(
      constant_lr_warmup(config),
      b1=config.b1,
      b2=config.b2,
      eps=config.eps,
      weight_decay=config.weight_decay,
    )
  )
  optimizer = optax.chain(*chain)
  if config.grad_accum_steps > 1:
    optimizer = optax.MultiSteps(
      optimizer, every_k_schedule=config.grad_accum_steps
    )
  return optimizer


def learning_rate_at(
  config: OptimizerConfig, micro_step: jax.Array
) -> jax.Array:
  """The learning rate used by the update that micro-step ``micro_step``
  (0-based) contributes to."""
  return constant_lr_warmup(config)(micro_step // config.grad_accum_steps)


def opt_state_shardings(
  optimizer: optax.GradientTransformation,
  param_shardings: Any,
  abstract_params: Any,
  replicated: Any,
) -> Any:
  """Shardings of the optimiser state: like the parameter each slot tracks.

  Args:
    optimizer: the transformation.
    param_shardings: a sharding per trainable parameter.
    abstract_params: ``ShapeDtypeStruct`` per trainable parameter.
    replicated: the sharding for non-parameter state (counts, scalars).
  """
  abstract_state = jax.eval_shape(optimizer.init, abstract_params)
  return optax.tree_map_params(
    optimizer,
    lambda _, sharding: sharding,
    abstract_state,
    param_shardings,
    transform_non_params=lambda _: replicated,
    is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
  )
