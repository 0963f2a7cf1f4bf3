"""The run config, declared once: every key the trainer reads, its default.

A config file (``configs/*.py``) starts from :func:`base_config`, the
trainer's keys with the defaults of :class:`TrainerConfig`, plus the task's
block (``kiwi_jax.tasks.kiwi_config``), and sets only values. Every key
is therefore in the locked ConfigDict, so ``--config.<key>=VALUE`` can set
it and a mistyped key is a one-line error (``config_overrides``).

The trainer and the task never read the ConfigDict key by key: each parses
its part once into frozen dataclasses (:meth:`TrainerConfig.from_config`,
``KiwiConfig.from_config``) and reads attributes.

Conventions of :func:`from_mapping` / :func:`to_config_dict`:

* a group (a nested dataclass) is a ConfigDict group; ``None`` or a missing
  group means its defaults;
* a ``Sequence[...]`` field is a list in the config (items can be set one by
  one: ``--config.kiwi.data.sources[0].weight=2``), a ``tuple[...]`` field a
  tuple; both parse to tuples;
* a field whose default is ``None`` is a typed placeholder in the config
  (``--config.peak_flops_per_chip=989e12`` reads a number);
* keys a dataclass does not declare are an error naming them, except at the
  top level, which also holds the task's blocks.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import types
import typing
from typing import Any

import ml_collections
from ml_collections import config_dict

from kiwi_jax import sharding
from kiwi_jax.train_lib.checkpointing import CheckpointConfig
from kiwi_jax.train_lib.optimizers import OptimizerConfig
from kiwi_jax.train_lib.profiling import ProfileConfig
from kiwi_jax.train_lib.train_state import Precision


class ConfigError(ValueError):
  """A run config value has the wrong type or an undeclared key."""


@dataclasses.dataclass(frozen=True)
class WandbConfig:
  """Attributes:
  project: wandb project ("" disables wandb).
  name: the run's name ("" lets wandb choose).
  """

  project: str = ""
  name: str = ""


def default_mesh() -> dict[str, int]:
  """Every device on ``data``: ``{data: -1, fsdp: 1, ...}``."""
  return {name: -1 if name == "data" else 1 for name in sharding.MESH_AXES}


def default_sharding_rules() -> list[tuple[str, Any]]:
  """The default logical-axis rules table (``sharding.LOGICAL_AXIS_RULES``)."""
  return [(name, axes) for name, axes in sharding.LOGICAL_AXIS_RULES]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainerConfig:
  """What ``trainer.train_and_evaluate`` reads (top-level config keys).

  Attributes:
    total_steps: micro-steps to train (required).
    seed: model init and step RNG seed.
    log_every: write metrics every this many steps (and at the end).
    log_first_steps: also log each of the first this many steps.
    mesh: sizes per mesh axis (``-1`` fills with the remaining devices).
    sharding_rules: the logical-axis rules, ``(name, mesh axes)`` pairs.
    fit_mesh_to_batch: give the devices of the batch axes (``data``,
      ``fsdp``) that the task's ``global_batch_size`` does not divide to
      ``sequence`` (``sharding.fit_batch_axes``), so one clip per step
      trains with context parallelism instead of failing to shard.
    optimizer, precision, checkpoint, profile, wandb: groups.
    resume: another run's step directory to resume from ("" none).
    model_init: weights to start from ("" none; see ``checkpointing``).
    tensorboard: write TensorBoard events.
    sample_every: call ``task.sample`` every this many steps (0 never).
    eval_every: call ``task.evaluate`` every this many steps (0 never).
    peak_flops_per_chip: for MFU (None: the device's table entry).
    compile_cache_dir: JAX's persistent compilation cache ("" : the
      environment's JAX_COMPILATION_CACHE_DIR, else <workdir>/jax_cache;
      "off": none; see ``kiwi_jax.utils.compile_cache``).
  """

  total_steps: int
  seed: int = 0
  log_every: int = 50
  log_first_steps: int = 10
  mesh: dict[str, int] = dataclasses.field(default_factory=default_mesh)
  sharding_rules: collections.abc.Sequence[tuple[str, Any]] = dataclasses.field(
    default_factory=default_sharding_rules
  )
  fit_mesh_to_batch: bool = False
  optimizer: OptimizerConfig = OptimizerConfig()
  precision: Precision = Precision()
  checkpoint: CheckpointConfig = CheckpointConfig()
  resume: str = ""
  model_init: str = ""
  profile: ProfileConfig = ProfileConfig()
  tensorboard: bool = True
  wandb: WandbConfig = WandbConfig()
  sample_every: int = 0
  eval_every: int = 0
  peak_flops_per_chip: float | None = None
  compile_cache_dir: str = ""

  def __post_init__(self):
    object.__setattr__(
      self, "sharding_rules", tuple(tuple(rule) for rule in self.sharding_rules)
    )

  @classmethod
  def from_config(cls, config: Any) -> TrainerConfig:
    """Parses the trainer's keys of a run config (others are the task's).

    ``None`` at the top level means the default (as an unset key does).

    Raises:
      ConfigError: a wrong type or an undeclared key (one line).
    """
    if isinstance(config, cls):
      return config
    return from_mapping(cls, config, ignore_unknown=True, none_is_default=True)


def _plain(values: Any) -> dict[str, Any]:
  if values is None:
    return {}
  if dataclasses.is_dataclass(values):
    return {f.name: getattr(values, f.name) for f in dataclasses.fields(values)}
  if hasattr(values, "to_dict"):
    return values.to_dict()
  if not isinstance(values, collections.abc.Mapping):
    raise ConfigError(f"expected a group of settings, got {values!r}")
  return dict(values)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def _optional_arg(hint: Any) -> Any:
  """``X`` of ``X | None`` (else ``hint``)."""
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1:
      return args[0]
  return hint


def _is_sequence_hint(hint: Any) -> bool:
  return typing.get_origin(hint) in (collections.abc.Sequence, tuple, list)


def _item_hint(hint: Any) -> Any:
  args = typing.get_args(hint)
  return args[0] if args and (len(args) == 1 or args[-1] is Ellipsis) else None


def _coerce(
  value: Any, hint: Any, key: str, none_is_default: bool = False
) -> Any:
  """``value`` as the declared type of ``key``."""
  if value is None:
    return None
  hint = _optional_arg(hint)
  kind = getattr(hint, "__name__", hint)
  bad = ConfigError(f"config key {key} expects {kind}; got {value!r}.")
  if dataclasses.is_dataclass(hint):
    return from_mapping(
      hint, value, where=f"{key}.", none_is_default=none_is_default
    )
  if hint is bool:
    if not isinstance(value, (bool, int)):
      raise bad
    return bool(value)
  if hint is int:
    if (
      isinstance(value, bool)
      or not isinstance(value, int)
      and not (isinstance(value, float) and value.is_integer())
    ):
      raise bad
    return int(value)
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise bad
    return float(value)
  if hint is str:
    if not isinstance(value, str):
      raise bad
    return value
  if typing.get_origin(hint) is dict:
    return _plain(value)
  if _is_sequence_hint(hint):
    if isinstance(value, (str, bytes)) or not isinstance(
      value, collections.abc.Sequence
    ):
      raise bad
    item = _item_hint(hint)
    if item is None:
      return tuple(value)
    return tuple(
      _coerce(v, item, f"{key}[{i}]", none_is_default)
      for i, v in enumerate(value)
    )
  return value


def from_mapping(
  cls: type,
  values: Any,
  *,
  where: str = "",
  ignore_unknown: bool = False,
  none_is_default: bool = False,
) -> Any:
  """A ``cls`` dataclass from a (ConfigDict) mapping, types checked.

  Missing keys take the defaults, and so do ``None`` values with
  ``none_is_default`` (in nested groups too); a nested dataclass field
  parses with its own ``from_mapping`` when it has one (its checks apply).

  Raises:
    ConfigError: an undeclared key (unless ``ignore_unknown``), a missing
      required key, or a value of the wrong type, named by its dotted key.
  """
  values = _plain(values)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown and not ignore_unknown:
    raise ConfigError(
      f"undeclared config keys {[where + k for k in unknown]}"
      f"; {cls.__name__} declares {sorted(fields)}."
    )
  hints = _hints(cls)
  kwargs = {}
  for name in fields:
    if name not in values or (values[name] is None and none_is_default):
      continue
    hint = _optional_arg(hints[name])
    value = values[name]
    if dataclasses.is_dataclass(hint) and value is None:
      continue  # a group set to None: its defaults
    if dataclasses.is_dataclass(hint) and hasattr(hint, "from_mapping"):
      try:
        kwargs[name] = hint.from_mapping(value)
      except (TypeError, ValueError) as e:
        raise ConfigError(f"config group {where}{name}: {e}") from None
      continue
    kwargs[name] = _coerce(value, hints[name], where + name, none_is_default)
  missing = [
    n
    for n, f in fields.items()
    if n not in kwargs
    and f.default is dataclasses.MISSING
    and f.default_factory is dataclasses.MISSING
  ]
  if missing:
    raise ConfigError(
      f"config keys {[where + n for n in missing]} are required."
    )
  try:
    return cls(**kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config {where or 'keys'}: {e}") from None


def _placeholder(hint: Any) -> Any:
  base = _optional_arg(hint)
  if base in (int, float, str, bool):
    return config_dict.placeholder(base)
  return None


def _to_config_value(value: Any, hint: Any, in_list: bool = False) -> Any:
  if dataclasses.is_dataclass(value):
    # Items of a list stay plain dicts (ConfigDict leaves lists alone).
    return to_config_dict(value).to_dict() if in_list else to_config_dict(value)
  if value is None:
    return None if in_list else _placeholder(hint)
  if isinstance(value, (list, tuple)):
    item = _item_hint(_optional_arg(hint))
    items = [_to_config_value(v, item, in_list=True) for v in value]
    as_list = typing.get_origin(_optional_arg(hint)) in (
      collections.abc.Sequence,
      list,
    )
    return items if as_list else tuple(items)
  if isinstance(value, collections.abc.Mapping):
    return dict(value)
  return value


def to_config_dict(obj: Any) -> ml_collections.ConfigDict:
  """A dataclass instance as a ConfigDict declaring all of its keys."""
  hints = _hints(type(obj))
  return ml_collections.ConfigDict(
    {
      f.name: _to_config_value(getattr(obj, f.name), hints[f.name])
      for f in dataclasses.fields(obj)
    }
  )


def as_dict(config: Any) -> dict[str, Any]:
  """A run config (ConfigDict, mapping or dataclass) as a plain dict."""
  if dataclasses.is_dataclass(config):
    return dataclasses.asdict(config)
  return _plain(config)


def base_config(
  *, total_steps: int, **blocks: Any
) -> ml_collections.ConfigDict:
  """Every trainer key with its default, plus ``blocks`` (``task="kiwi"``,
  ``kiwi=KiwiConfig(...)``: dataclasses become groups). Unlocked: the
  config file sets its values, then locks it."""
  config = to_config_dict(TrainerConfig(total_steps=total_steps))
  for name, value in blocks.items():
    config[name] = (
      to_config_dict(value) if dataclasses.is_dataclass(value) else value
    )
  return config
