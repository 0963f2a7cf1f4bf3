"""Refusing eval outputs that resolve to one of the inputs.

A benchmark has hundreds of inputs (sources, references, outputs being
judged) and outputs; comparing every pair with `same_file` would stat
each path hundreds of times. The inputs are indexed once by where they
resolve to and by (device, inode) for those that exist; only an output
that meets an input there is handed to
`kiwi_jax.utils.paths.refuse_inputs_as_outputs`, which raises its usual
message. Folder outputs (none of eval's outputs replaces a folder) are
compared as paths.
"""

import os
import pathlib
from collections.abc import Iterable

from kiwi_jax.utils import paths

Named = tuple[str, str | None]


def _identities(path: str) -> list[tuple]:
  ids: list[tuple] = [('path', pathlib.Path(path).resolve(strict=False))]
  try:
    stat = os.stat(path)
  except OSError:
    return ids
  return ids + [('inode', stat.st_dev, stat.st_ino)]


def refuse_outputs_over_inputs(outputs: Iterable[Named],
                               inputs: Iterable[Named]) -> None:
  """Raises `paths.OutputIsInputError` when an output is an input.

  Args:
    outputs: `(flag or name, path)` of every file or folder written.
    inputs: `(flag or name, path)` of everything read.
  """
  index: dict[tuple, Named] = {}
  for name, path in inputs:
    if path:
      for identity in _identities(path):
        index.setdefault(identity, (name, path))
  for name, path in outputs:
    if not path:
      continue
    for identity in _identities(path):
      if identity in index:
        paths.refuse_inputs_as_outputs(outputs=[(name, path)],
                                       inputs=[index[identity]])
