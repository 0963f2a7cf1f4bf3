"""Guards for the paths a command writes: never over one of its inputs.

Every command that writes (``kiwi-edit``, ``eval.py``, the record builder,
the converters, RefVIE construction) calls :func:`refuse_inputs_as_outputs`
with its outputs and inputs before it does any work. An output "is" an
input when both name the same file on disk: through ``./``, ``..``, a
symlink or a hard link (same device and inode), or, for an output folder
that the command replaces or fills, when an input lies inside it.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

PathLike = str | os.PathLike


class OutputIsInputError(ValueError):
  """An output path would overwrite one of the command's inputs."""


def _is_remote(path: PathLike) -> bool:
  return "://" in os.fspath(path)


def same_file(a: PathLike, b: PathLike) -> bool:
  """True when ``a`` and ``b`` are the same file or folder on disk."""
  if _is_remote(a) or _is_remote(b):
    return os.fspath(a).rstrip("/") == os.fspath(b).rstrip("/")
  try:
    return os.path.samefile(a, b)
  except OSError:  # one does not exist (yet): compare where they point
    return pathlib.Path(a).resolve(strict=False) == pathlib.Path(b).resolve(
      strict=False
    )


def inside(path: PathLike, folder: PathLike) -> bool:
  """True when ``path`` is ``folder`` or lies (after resolving) under it."""
  if _is_remote(path) or _is_remote(folder):
    return (os.fspath(path).rstrip("/") + "/").startswith(
      os.fspath(folder).rstrip("/") + "/"
    )
  if same_file(path, folder):
    return True
  target = pathlib.Path(path).resolve(strict=False)
  root = pathlib.Path(folder).resolve(strict=False)
  return root in target.parents


def _identities(path: PathLike) -> list[tuple]:
  """Where ``path`` resolves to, and its (device, inode) when it exists."""
  if _is_remote(path):
    return [("path", os.fspath(path).rstrip("/"))]
  ids: list[tuple] = [("path", pathlib.Path(path).resolve(strict=False))]
  try:
    st = os.stat(path)
  except OSError:
    return ids
  return ids + [("inode", st.st_dev, st.st_ino)]


def refuse_inputs_as_outputs(
  outputs: Iterable[tuple[str, PathLike | None]],
  inputs: Iterable[tuple[str, PathLike | None]],
  *,
  folders: Iterable[str] = (),
) -> None:
  """Raises when an output would overwrite an input.

  The inputs are indexed once by where they resolve to and by inode, so a
  benchmark of thousands of files costs one ``stat`` per path, not one per
  pair.

  Args:
    outputs: ``(flag or name, path)`` pairs of what the command writes;
      ``None`` paths are skipped.
    inputs: ``(flag or name, path)`` pairs of what the command reads.
    folders: names of the outputs that are folders the command fills or
      replaces; an input anywhere under one of them is refused too.

  Raises:
    OutputIsInputError: naming both flags and paths.
  """
  outputs = [(n, p) for n, p in outputs if p is not None and os.fspath(p)]
  inputs = [(n, p) for n, p in inputs if p is not None and os.fspath(p)]
  folders = set(folders)
  index: dict[tuple, tuple[str, PathLike]] = {}
  for name, src in inputs:
    for identity in _identities(src):
      index.setdefault(identity, (name, src))
  for out_name, out in outputs:
    for identity in _identities(out):
      if identity in index:
        in_name, src = index[identity]
        raise OutputIsInputError(
          f"{out_name} {os.fspath(out)} is the same file as {in_name} "
          f"{os.fspath(src)}; writing it would destroy the input. Choose "
          "another output path."
        )
    if out_name not in folders:
      continue
    for in_name, src in inputs:
      if inside(src, out):
        raise OutputIsInputError(
          f"{in_name} {os.fspath(src)} lies inside the output folder "
          f"{out_name} {os.fspath(out)}, which this command replaces. "
          "Choose an output folder outside the inputs."
        )
