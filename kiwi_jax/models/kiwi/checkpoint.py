"""Kiwi-Edit checkpoints: write a converted directory atomically; load any
Kiwi-Edit directory sharded (:func:`load`, the one loader).

A converted release (what ``python -m converters.convert`` writes)::

  <dir>/kiwi_config.json        KiwiEditConfig.to_dict()
  <dir>/conversion_report.json  where each component came from / absent
  <dir>/params/                 Orbax checkpoint of nnx.state(KiwiEdit)
  <dir>/processor/              tokenizer + processor files, qwen_config.json

A train.py workdir of a Kiwi-Edit run (``KiwiTask.write_model_files``)::

  <dir>/kiwi_config.json        the trained model's config
  <dir>/processor/              its tokenizer files
  <dir>/checkpoints/<step>/     the trainer's checkpoints (newest is loaded)

The directory is assembled under a temporary name next to its destination
and renamed into place only when complete, so a failure leaves nothing
behind. Loading builds the model abstractly and restores every parameter
straight into its sharding (no full copy on one device).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.models.kiwi.model import KiwiEdit, abstract_kiwi
from kiwi_jax.utils.atomic import atomic_directory

CONFIG_FILE = "kiwi_config.json"
REPORT_FILE = "conversion_report.json"
PARAMS_DIR = "params"
PROCESSOR_DIR = "processor"
TRAIN_CHECKPOINTS_DIR = "checkpoints"


def _write_json(obj: Any, path: pathlib.Path) -> None:
  path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save(
  model_state: nnx.State,
  cfg: KiwiEditConfig,
  directory: str | os.PathLike,
  *,
  processor_files: Mapping[str, str | os.PathLike] = (),
  processor_json: Mapping[str, Any] = (),
  report: Mapping[str, Any] | None = None,
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes a loadable Kiwi-Edit directory atomically.

  Args:
    model_state: ``nnx.state(model)`` (arrays, possibly sharded).
    cfg: the model config.
    directory: destination.
    processor_files: file name -> source path, copied into ``processor/``.
    processor_json: file name -> JSON-able object written into
      ``processor/`` (e.g. ``qwen_config.json``).
    report: JSON-able conversion report.
    overwrite: replace an existing ``directory``.

  Returns:
    The final directory.
  """
  directory = pathlib.Path(directory)
  with atomic_directory(directory, overwrite) as tmp:
    _write_json(cfg.to_dict(), tmp / CONFIG_FILE)
    _write_json(dict(report or {}), tmp / REPORT_FILE)
    proc = tmp / PROCESSOR_DIR
    proc.mkdir()
    for name, src in dict(processor_files).items():
      shutil.copyfile(src, proc / name)
    for name, obj in dict(processor_json).items():
      _write_json(obj, proc / name)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / PARAMS_DIR, model_state)
    checkpointer.wait_until_finished()
    checkpointer.close()
  return directory.absolute()


def load_config(directory: str | os.PathLike) -> KiwiEditConfig:
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(
      f"{path} is missing; {directory} is not a converted Kiwi-Edit directory."
    )
  return KiwiEditConfig.from_dict(json.loads(path.read_text()))


def is_checkpoint(directory: str | os.PathLike) -> bool:
  """Whether ``directory`` holds a Kiwi-Edit model :func:`load` opens."""
  path = pathlib.Path(directory)
  return (path / CONFIG_FILE).is_file() and (
    (path / PARAMS_DIR).is_dir() or (path / TRAIN_CHECKPOINTS_DIR).is_dir()
  )


def load(
  directory: str | os.PathLike,
  *,
  mesh=None,
  rules=None,
  config: KiwiEditConfig | None = None,
) -> KiwiEdit:
  """Restores a Kiwi-Edit directory into a :class:`KiwiEdit`.

  Args:
    directory: a converted directory (:func:`save`, the converter) or a
      train.py workdir of a Kiwi-Edit run (its newest checkpoint; the
      trainable and frozen parameters are merged back into one model).
    mesh: shard every parameter by its logical axes on this mesh (default:
      a one-device mesh).
    rules: logical-axis rules (default: ``sharding.LOGICAL_AXIS_RULES``).
    config: overrides the stored config (e.g. other compute dtypes); its
      parameter shapes must match.

  Raises:
    FileNotFoundError: no config file or no weights.
    ValueError: the weights do not fit the config (missing, unexpected and
      mis-shaped parameters listed together).
  """
  directory = pathlib.Path(directory).absolute()
  cfg = config or load_config(directory)
  mesh = mesh or sharding.make_mesh({"data": 1}, jax.devices()[:1])
  graphdef, abstract = abstract_kiwi(cfg)
  shardings = sharding.state_shardings(abstract, mesh, rules)
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    abstract,
    shardings,
  )
  if (directory / PARAMS_DIR).is_dir():
    checkpointer = ocp.StandardCheckpointer()
    state = checkpointer.restore(directory / PARAMS_DIR, abstract)
    checkpointer.close()
    return nnx.merge(graphdef, state)
  if not (directory / TRAIN_CHECKPOINTS_DIR).is_dir():
    raise FileNotFoundError(
      f"{directory} has {CONFIG_FILE} but no weights: expected "
      f"{PARAMS_DIR}/ (converted) or {TRAIN_CHECKPOINTS_DIR}/ (train.py)."
    )
  # pylint: disable-next=g-import-not-at-top
  from kiwi_jax.train_lib import checkpointing, train_state

  pure = nnx.to_pure_dict(abstract)
  paths, treedef = jax.tree_util.tree_flatten_with_path(pure)
  names = [train_state.path_name(p) for p, _ in paths]
  flat = checkpointing.read_weights(
    directory / TRAIN_CHECKPOINTS_DIR,
    dict(zip(names, jax.tree.leaves(pure))),
    what="checkpoint",
  )
  nnx.replace_by_pure_dict(
    abstract, jax.tree_util.tree_unflatten(treedef, [flat[n] for n in names])
  )
  return nnx.merge(graphdef, abstract)


def processor_dir(directory: str | os.PathLike) -> pathlib.Path:
  """Where the tokenizer / processor files of a converted model are."""
  return pathlib.Path(directory) / PROCESSOR_DIR


__all__ = [
  "atomic_directory",
  "is_checkpoint",
  "load",
  "load_config",
  "processor_dir",
  "save",
]
