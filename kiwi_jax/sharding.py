"""Meshes, logical axis names and sharded model creation.

Every parameter declares *logical* axis names (``embed``, ``mlp``, ``heads``,
...) as ``nnx.Param(value, logical_axes=(...))`` metadata, and every large
activation is constrained with :func:`constrain` using ``act_*`` names. One
rules table (:data:`LOGICAL_AXIS_RULES`, overridable from config) maps logical
names to the four mesh axes ``data``, ``fsdp``, ``tensor``, ``sequence``.

We keep the logical names under our own metadata key rather than flax's
``out_sharding``: flax eagerly shards ``out_sharding`` variables and then
refuses to build a module outside a mesh, and library users must be able to
build any module on one CPU with no mesh at all.

Resolution rules (see :func:`logical_to_spec`):
  * a logical name maps to one mesh axis, a tuple of them, or ``None``;
  * a mesh axis is used at most once per array (first dimension wins);
  * mesh axes whose size does not divide the dimension are dropped, so odd
    test shapes and small models still run on any mesh (replicated there);
  * with a mesh given, size-1 mesh axes are left out of the spec.

Typical use::

  mesh = make_mesh({"data": -1, "fsdp": 2})
  model = create_sharded(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)), mesh)
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

M = TypeVar("M")

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
LOGICAL_AXES_KEY = "logical_axes"

# Logical name -> mesh axes. Parameters first, then activations (``act_*``).
# ``embed`` is the model width: FSDP shards it. ``heads``/``mlp``/``kv`` are
# the fan-out dimensions of attention and MLP kernels: tensor parallelism
# shards them. Activations shard their batch over data+fsdp and their token
# axis over ``sequence`` (context parallelism).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
  # Parameters.
  ("layers", None),
  ("embed", "fsdp"),
  ("embed_in", "fsdp"),  # input width of a projection into `embed`
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv", "tensor"),
  ("vocab", "tensor"),
  ("conv_in", None),
  ("conv_out", "tensor"),
  ("norm", None),
  ("queries", None),
  ("lora_rank", None),
  # Activations.
  ("act_batch", ("data", "fsdp")),
  ("act_seq", "sequence"),
  ("act_kv_seq", None),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_mlp", "tensor"),
  ("act_frames", None),
  # Spatial sharding of the VAE is off by default: sharding frame height
  # over `sequence` gave wrong VAE encodes (max error 0.07 on 0.26) on 8
  # fake CPU devices with jax 0.10.2, although each VAE op alone (convs,
  # patchify, AvgDown/DupUp, attention, norms) partitions correctly. Map it
  # to "sequence" only after checking the result against one device.
  ("act_height", None),
  ("act_width", None),
  ("act_channels", None),
)

# The same table with the weights' ``embed`` axes sharded over ``sequence``
# as well as ``fsdp``: context parallelism splits a sample's tokens, not the
# batch, so with the default table every sequence shard holds its fsdp
# shard's whole weights. Pass it as ``rules`` (or as a config's
# ``sharding_rules``) on meshes with ``sequence`` above 1.
FSDP_OVER_SEQUENCE_RULES: tuple[tuple[str, Any], ...] = tuple(
  (name, ("fsdp", "sequence") if name in ("embed", "embed_in") else axes)
  for name, axes in LOGICAL_AXIS_RULES
)

_RULES: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = (
  contextvars.ContextVar("kiwi_jax_axis_rules", default=LOGICAL_AXIS_RULES)
)

# The platform of the devices of the mesh entered with :func:`use_mesh`
# (None: none entered). Code that picks kernels by backend reads it through
# :func:`target_platform`, so compiling for TPU devices from a CPU host
# (``kiwi_jax.plan``) picks the TPU kernels.
_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
  "kiwi_jax_mesh_platform", default=None
)

LogicalAxes = Sequence[str | None]


# ---------------------------------------------------------------------------
# Meshes.


def resolve_mesh_axes(
  axes: Mapping[str, int] | Sequence[tuple[str, int]] | None,
  device_count: int,
) -> dict[str, int]:
  """Every axis of ``MESH_AXES`` with its size for ``device_count`` devices:
  axes left out are 1 and the one ``-1`` axis takes the rest (``None``: all
  on ``data``).

  Raises:
    ValueError: an unknown axis, two ``-1`` axes, or sizes that do not
      multiply to ``device_count``.
  """
  sizes = dict(axes or {"data": -1})
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(
      f"Unknown mesh axes {sorted(unknown)}; valid axes are {MESH_AXES}."
    )
  shape = [int(sizes.get(name, 1)) for name in MESH_AXES]
  fills = [i for i, s in enumerate(shape) if s == -1]
  if len(fills) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {sizes}.")
  known = math.prod(s for s in shape if s != -1)
  if fills:
    if device_count % known:
      raise ValueError(
        f"Mesh {sizes}: {device_count} devices are not divisible by the "
        f"fixed axes' product {known}."
      )
    shape[fills[0]] = device_count // known
  if math.prod(shape) != device_count:
    raise ValueError(
      f"Mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices "
      f"but {device_count} are available."
    )
  return dict(zip(MESH_AXES, shape))


def make_mesh(
  axes: Mapping[str, int] | Sequence[tuple[str, int]] | None = None,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """Builds a mesh over ``MESH_AXES`` with Auto axis types.

  Args:
    axes: sizes per mesh axis; axes left out get size 1 and at most one axis
      may be ``-1`` ("fill with the remaining devices"). ``None`` puts every
      device on ``data``.
    devices: devices to use (default: all of ``jax.devices()``).

  Returns:
    A ``jax.sharding.Mesh`` with axis names ``MESH_AXES`` in that order.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = list(resolve_mesh_axes(axes, len(devices)).values())
  device_grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(
    device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES)
  )


def mesh_from_config(config: Any) -> Mesh:
  """Mesh from a config holding ``mesh`` as a dict or a list of pairs."""
  mesh_cfg = config.get("mesh", None) if hasattr(config, "get") else None
  if mesh_cfg is not None and hasattr(mesh_cfg, "to_dict"):
    mesh_cfg = mesh_cfg.to_dict()
  return make_mesh(mesh_cfg)


# ---------------------------------------------------------------------------
# Rules.


def current_rules() -> tuple[tuple[str, Any], ...]:
  return _RULES.get()


@contextlib.contextmanager
def axis_rules(rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
  """Temporarily replaces the logical-axis rules table."""
  token = _RULES.set(tuple((name, _as_tuple(axes)) for name, axes in rules))
  try:
    yield
  finally:
    _RULES.reset(token)


@contextlib.contextmanager
def use_mesh(
  mesh: Mesh, rules: Sequence[tuple[str, Any]] | None = None
) -> Iterator[Mesh]:
  """Enters ``mesh`` (``jax.set_mesh``) and, optionally, a rules table."""
  with contextlib.ExitStack() as stack:
    stack.enter_context(jax.set_mesh(mesh))
    token = _PLATFORM.set(mesh.devices.flat[0].platform)
    stack.callback(_PLATFORM.reset, token)
    if rules is not None:
      stack.enter_context(axis_rules(rules))
    yield mesh


def _as_tuple(axes: Any) -> tuple[str, ...]:
  if axes is None:
    return ()
  if isinstance(axes, str):
    return (axes,)
  return tuple(axes)


def _mesh_axis_sizes(mesh: Any) -> dict[str, int]:
  return dict(zip(mesh.axis_names, mesh.axis_sizes))


def logical_to_spec(
  logical_axes: LogicalAxes,
  shape: Sequence[int] | None = None,
  mesh: Any = None,
  rules: Sequence[tuple[str, Any]] | None = None,
) -> P:
  """Resolves logical axis names into a ``PartitionSpec``.

  Args:
    logical_axes: one name (or ``None``) per dimension. If the array has more
      dimensions than names, the extra leading ones (e.g. a stacked layer
      axis added by ``nnx.scan``/``nnx.vmap``) are replicated.
    shape: the array shape; with ``mesh`` it drops mesh axes that do not
      divide a dimension.
    mesh: a ``Mesh`` or ``AbstractMesh``; only axes present in it are used.
    rules: rules table; defaults to :func:`current_rules`.

  Returns:
    A ``PartitionSpec`` of the same length as ``shape`` (or the names).
  """
  table = {name: _as_tuple(axes) for name, axes in (rules or current_rules())}
  names = list(logical_axes)
  if shape is not None:
    if len(names) > len(shape):
      raise ValueError(
        f"Logical axes {tuple(logical_axes)} have more entries than the "
        f"array has dimensions {tuple(shape)}."
      )
    names = [None] * (len(shape) - len(names)) + names
  sizes = _mesh_axis_sizes(mesh) if mesh is not None else None
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(names):
    if name is not None and name not in table:
      raise KeyError(
        f"Logical axis {name!r} has no rule; known names: {sorted(table)}."
      )
    chosen = []
    extent = 1
    for axis in table.get(name, ()) if name is not None else ():
      if axis in used or (sizes is not None and axis not in sizes):
        continue
      size = sizes[axis] if sizes is not None else 1
      if sizes is not None and size == 1:
        continue  # a size-1 axis shards nothing; keep specs readable
      if (
        shape is not None
        and sizes is not None
        and (shape[dim] % (extent * size))
      ):
        continue
      chosen.append(axis)
      extent *= size
    used.update(chosen)
    spec.append(
      None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen)
    )
  return P(*spec)


def target_platform() -> str:
  """The platform the current program compiles for: that of the current
  mesh's devices (a TPU slice compiled ahead of time from a CPU host says
  "tpu"), else ``jax.default_backend()``. Callable inside ``jax.jit``.
  The mesh entered with :func:`use_mesh` is asked first, then the abstract
  mesh of the trace."""
  entered = _PLATFORM.get()
  if entered:
    return entered
  mesh = jax.sharding.get_abstract_mesh()
  device = (
    None
    if mesh is None or mesh.empty
    else getattr(mesh, "abstract_device", None)
  )
  platform = getattr(device, "platform", None)
  return str(platform) if platform else jax.default_backend()


def constrain(x: jax.Array, logical_axes: LogicalAxes) -> jax.Array:
  """``with_sharding_constraint`` by logical names; a no-op without a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or math.prod(mesh.axis_sizes) == 1:
    return x
  spec = logical_to_spec(logical_axes, x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, spec)


# ---------------------------------------------------------------------------
# Parameters.


def param(
  init_fn: Callable[..., jax.Array],
  key: jax.Array,
  shape: Sequence[int],
  dtype: Any,
  logical_axes: LogicalAxes,
) -> nnx.Param:
  """Creates an ``nnx.Param`` that carries its logical axis names."""
  if len(logical_axes) != len(shape):
    raise ValueError(
      f"Parameter of shape {tuple(shape)} got logical axes "
      f"{tuple(logical_axes)} of a different length."
    )
  return nnx.Param(
    init_fn(key, tuple(shape), dtype), **{LOGICAL_AXES_KEY: tuple(logical_axes)}
  )


def variable_logical_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
  """The logical names of a variable (all ``None`` if it declares none)."""
  meta = variable.get_metadata()
  axes = meta.get(LOGICAL_AXES_KEY)
  if axes is None:
    return (None,) * len(getattr(variable.get_value(), "shape", ()))
  return tuple(axes)


def state_specs(tree: Any, mesh: Any = None, rules=None) -> Any:
  """``PartitionSpec`` for each variable of an (abstract) nnx state/module."""

  def spec_of(v):
    if isinstance(v, nnx.Variable):
      shape = getattr(v.get_value(), "shape", None)
      if shape is None:
        return v.replace(None)
      return v.replace(
        logical_to_spec(variable_logical_axes(v), shape, mesh, rules)
      )
    return P() if hasattr(v, "shape") else None

  return jax.tree.map(
    spec_of, tree, is_leaf=lambda v: isinstance(v, nnx.Variable)
  )


def state_shardings(tree: Any, mesh: Mesh, rules=None) -> Any:
  """``NamedSharding`` for each variable of an (abstract) nnx state."""
  specs = state_specs(tree, mesh, rules)
  return jax.tree.map(
    lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P)
  )


def abstract_model(ctor: Callable[[], M]) -> M:
  """Builds a module with shapes only (no memory): ``nnx.eval_shape``."""
  return nnx.eval_shape(ctor)


def abstract_state(ctor: Callable[[], Any], mesh: Mesh, rules=None):
  """``(graphdef, state)`` with ``ShapeDtypeStruct`` leaves that carry their
  target shardings; the restore target for Orbax."""
  graphdef, state = nnx.split(abstract_model(ctor))
  shardings = state_shardings(state, mesh, rules)
  state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    state,
    shardings,
  )
  return graphdef, state


def create_sharded(ctor: Callable[[], M], mesh: Mesh, rules=None) -> M:
  """Initialises a module straight into its shardings.

  The module is first built abstractly, its shardings are derived from the
  logical names, and a jitted constructor with ``out_shardings`` materialises
  each parameter only as its shards: the full model never sits on one device.
  """
  graphdef, abs_state = nnx.split(abstract_model(ctor))
  shardings = state_shardings(abs_state, mesh, rules)

  def init():
    return nnx.split(ctor())[1]

  with use_mesh(mesh):
    state = jax.jit(init, out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def reshard_module(module: Any, mesh: Mesh, rules=None) -> Any:
  """Moves an existing module's state onto ``mesh`` by its logical names."""
  graphdef, state = nnx.split(module)
  shardings = state_shardings(state, mesh, rules)
  return nnx.merge(graphdef, jax.device_put(state, shardings))


# ---------------------------------------------------------------------------
# Data: process-local batches to global arrays.


def batch_spec(x: Any, mesh: Mesh, logical_batch_axis: str = "act_batch") -> P:
  """Spec that shards only the leading (batch) axis of ``x``."""
  ndim = np.ndim(x)
  return logical_to_spec(
    (logical_batch_axis,) + (None,) * (ndim - 1), None, mesh
  )


class IndivisibleBatchError(ValueError):
  """A global batch that the mesh's batch axes do not divide."""


def fit_batch_axes(
  sizes: Mapping[str, int],
  global_batch_size: int,
  batch_axes: Sequence[str] = ("data", "fsdp"),
) -> dict[str, int]:
  """Mesh axis sizes whose batch axes divide ``global_batch_size``.

  Each batch axis keeps the share of its devices that the batch still
  divides (``gcd``); the devices it gives up move to ``sequence`` (context
  parallelism), so the mesh keeps its device count. With
  ``FSDP_OVER_SEQUENCE_RULES`` the weights stay sharded over all of them.
  ``sizes`` must be resolved (no ``-1``).
  """
  new = {name: int(sizes.get(name, 1)) for name in MESH_AXES}
  left, spare = max(int(global_batch_size), 1), 1
  for axis in batch_axes:
    keep = math.gcd(new[axis], left)
    left //= keep
    spare *= new[axis] // keep
    new[axis] = keep
  new["sequence"] *= spare
  return new


def suggest_batch_mesh(
  global_batch_size: int,
  mesh: Mesh,
  batch_axes: Sequence[str] = ("data", "fsdp"),
) -> str:
  """Which mesh fits a batch (``fit_batch_axes``), as config flags."""
  sizes = _mesh_axis_sizes(mesh)
  new = fit_batch_axes(sizes, global_batch_size, batch_axes)
  flags = " ".join(f"--config.mesh.{k}={v}" for k, v in new.items())
  return (
    f"use a global batch that is a multiple of "
    f"{math.prod(sizes[a] for a in batch_axes)}, or the mesh {flags} "
    f"with sharding rules FSDP_OVER_SEQUENCE_RULES (the real-size "
    f"configs' default) so the weights stay sharded over every device"
  )


def check_global_batch(
  global_batch_size: int, mesh: Mesh, logical_batch_axis: str = "act_batch"
) -> int:
  """Checks that the batch divides over its mesh axes and the processes.

  Returns:
    The per-process batch size.
  """
  spec = logical_to_spec((logical_batch_axis,), None, mesh)
  axes = _as_tuple(spec[0])
  sizes = _mesh_axis_sizes(mesh)
  shards = math.prod(sizes[a] for a in axes)
  if global_batch_size % shards:
    raise IndivisibleBatchError(
      f"Global batch size {global_batch_size} is not divisible by the "
      f"{shards} batch shards of mesh axes {axes} (mesh {sizes}); "
      f"{suggest_batch_mesh(global_batch_size, mesh, axes)}."
    )
  if global_batch_size % jax.process_count():
    raise ValueError(
      f"Global batch size {global_batch_size} must be divisible by the "
      f"{jax.process_count()} processes."
    )
  return global_batch_size // jax.process_count()


def host_to_global(
  batch: Any, mesh: Mesh, logical_batch_axis: str = "act_batch"
) -> Any:
  """Turns a process-local numpy batch (a pytree) into global jax arrays.

  Each process passes its own slice of the global batch along axis 0; the
  result is sharded over the batch axes of ``mesh``. Safe on one or many
  hosts (``jax.make_array_from_process_local_data``).
  """

  leaves = jax.tree.leaves(batch)
  if leaves and np.ndim(leaves[0]):
    check_global_batch(
      np.shape(leaves[0])[0] * jax.process_count(), mesh, logical_batch_axis
    )

  def to_global(x):
    x = np.asarray(x)
    sharding = NamedSharding(mesh, batch_spec(x, mesh, logical_batch_axis))
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(to_global, batch)


def global_to_host(tree: Any) -> Any:
  """The whole value of every array in ``tree`` as numpy, on every process.

  ``np.asarray`` of a global array fails on a multi-host mesh unless every
  shard is on this process (or it is fully replicated); such arrays are
  gathered first (``multihost_utils.process_allgather``, a collective:
  every process must call this together).
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def to_host(x):
    if (
      isinstance(x, jax.Array)
      and not x.is_fully_addressable
      and not x.is_fully_replicated
    ):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(to_host, tree)
