"""Write files and folders atomically: a temporary name in the same
directory, then ``os.replace``. A crash or an exception leaves no partial
output behind.

Temporary names come from ``mkstemp``/``mkdtemp``, which create them with
modes 600/700. Before the rename the final file or folder gets the mode a
plain ``open()`` / ``mkdir()`` would have given under the process umask
(666 / 777 less the umask), so outputs are as readable as any other file
the user writes.

``write_bytes`` / ``write_text`` also take remote ``etils.epath`` paths
(``gs://...``): there the data goes to a unique hidden temporary name
beside the target, then ``replace`` (a concurrent writer, such as a retried
Beam bundle, never shares a temporary name).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def file_mode() -> int:
  """The mode ``open(path, "w")`` gives a new file: 0o666 less the umask."""
  return 0o666 & ~_umask()


def dir_mode() -> int:
  """The mode ``mkdir`` gives a new folder: 0o777 less the umask."""
  return 0o777 & ~_umask()


def apply_default_modes(path: str | os.PathLike) -> None:
  """Gives ``path`` (and, for a folder, everything under it that
  ``mkstemp``/``mkdtemp`` made private) the umask's default modes."""
  path = pathlib.Path(path)
  fmode, dmode = file_mode(), dir_mode()
  if not path.is_dir():
    os.chmod(path, fmode)
    return
  os.chmod(path, dmode)
  for root, dirs, files in os.walk(path):
    for name in dirs:
      p = os.path.join(root, name)
      if (os.stat(p).st_mode & 0o777) == 0o700:
        os.chmod(p, dmode)
    for name in files:
      p = os.path.join(root, name)
      if not os.path.islink(p) and (os.stat(p).st_mode & 0o777) == 0o600:
        os.chmod(p, fmode)


@contextlib.contextmanager
def atomic_path(
  path: str | os.PathLike, suffix: str | None = None
) -> Iterator[pathlib.Path]:
  """Yields a temporary path; renames it to ``path`` if the block succeeds.

  Args:
    path: the final file.
    suffix: suffix of the temporary file (default: ``path``'s, so writers
      that pick a format from the extension still work).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(
    dir=path.parent,
    prefix=f".{path.name}.",
    suffix=suffix if suffix is not None else path.suffix,
  )
  os.close(fd)
  tmp = pathlib.Path(tmp)
  try:
    yield tmp
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def is_remote(path) -> bool:
  """True for a URL-like path (``gs://...``) that pathlib cannot hold."""
  return "://" in str(path)


def write_bytes(path, data: bytes):
  """Writes ``data`` to ``path`` atomically (local or ``epath`` remote).

  Returns the path (a ``pathlib.Path``, or the ``epath.Path`` if remote).
  """
  if is_remote(path):
    from etils import epath

    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
      temp.write_bytes(data)
      temp.replace(path)
    finally:
      if temp.exists():
        temp.unlink()
    return path
  with atomic_path(path) as tmp:
    tmp.write_bytes(data)
  return pathlib.Path(path)


def write_text(path, text: str):
  """Writes UTF-8 ``text`` to ``path`` atomically."""
  return write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(
  path: str | os.PathLike, overwrite: bool = False
) -> Iterator[pathlib.Path]:
  """Yields a fresh temporary folder that becomes ``path`` on success.

  With ``overwrite``, an existing ``path`` is replaced whole: it is moved
  aside, the new folder renamed in, then the old one removed, so readers
  see either the old folder or the new one, never a mixture.

  Raises:
    FileExistsError: ``path`` exists and ``overwrite`` is False (checked
      before anything is written).
  """
  path = pathlib.Path(path).absolute()
  if path.exists() and not overwrite:
    raise FileExistsError(
      f"{path} already exists; pass overwrite=True (--overwrite) to replace it."
    )
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(
    tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-")
  )
  try:
    yield tmp
    apply_default_modes(tmp)
    old = None
    if path.exists():
      old = pathlib.Path(
        tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-")
      )
      os.replace(path, old / "x")
    os.replace(tmp, path)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
