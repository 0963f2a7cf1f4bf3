"""Write files atomically: a temporary name in the same directory, then
``os.replace``. A crash or an exception leaves no partial file behind."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike,
                suffix: str | None = None) -> Iterator[pathlib.Path]:
  """Yields a temporary path; renames it to ``path`` if the block succeeds.

  Args:
    path: the final file.
    suffix: suffix of the temporary file (default: ``path``'s, so writers
      that pick a format from the extension still work).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                             suffix=suffix if suffix is not None
                             else path.suffix)
  os.close(fd)
  tmp = pathlib.Path(tmp)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
