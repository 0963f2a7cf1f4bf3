"""JSON-lines reading (lenient, as the reference scorers) and atomic writing."""

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from kiwi_jax.utils import atomic


def read(path: str, missing_ok: bool = False) -> list[Any]:
  """Parses a jsonl file, skipping blank and invalid lines.

  The reference's `avg_score_by_edited_type` skips a line that is not valid
  JSON (with a message) instead of failing; so do we, with a warning naming
  the line. A line cut short by a killed writer is skipped the same way.

  Args:
    path: the file.
    missing_ok: return [] when the file does not exist.

  Returns:
    The parsed values, in file order.
  """
  if missing_ok and not os.path.exists(path):
    return []
  values = []
  with open(path, encoding='utf-8') as f:
    for line_number, line in enumerate(f, start=1):
      line = line.strip()
      if not line:
        continue
      try:
        values.append(json.loads(line))
      except json.JSONDecodeError as e:
        logging.warning('%s:%d: skipping invalid JSON: %s', path, line_number,
                        e)
  return values


def write_atomic(path: str, values: Iterable[Any]) -> None:
  """Writes one JSON value per line under a temporary name, then renames."""
  write_text_atomic(
      path, ''.join(json.dumps(v, default=str) + '\n' for v in values))


def write_text_atomic(path: str, text: str) -> None:
  """Writes a text file under a temporary name, then renames."""
  with atomic.atomic_path(path) as tmp:
    tmp.write_text(text, encoding='utf-8')
