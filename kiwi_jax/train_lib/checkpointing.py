"""Orbax checkpoints of the train state together with the data iterator.

A checkpoint at step N (N micro-steps done) is one Orbax step directory with
two items, written together and atomically (Orbax writes to a temporary
directory and renames it when complete, so a crash leaves no half checkpoint):

* ``state``: the whole :class:`TrainState` (step, trainable and frozen
  parameters, optimiser state, RNG), saved with ``StandardSave``;
* ``data_iter``: the Grain iterator state (``grain.checkpoint``), so a
  restart continues with exactly the batch that step N + 1 would have seen.

Saving is asynchronous by default, on a fixed interval and on preemption
(``PreemptionCheckpointingPolicy``), keeping the latest ``keep``. Nothing
non-finite is ever saved or resumed: :func:`save` checks every floating
leaf of the state on the devices first and raises
:class:`NonFiniteStateError` instead of saving, and
:func:`restore_or_initialize` checks what it restored the same way.

Where training starts (:func:`restore_or_initialize`), in this order:

1. the latest checkpoint in ``workdir/checkpoints`` (a restart of this run:
   state and data iterator);
2. ``config.resume``: another run's checkpoint directory (or one step
   directory of it): full state and, when saved, the data iterator;
3. ``config.model_init``: weights only (an Orbax checkpoint of this trainer,
   e.g. the previous curriculum stage, re-split under this run's trainable
   set; or any format the task's ``load_weights`` reads, e.g. a converted
   release); the optimiser and step start fresh;
4. scratch: the model's own initialisation from ``config.seed``.

Every restore goes straight into the target shardings of the abstract state
(``kiwi_jax.sharding``), never through one device. ``workdir`` may be local
or ``gs://`` (Orbax writes through ``etils.epath``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec
from orbax.checkpoint import checkpoint_managers as managers

from kiwi_jax.train_lib import weights_file
from kiwi_jax.train_lib.train_state import ModelSplit, TrainState, path_name

STATE = "state"
DATA_ITER = "data_iter"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Attributes:
  every: save every this many steps (and on preemption, and at the end).
  keep: keep the latest this many checkpoints.
  async_save: write in a background thread while training goes on.
  """

  every: int = 1000
  keep: int = 3
  async_save: bool = True

  @classmethod
  def from_mapping(cls, values) -> CheckpointConfig:
    values = dict(
      values.to_dict() if hasattr(values, "to_dict") else (values or {})
    )
    return cls(**values)


class NonFiniteStateError(FloatingPointError):
  """The train state holds NaN or infinite values (it is never saved)."""


def _finite_per_leaf(leaves: list[jax.Array]) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


@functools.cache
def _jitted_finite_per_leaf(out_sharding: NamedSharding | None):
  return jax.jit(_finite_per_leaf, out_shardings=out_sharding)


def _finite_flags(leaves: list[jax.Array]) -> np.ndarray:
  """One bool per leaf, computed where the leaves live; the result is
  replicated on their mesh so every process can read it."""
  mesh_sharding = next(
    (
      x.sharding
      for x in leaves
      if isinstance(getattr(x, "sharding", None), NamedSharding)
    ),
    None,
  )
  out = (
    None
    if mesh_sharding is None
    else NamedSharding(mesh_sharding.mesh, PartitionSpec())
  )
  return np.asarray(jax.device_get(_jitted_finite_per_leaf(out)(leaves)))


def nonfinite_leaves(tree: Any) -> tuple[list[str], int]:
  """The floating leaves of ``tree`` that hold a NaN or an infinity.

  One jitted reduction per leaf where the leaf lives (sharded arrays stay
  sharded) and one fetch of a bool per leaf: call it at save time, not
  every step. A :class:`TrainState` is named as it is saved
  (``params/...``, ``opt_state/...``, ``frozen/...``).

  Returns:
    ``(names, count)``: the non-finite leaves' paths in tree order, and
    how many floating leaves were checked.
  """
  if isinstance(tree, TrainState):
    tree = _state_dict(tree)
  named = [
    (path_name(p), x)
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
  ]
  if not named:
    return [], 0
  finite = _finite_flags([x for _, x in named])
  return [name for (name, _), ok in zip(named, finite) if not ok], len(named)


def describe_nonfinite(names: list[str], count: int) -> str:
  """``"3 of 257 floating leaves hold NaN or inf (first: params/a/w)"``."""
  return (
    f"{len(names)} of {count} floating leaves hold NaN or inf "
    f"(first: {names[0]})"
  )


def newest_checkpoint_note(manager: ocp.CheckpointManager) -> str:
  """What a stopped run leaves on disk, for its error message."""
  latest = manager.latest_step()
  if latest is None:
    return "no checkpoint was saved."
  return (
    f"the newest checkpoint is step {latest} in {manager.directory} "
    "(checked finite before it was saved); a restart resumes from it."
  )


class _ReadOnlyNotices(logging.Filter):
  """Drops Orbax's WARNINGs that a read-only manager is read-only.

  Reading a previous stage's checkpoint (``model_init``, ``resume``) opens
  a read-only manager on purpose; Orbax warns about it at every opening.
  """

  NOTICES = (
    "CheckpointManagerOptions.read_only=True",
    "Given directory is read only",
  )

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.NOTICES)


def make_manager(
  directory: str | epath.PathLike,
  config: CheckpointConfig = CheckpointConfig(),
  read_only: bool = False,
) -> ocp.CheckpointManager:
  """A manager saving on ``config.every`` steps and on preemption."""
  notices = _ReadOnlyNotices()
  absl_logger = logging.getLogger("absl")
  if read_only:
    absl_logger.addFilter(notices)
  try:
    options = ocp.CheckpointManagerOptions(
      save_decision_policy=managers.AnySavePolicy(
        [
          managers.PreemptionCheckpointingPolicy(),
          managers.FixedIntervalPolicy(config.every),
        ]
      ),
      preservation_policy=managers.LatestN(config.keep),
      enable_async_checkpointing=config.async_save,
      create=not read_only,
      read_only=read_only,
      cleanup_tmp_directories=not read_only,
    )
    return ocp.CheckpointManager(absolute_path(directory), options=options)
  finally:
    absl_logger.removeFilter(notices)


def _state_dict(state: TrainState) -> dict[str, Any]:
  return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


def save(
  manager: ocp.CheckpointManager,
  step: int,
  state: TrainState,
  data_iter: Any = None,
  *,
  force: bool = False,
) -> bool:
  """Saves (if the manager's policy says so, or ``force``); returns whether
  a save started.

  Raises:
    NonFiniteStateError: the state holds NaN or inf (checked on the
      devices before anything is written; nothing is saved).
  """
  if not force and not manager.should_save(step):
    return False
  bad, count = nonfinite_leaves(state)
  if bad:
    raise NonFiniteStateError(
      f"Refusing to save the train state at step {step}: "
      f"{describe_nonfinite(bad, count)}. Stopping; "
      f"{newest_checkpoint_note(manager)}"
    )
  items = {STATE: ocp.args.StandardSave(_state_dict(state))}
  if data_iter is not None:
    items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(
  manager: ocp.CheckpointManager,
  step: int,
  abstract_state: TrainState,
  data_iter: Any = None,
) -> TrainState:
  """Restores step ``step`` into ``abstract_state``'s shardings; restores
  ``data_iter`` in place when given and saved."""
  items = {STATE: ocp.args.StandardRestore(_state_dict(abstract_state))}
  # item_metadata() knows no handler for the Grain item in a fresh process,
  # so look for the item's directory (default step naming, see make_manager).
  has_iter = (epath.Path(manager.directory) / str(step) / DATA_ITER).exists()
  if data_iter is not None and has_iter:
    items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
  elif data_iter is not None:
    logging.warning(
      "Checkpoint step %d has no data iterator state; the "
      "data starts from the beginning.",
      step,
    )
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return TrainState(**restored[STATE])


def absolute_path(path: str | epath.PathLike) -> epath.Path:
  """``path`` made absolute when local (Orbax refuses relative paths);
  ``gs://`` and other URIs unchanged."""
  if "://" in str(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.fspath(path)))


def _step_directory(path: str | epath.PathLike) -> epath.Path:
  """A step directory: ``path`` itself, or the latest step under it."""
  path = absolute_path(path)
  if (path / STATE).exists():
    return path
  manager = make_manager(path, read_only=True)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(
      f"No checkpoint under {path}: expected a step directory holding "
      f"'{STATE}/' or a checkpoint directory with numbered steps."
    )
  return path / str(step)


def _flat(tree: Any) -> dict[str, Any]:
  return {
    path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _unflatten_like(abstract: Any, flat: dict[str, Any]) -> Any:
  paths, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  return jax.tree_util.tree_unflatten(
    treedef, [flat[path_name(p)] for p, _ in paths]
  )


def read_weights(
  path: str | epath.PathLike,
  want: dict[str, Any],
  *,
  fresh: Callable[[list[str]], dict[str, Any]] | None = None,
  what: str = "model_init",
) -> dict[str, Any]:
  """The model weights of a trainer checkpoint, by parameter name.

  The checkpoint's trainable and frozen trees are read as one model tree,
  checked against ``want`` (missing, unexpected and mis-shaped parameters
  are listed together) and restored in ``want``'s dtypes, straight into its
  shardings.

  Args:
    path: a checkpoint directory of this trainer (or one step of it), or
      a ``.safetensors`` weights file (``weights_file``).
    want: ``{"/"-joined name: ShapeDtypeStruct}`` of the model to fill.
    fresh: ``missing names -> {name: array}`` for parameters that may start
      fresh although the checkpoint lacks them; names it does not return
      stay missing. None: every missing parameter is an error.
    what: what the checkpoint is called in the error message.

  Returns:
    ``{name: array}`` for every name of ``want``.
  """
  if weights_file.is_weights_file(path):
    return weights_file.read(path, want, fresh=fresh, what=what)
  item_dir = _step_directory(path) / STATE
  checkpointer = ocp.PyTreeCheckpointer()
  saved = checkpointer.metadata(item_dir).item_metadata.tree
  saved_flat = {}
  for part in ("params", "frozen"):
    for name, meta in _flat(saved.get(part, {})).items():
      saved_flat[f"{part}/{name}"] = (name, meta)
  by_name = {name: (key, meta) for key, (name, meta) in saved_flat.items()}
  fresh_values = weights_file.check_fits(
    {name: tuple(meta.shape) for name, (_, meta) in by_name.items()},
    want,
    fresh=fresh,
    what=f"{what} {item_dir}",
    label="checkpoint",
  )
  # Restore target: the saved layout, with the wanted dtypes and shardings.
  default_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target: dict[str, dict[str, Any]] = {"params": {}, "frozen": {}}
  restore_args: dict[str, dict[str, Any]] = {"params": {}, "frozen": {}}
  for key, (name, _) in saved_flat.items():
    part = key.split("/", 1)[0]
    target[part][name] = want[name]
    restore_args[part][name] = ocp.ArrayRestoreArgs(
      sharding=getattr(want[name], "sharding", None) or default_sharding,
      dtype=want[name].dtype,
    )
  target = {part: _nest(flat) for part, flat in target.items()}
  restore_args = {part: _nest(flat) for part, flat in restore_args.items()}
  restored = checkpointer.restore(
    item_dir,
    args=ocp.args.PyTreeRestore(
      item=target, restore_args=restore_args, partial_restore=True
    ),
  )
  return {
    **_flat(restored.get("params", {})),
    **_flat(restored.get("frozen", {})),
    **fresh_values,
  }


def restore_weights(
  path: str | epath.PathLike,
  split: ModelSplit,
  *,
  fresh: Callable[[list[str]], dict[str, Any]] | None = None,
) -> tuple[Any, Any]:
  """``model_init``: only the weights of a checkpoint (:func:`read_weights`),
  re-split by this run's trainable set and cast to its dtypes.

  Returns:
    ``(params, frozen)`` pure dicts.
  """
  want = {**_flat(split.abstract_params), **_flat(split.abstract_frozen)}
  flat = read_weights(path, want, fresh=fresh)
  return (
    _unflatten_like(split.abstract_params, flat),
    _unflatten_like(split.abstract_frozen, flat),
  )


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for name, value in flat.items():
    node = out
    *parents, leaf = name.split("/")
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return out


def restore_or_initialize(
  manager: ocp.CheckpointManager,
  abstract_state: TrainState,
  *,
  init_from_scratch: Callable[[], TrainState],
  init_from_weights: Callable[[Any, Any], TrainState],
  split: ModelSplit,
  data_iter: Any = None,
  resume: str | None = None,
  model_init: str | None = None,
  load_weights: Callable[[str, ModelSplit], tuple[Any, Any]] | None = None,
) -> tuple[TrainState, str]:
  """The restore order of the module docstring.

  Args:
    manager: this workdir's manager.
    abstract_state: restore target with shardings.
    init_from_scratch: builds a fresh state.
    init_from_weights: ``(params, frozen) -> state`` (fresh optimiser).
    split: this run's trainable/frozen split.
    data_iter: restored in place from a full-state checkpoint.
    resume: another run's checkpoint (full state).
    model_init: weights to start from.
    load_weights: ``(path, split) -> (params, frozen)`` for non-Orbax
      ``model_init`` files (a converted release); default: Orbax.

  Returns:
    ``(state, source)`` where ``source`` says where it came from.

  Raises:
    NonFiniteStateError: the state it would start from holds NaN or inf
      (e.g. a checkpoint written before saves were checked); the message
      says how to start from something else.
  """
  latest = manager.latest_step()
  if latest is not None:
    state = restore(manager, latest, abstract_state, data_iter)
    source = f"this workdir's checkpoint at step {latest}"
    fix = (
      f"delete {epath.Path(manager.directory) / str(latest)} to "
      "resume from the checkpoint before it, or train in a new workdir"
    )
  elif resume:
    step_dir = _step_directory(resume)
    other = make_manager(step_dir.parent, read_only=True)
    step = int(step_dir.name)
    state = restore(other, step, abstract_state, data_iter)
    source = f"resume {step_dir}"
    fix = "set --config.resume to an earlier step directory of that run"
  elif model_init:
    loader = load_weights or restore_weights
    params, frozen = loader(model_init, split)
    state = init_from_weights(params, frozen)
    source = f"model_init {model_init}"
    fix = "set --config.model_init to weights that are finite"
  else:
    state, source = init_from_scratch(), "scratch"
    fix = "the model's initialisation is broken; check its config"
  bad, count = nonfinite_leaves(state)
  if bad:
    raise NonFiniteStateError(
      f"Cannot start from {source}: {describe_nonfinite(bad, count)}; {fix}."
    )
  return state, source
