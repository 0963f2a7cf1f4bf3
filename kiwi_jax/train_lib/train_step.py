"""A jitted, sharded, donating train step over any loss function.

The step is generic: a task supplies

  loss_fn(model: nnx.Module, batch, rng) -> (loss: f32[], aux: dict)

and the step rebuilds the module from the state's trainable and frozen trees
(cast to the compute dtype), differentiates with respect to the trainable
tree only, applies the Optax update and returns the new state with
measurements. Frozen parameters are inputs, never outputs of the optimiser,
so they come out bit-identical.

Typical use::

  split = ModelSplit.build(ctor, trainable=[...], mesh=mesh)
  abstract = abstract_train_state(split, optimizer, mesh)  # built once
  state = init_train_state(ctor, split, optimizer, precision, seed, mesh,
                           abstract=abstract)
  step = make_train_step(split, loss_fn, optimizer, opt_config, precision,
                         mesh=mesh, abstract=abstract)
  state, metrics = step(state, batch)   # `state` is donated
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from kiwi_jax import sharding
from kiwi_jax.train_lib import optimizers
from kiwi_jax.train_lib.train_state import (
  ModelSplit,
  Precision,
  TrainState,
  cast_floating,
  rng_data,
)

LossFn = Callable[[nnx.Module, Any, jax.Array], tuple[jax.Array, Any]]


def abstract_train_state(
  split: ModelSplit,
  optimizer: optax.GradientTransformation,
  mesh: Mesh | None = None,
) -> TrainState:
  """``ShapeDtypeStruct`` train state, with target shardings on ``mesh``.

  The Orbax restore target and the jitted step's ``out_shardings``.
  """
  opt_state = jax.eval_shape(optimizer.init, split.abstract_params)
  rng = jax.eval_shape(lambda: rng_data(0))
  step = jax.ShapeDtypeStruct((), jnp.int32)
  if mesh is None:
    return TrainState(
      step=step,
      params=split.abstract_params,
      frozen=split.abstract_frozen,
      opt_state=opt_state,
      rng=rng,
    )
  replicated = NamedSharding(mesh, P())
  param_shardings = jax.tree.map(lambda x: x.sharding, split.abstract_params)
  opt_shardings = optimizers.opt_state_shardings(
    optimizer, param_shardings, split.abstract_params, replicated
  )
  with_sharding = lambda x, s: jax.ShapeDtypeStruct(  # noqa: E731
    x.shape, x.dtype, sharding=s
  )
  return TrainState(
    step=with_sharding(step, replicated),
    params=split.abstract_params,
    frozen=split.abstract_frozen,
    opt_state=jax.tree.map(with_sharding, opt_state, opt_shardings),
    rng=with_sharding(rng, replicated),
  )


def shardings_of(abstract: Any) -> Any:
  """The ``.sharding`` of every ``ShapeDtypeStruct`` leaf."""
  return jax.tree.map(lambda x: x.sharding, abstract)


def _state_shardings(
  split: ModelSplit,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
  abstract: TrainState | None,
) -> Any:
  if abstract is None:
    abstract = abstract_train_state(split, optimizer, mesh)
  return shardings_of(abstract)


def init_train_state(
  model_ctor: Callable[[], nnx.Module],
  split: ModelSplit,
  optimizer: optax.GradientTransformation,
  precision: Precision,
  seed: int,
  mesh: Mesh | None = None,
  rules=None,
  *,
  abstract: TrainState | None = None,
) -> TrainState:
  """Initialises the model and optimiser straight into their shardings.

  ``abstract``: :func:`abstract_train_state` of ``split`` on ``mesh``, when
  the caller has it already (built here otherwise).
  """

  def init():
    params, frozen = split.split(model_ctor(), precision)
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      frozen=frozen,
      opt_state=optimizer.init(params),
      rng=rng_data(seed),
    )

  if mesh is None:
    return jax.jit(init)()
  out = _state_shardings(split, optimizer, mesh, abstract)
  with sharding.use_mesh(mesh, rules):
    return jax.jit(init, out_shardings=out)()


def state_from_weights(
  params: Any,
  frozen: Any,
  split: ModelSplit,
  optimizer: optax.GradientTransformation,
  seed: int,
  mesh: Mesh | None = None,
  *,
  abstract: TrainState | None = None,
) -> TrainState:
  """A fresh train state (step 0, new optimiser state) around given weights
  (``model_init``: a converted release or the previous stage); ``abstract``
  as in :func:`init_train_state`."""

  def init(params, frozen):
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      frozen=frozen,
      opt_state=optimizer.init(params),
      rng=rng_data(seed),
    )

  if mesh is None:
    return jax.jit(init)(params, frozen)
  out = _state_shardings(split, optimizer, mesh, abstract)
  return jax.jit(init, out_shardings=out)(params, frozen)


def _mean_scalars(aux: Any) -> dict[str, jax.Array]:
  """Flat ``{name: mean}`` of the numeric leaves of a loss's aux output."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(aux)[0]:
    if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.number):
      continue
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    out[name] = jnp.mean(leaf.astype(jnp.float32))
  return out


def make_train_step(
  split: ModelSplit,
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  opt_config: optimizers.OptimizerConfig,
  precision: Precision,
  *,
  mesh: Mesh | None = None,
  rules=None,
  donate: bool = True,
  abstract: TrainState | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
  """Builds ``train_step(state, batch) -> (state, metrics)``.

  Metrics: ``training_loss``, ``l2_grads`` (this micro-batch's gradient,
  before clipping), ``l2_params``, ``l2_updates`` (0 on accumulation
  micro-steps), ``learning_rate`` and the means of the loss's numeric aux
  outputs. The RNG of step s is ``fold_in(rng, s)``.

  Args:
    split: the model's trainable/frozen split.
    loss_fn: ``(model, batch, rng) -> (loss, aux)``.
    optimizer: from :func:`optimizers.make_optimizer`.
    opt_config: its config (for the learning-rate metric).
    precision: dtypes (see :class:`Precision`).
    mesh: shard the state on this mesh (None: one device, no constraints).
    rules: logical-axis rules (default: ``sharding.LOGICAL_AXIS_RULES``).
    donate: donate the input state's buffers.
    abstract: :func:`abstract_train_state` of ``split`` on ``mesh``, when
      the caller has it already (built here otherwise).
  """

  grad_shardings = None if mesh is None else shardings_of(split.abstract_params)

  def step_fn(state: TrainState, batch: Any):
    rng = state.key()
    frozen = cast_floating(state.frozen, precision.compute_dtype)

    def compute_loss(params):
      model = split.merge(
        cast_floating(params, precision.compute_dtype), frozen
      )
      loss, aux = loss_fn(model, batch, rng)
      return loss.astype(jnp.float32), aux

    (loss, aux), grads = jax.value_and_grad(compute_loss, has_aux=True)(
      state.params
    )
    if grad_shardings is not None:
      # Each gradient lands on its parameter's FSDP shard: the batch sum
      # becomes a reduce-scatter, not an all-reduce of the whole tensor.
      grads = jax.lax.with_sharding_constraint(grads, grad_shardings)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
      "training_loss": loss,
      "l2_grads": optax.tree.norm(grads),
      "l2_params": optax.tree.norm(params),
      "l2_updates": optax.tree.norm(updates),
      "learning_rate": optimizers.learning_rate_at(opt_config, state.step),
      **_mean_scalars(aux),
    }
    new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state
    )
    return new_state, metrics

  donate_argnums = (0,) if donate else ()
  if mesh is None:
    return jax.jit(step_fn, donate_argnums=donate_argnums)
  state_shardings = _state_shardings(split, optimizer, mesh, abstract)
  jitted = jax.jit(
    step_fn,
    donate_argnums=donate_argnums,
    out_shardings=(state_shardings, NamedSharding(mesh, P())),
  )

  def sharded_step(state, batch):
    # The mesh must be current while tracing so that the model's logical
    # activation constraints resolve.
    with sharding.use_mesh(mesh, rules):
      return jitted(state, batch)

  def lower(state, batch):
    """``jax.jit(...).lower`` of the step under its mesh (ahead-of-time
    compiles, e.g. ``kiwi_jax.plan``; arguments may be shape structs)."""
    with sharding.use_mesh(mesh, rules):
      return jitted.lower(state, batch)

  sharded_step.lower = lower
  sharded_step.jitted = jitted  # to trace under a mesh the caller entered
  return sharded_step
