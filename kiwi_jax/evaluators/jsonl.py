"""JSON-lines reading (lenient, as the reference scorers) and atomic writing."""

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from kiwi_jax.evaluators import errors
from kiwi_jax.utils import atomic

NumberedLines = list[tuple[int, Any]]


def read_lines(path: str) -> tuple[NumberedLines, list[tuple[int, str]]]:
  """Parses a jsonl file, keeping line numbers.

  Args:
    path: the file.

  Returns:
    `(values, invalid)`: `(line_number, value)` for every valid line and
    `(line_number, message)` for every line that is not valid JSON (a line
    cut short by a killed writer included); blank lines are in neither.

  Raises:
    errors.InputError: the file is missing or is not UTF-8 text.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError as e:
    raise errors.InputError(f"{path}: no such file") from e
  except IsADirectoryError as e:
    raise errors.InputError(
      f"{path}: is a folder, expected a .jsonl file"
    ) from e
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b"\n") + 1
    raise errors.InputError(
      f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
      "save the file as UTF-8 JSON lines"
    ) from e
  values, invalid = [], []
  for line_number, line in enumerate(text.splitlines(), start=1):
    line = line.strip()
    if not line:
      continue
    try:
      values.append((line_number, json.loads(line)))
    except json.JSONDecodeError as e:
      invalid.append((line_number, f"not valid JSON: {e}"))
  return values, invalid


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

  Raises:
    errors.InputError: the file is missing (unless `missing_ok`) or is not
      UTF-8 text.
  """
  if missing_ok and not os.path.exists(path):
    return []
  values, invalid = read_lines(path)
  for line_number, message in invalid:
    logging.warning("%s:%d: skipping line: %s", path, line_number, message)
  return [value for _, value in values]


def write_atomic(path: str, values: Iterable[Any]) -> None:
  """Writes one JSON value per line under a temporary name, then renames."""
  write_text_atomic(
    path, "".join(json.dumps(v, default=str) + "\n" for v in values)
  )


def write_text_atomic(path: str, text: str) -> None:
  """Writes a text file (`kiwi_jax.utils.atomic`: umask modes, renamed)."""
  atomic.write_text(path, text)
