"""The record format stored in ArrayRecord shards, and shard writing.

A record is a flat dict of str, int, float, bytes and numpy-array fields. It
is serialised as a small JSON header (field names, types, dtypes, shapes and
offsets) followed by the raw payloads, so that encoded videos are stored
verbatim and no pickle is ever read back (records may come from anywhere a
training job can reach).

Layout: magic `KJR1`, uint32 little-endian header length, JSON header,
payload bytes.
"""

import json
import struct
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np
from etils import epath

MAGIC = b"KJR1"
SHARD_SUFFIX = ".array_record"

Record = dict[str, Any]


class RecordFormatError(ValueError):
  """Raised when bytes are not a record of this format."""


def serialize(record: Mapping[str, Any]) -> bytes:
  """Serialises a flat record to bytes (see the module docstring)."""
  header = {}
  payloads = []
  offset = 0
  for name, value in record.items():
    if isinstance(value, (bool, np.bool_)):
      header[name] = {"type": "bool", "value": bool(value)}
      continue
    if isinstance(value, (int, np.integer)):
      header[name] = {"type": "int", "value": int(value)}
      continue
    if isinstance(value, (float, np.floating)):
      header[name] = {"type": "float", "value": float(value)}
      continue
    if isinstance(value, str):
      header[name] = {"type": "str", "value": value}
      continue
    if isinstance(value, (bytes, bytearray, memoryview)):
      data = bytes(value)
      entry = {"type": "bytes"}
    elif isinstance(value, np.ndarray):
      if value.dtype.hasobject:
        raise TypeError(f"field {name!r}: object arrays cannot be stored")
      data = np.ascontiguousarray(value).tobytes()
      entry = {
        "type": "array",
        "dtype": _dtype_name(value.dtype),
        "shape": list(value.shape),
      }
    else:
      raise TypeError(f"field {name!r}: cannot store a {type(value).__name__}")
    entry.update(offset=offset, length=len(data))
    header[name] = entry
    payloads.append(data)
    offset += len(data)
  header_bytes = json.dumps(header, separators=(",", ":")).encode()
  return b"".join(
    [MAGIC, struct.pack("<I", len(header_bytes)), header_bytes, *payloads]
  )


def deserialize(data: bytes) -> Record:
  """Inverse of `serialize`; arrays are read-only views into `data`."""
  if data[:4] != MAGIC:
    raise RecordFormatError(
      f"not a kiwi_jax record (magic {bytes(data[:4])!r}, want {MAGIC!r})"
    )
  (header_length,) = struct.unpack("<I", data[4:8])
  header = json.loads(bytes(data[8 : 8 + header_length]))
  base = 8 + header_length
  view = memoryview(data)
  record = {}
  for name, entry in header.items():
    kind = entry["type"]
    if kind in ("bool", "int", "float", "str"):
      record[name] = entry["value"]
      continue
    start = base + entry["offset"]
    chunk = view[start : start + entry["length"]]
    if kind == "bytes":
      record[name] = bytes(chunk)
    else:
      record[name] = np.frombuffer(
        chunk, dtype=_dtype_from_name(entry["dtype"])
      ).reshape(entry["shape"])
  return record


def _dtype_name(dtype: np.dtype) -> str:
  # ml_dtypes types (bfloat16, float8_*) have an opaque `.str` ("<V2").
  return dtype.name if dtype.kind == "V" else dtype.str


def _dtype_from_name(name: str) -> np.dtype:
  if hasattr(ml_dtypes, name):
    return np.dtype(getattr(ml_dtypes, name))
  return np.dtype(name)


def write_shards(
  records: Iterable[bytes],
  out_dir: str | epath.Path,
  *,
  prefix: str,
  num_shards: int,
) -> list[epath.Path]:
  """Writes serialised records round-robin into `num_shards` ArrayRecord files.

  Each shard is written under a temporary name and renamed once complete, so
  a crash leaves no half-written shard under the final name.

  Returns:
    The final shard paths, `<prefix>-0000X-of-0000N.array_record`.
  """
  # Imported on use: readers go through grain and need only the module.
  from array_record.python import array_record_module

  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  out_dir = epath.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  finals = [
    out_dir / f"{prefix}-{i:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"
    for i in range(num_shards)
  ]
  # ArrayRecordWriter writes local files only: for remote directories (gs://)
  # the shards are written to a local scratch directory and copied over.
  local = _is_local(out_dir)
  scratch = None if local else tempfile.TemporaryDirectory()
  temps = [
    (p.parent if local else epath.Path(scratch.name)) / (p.name + ".tmp")
    for p in finals
  ]
  # group_size:1 makes every record its own chunk: random access reads one
  # record, not a group of them (the right trade for large video records).
  writers = [
    array_record_module.ArrayRecordWriter(str(t), "group_size:1") for t in temps
  ]
  try:
    for i, record in enumerate(records):
      writers[i % num_shards].write(record)
  except BaseException:
    for writer, temp in zip(writers, temps):
      writer.close()
      temp.unlink(missing_ok=True)
    raise
  for writer in writers:
    writer.close()
  for temp, final in zip(temps, finals):
    if local:
      temp.rename(final)
    else:
      staged = final.parent / (final.name + ".tmp")
      temp.copy(staged, overwrite=True)
      staged.rename(final)
  if scratch is not None:
    scratch.cleanup()
  return finals


def _is_local(path: epath.Path) -> bool:
  return "://" not in str(path)


def shard_paths(path: str | epath.Path) -> list[str]:
  """The ArrayRecord shards of a directory (sorted), or the single file."""
  path = epath.Path(path)
  if path.is_dir():
    shards = sorted(str(p) for p in path.glob(f"*{SHARD_SUFFIX}"))
    if not shards:
      raise FileNotFoundError(f"{path}: no *{SHARD_SUFFIX} shards")
    return shards
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such record file or directory")
  return [str(path)]
