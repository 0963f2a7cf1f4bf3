"""The train state: a plain pytree with trainable and frozen trees apart.

``TrainState`` holds pure nested dicts (no ``nnx.Variable`` objects), so it
jits, donates, shards and checkpoints like any pytree:

* ``params``: the trainable parameters in the master dtype (fp32 by
  default; the reference keeps fp32 masters in DeepSpeed's optimiser);
* ``frozen``: everything else in the model state (frozen parameters and
  non-parameter variables), never touched by the optimiser;
* ``opt_state``: the Optax state over ``params`` only;
* ``step``: micro-steps done (int32 scalar);
* ``rng``: raw uint32 key data (typed keys do not checkpoint).

:class:`ModelSplit` remembers the module's graph and which parameter paths
train, so ``nnx.merge(split.graphdef, params, frozen)`` rebuilds the module.
Trainable parameters are chosen by regexes over ``/``-joined parameter paths
(``"mllm/image_queries/q"``): a parameter trains if a ``trainable`` regex
``re.search``-matches its path and no ``frozen`` regex does; anchor with
``^``/``$`` as needed. A regex that matches nothing is an error (a typo
would otherwise silently freeze a module).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  frozen: Any
  opt_state: Any
  rng: jax.Array

  def key(self) -> jax.Array:
    """This step's PRNG key: ``fold_in(rng, step)``."""
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


@dataclasses.dataclass(frozen=True)
class Precision:
  """Storage and compute dtypes.

  Attributes:
    master_dtype: storage dtype of trainable parameters (and so of their
      Adam moments): "float32" (default) or "bfloat16".
    compute_dtype: floating parameters are cast to this before the forward
      pass (gradients flow back into the master copy); None keeps them.
    frozen_dtype: storage dtype of frozen floating parameters, None keeps
      the model's ``param_dtype``.
  """

  master_dtype: str = "float32"
  compute_dtype: str | None = "bfloat16"
  frozen_dtype: str | None = None

  @classmethod
  def from_mapping(cls, values) -> Precision:
    values = dict(
      values.to_dict() if hasattr(values, "to_dict") else (values or {})
    )
    return cls(**values)


def cast_floating(tree: Any, dtype: str | None) -> Any:
  """Casts the floating-point leaves of ``tree`` to ``dtype`` (None: keep)."""
  if dtype is None:
    return tree

  def cast(x):
    if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != jnp.dtype(dtype):
      if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(
          x.shape, jnp.dtype(dtype), sharding=x.sharding
        )
      return x.astype(dtype)
    return x

  return jax.tree.map(cast, tree)


def path_name(path: Sequence[Any]) -> str:
  """``("mllm", "connector", 0, "kernel")`` -> ``"mllm/connector/0/kernel"``."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def trainable_filter(
  abstract_state: nnx.State,
  trainable: Sequence[str],
  frozen: Sequence[str] = (),
) -> Callable[[tuple, Any], bool]:
  """An nnx filter selecting the trainable ``nnx.Param``s by regex.

  Raises:
    ValueError: a regex matches no parameter (listing some valid paths).
  """
  names = [
    path_name(p)
    for p, v in nnx.to_flat_state(abstract_state)
    if isinstance(v, nnx.Param)
  ]
  for kind, patterns in (("trainable", trainable), ("frozen", frozen)):
    for pattern in patterns:
      if not any(re.search(pattern, n) for n in names):
        raise ValueError(
          f"The {kind} regex {pattern!r} matches no parameter; parameter "
          f"paths look like {names[:5]} ({len(names)} in all)."
        )

  def is_trainable(path, variable) -> bool:
    if not isinstance(variable, nnx.Param):
      return False
    name = path_name(path)
    return any(re.search(p, name) for p in trainable) and not any(
      re.search(p, name) for p in frozen
    )

  return is_trainable


@dataclasses.dataclass(frozen=True)
class ModelSplit:
  """How the model state splits into trainable and frozen trees.

  Attributes:
    graphdef: the module's graph (``nnx.split``).
    is_trainable: the nnx filter (``trainable_filter``).
    abstract_params: ``ShapeDtypeStruct`` tree of the trainable params
      (pure dict, master dtype, with target shardings when a mesh is given).
    abstract_frozen: the same for the frozen tree (storage dtype).
  """

  graphdef: Any
  is_trainable: Callable[[tuple, Any], bool]
  abstract_params: Any
  abstract_frozen: Any

  @classmethod
  def build(
    cls,
    model_ctor: Callable[[], nnx.Module],
    trainable: Sequence[str],
    frozen: Sequence[str] = (),
    *,
    mesh=None,
    rules=None,
    precision: Precision = Precision(),
  ) -> ModelSplit:
    """Abstractly builds the model (no memory) and splits it."""
    graphdef, abstract = nnx.split(sharding.abstract_model(model_ctor))
    is_trainable = trainable_filter(abstract, trainable, frozen)
    _, params, rest = nnx.split(
      nnx.merge(graphdef, abstract), is_trainable, ...
    )

    def to_abstract(state, dtype):
      shapes = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
        nnx.to_pure_dict(state),
      )
      if mesh is not None:
        shardings = nnx.to_pure_dict(
          sharding.state_shardings(state, mesh, rules)
        )
        shapes = jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
          shapes,
          shardings,
        )
      return cast_floating(shapes, dtype)

    return cls(
      graphdef=graphdef,
      is_trainable=is_trainable,
      abstract_params=to_abstract(params, precision.master_dtype),
      abstract_frozen=to_abstract(rest, precision.frozen_dtype),
    )

  def split(self, model: nnx.Module, precision: Precision) -> tuple[Any, Any]:
    """A concrete module -> ``(params, frozen)`` pure dicts, cast."""
    _, params, rest = nnx.split(model, self.is_trainable, ...)
    return (
      cast_floating(nnx.to_pure_dict(params), precision.master_dtype),
      cast_floating(nnx.to_pure_dict(rest), precision.frozen_dtype),
    )

  def merge(self, params: Any, frozen: Any) -> nnx.Module:
    """Rebuilds the module from the two trees (e.g. inside a jitted step)."""
    return nnx.merge(self.graphdef, params, frozen)

  def trainable_names(self) -> list[str]:
    return [
      path_name(p)
      for p, _ in jax.tree_util.tree_flatten_with_path(self.abstract_params)[0]
    ]


def rng_data(seed: int) -> jax.Array:
  """Raw key data of ``jax.random.key(seed)`` for ``TrainState.rng``."""
  return jax.random.key_data(jax.random.key(seed))
