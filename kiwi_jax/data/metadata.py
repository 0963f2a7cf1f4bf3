"""Reading the reference's metadata: the three CSV formats and RefVIE parquet.

CSV (reference §6.1, `DATASET.md`): columns `src_video, tgt_video, prompt` (image
and video stages; image paths sit in the "video" columns) plus `ref_image`
(reference stage), in any order, paths relative to a base directory.

Parquet (reference §6.2, HF `linyq/kiwi_edit_training_data`): chunks with columns
`iid, prompt, src_video, tgt_video, ref_image_bytes`; the reference image is
stored inline, so it is carried as bytes instead of being exported to disk.

ArrayRecord shards (`kiwi_jax.data.record_builder`) hold the encoded source
and target themselves; `read_record_rows` carries them inline in the rows
(`src_bytes`/`tgt_bytes` with their media kinds), so consumers decode them
without writing temporary files.
"""

import csv
import dataclasses
import glob
import io
from collections.abc import Iterator, Sequence

from etils import epath

REQUIRED_CSV_COLUMNS = ("src_video", "tgt_video", "prompt")
OPTIONAL_CSV_COLUMNS = ("ref_image", "iid")
PARQUET_COLUMNS = ("iid", "prompt", "src_video", "tgt_video", "ref_image_bytes")
RECORD_FIELDS = (
  "key",
  "origin",
  "prompt",
  "src",
  "src_kind",
  "tgt",
  "tgt_kind",
)
MEDIA_KINDS = ("image", "video")


@dataclasses.dataclass(frozen=True)
class Row:
  """One edit sample as listed in the metadata.

  Attributes:
    key: a stable id (the parquet `iid`, or `<csv name>:<line>`).
    origin: where the row came from, for error messages.
    prompt: the edit instruction.
    src_video: source media path, relative to the base directory.
    tgt_video: target media path, relative to the base directory.
    ref_image: reference image path, or None.
    ref_image_bytes: inline reference image bytes (parquet), or None.
    src_bytes: inline encoded source media (ArrayRecord input), or None; when
      set, `src_video` only locates the record (`<shard>[<index>]:src`).
    tgt_bytes: inline encoded target media, or None (as `src_bytes`).
    src_kind: "image" | "video" of `src_bytes` (required with it).
    tgt_kind: "image" | "video" of `tgt_bytes` (required with it).
  """

  key: str
  origin: str
  prompt: str
  src_video: str
  tgt_video: str
  ref_image: str | None = None
  ref_image_bytes: bytes | None = None
  src_bytes: bytes | None = None
  tgt_bytes: bytes | None = None
  src_kind: str | None = None
  tgt_kind: str | None = None

  def __post_init__(self):
    for side in ("src", "tgt"):
      data, kind = getattr(self, f"{side}_bytes"), getattr(self, f"{side}_kind")
      if data is not None and kind not in MEDIA_KINDS:
        raise ValueError(
          f"{self.origin}: {side}_kind must be one of "
          f"{MEDIA_KINDS} with {side}_bytes, got {kind!r}"
        )

  @property
  def has_inline_media(self) -> bool:
    return self.src_bytes is not None or self.tgt_bytes is not None

  @property
  def has_ref(self) -> bool:
    return self.ref_image is not None or self.ref_image_bytes is not None


def read_csv_rows(csv_path: str | epath.Path) -> list[Row]:
  """Reads a reference-format CSV (header required, columns in any order).

  Raises:
    FileNotFoundError: there is no such file.
    ValueError: the file is not UTF-8 text, or a required column is missing
      from the header.
  """
  csv_path = epath.Path(csv_path)
  if not csv_path.exists():
    raise FileNotFoundError(f"{csv_path}: no such CSV file")
  if csv_path.is_dir():
    raise ValueError(f"{csv_path} is a folder; give the CSV file itself")
  try:
    text = csv_path.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(
      f"{csv_path}: not UTF-8 text (byte {e.start}); save the CSV as UTF-8"
    ) from e
  reader = csv.DictReader(io.StringIO(text))
  columns = reader.fieldnames or []
  missing = [c for c in REQUIRED_CSV_COLUMNS if c not in columns]
  if missing:
    raise ValueError(
      f"{csv_path}: missing column(s) {missing}; header is {columns}. "
      f"The header needs {', '.join(REQUIRED_CSV_COLUMNS)} (optional: "
      f"{', '.join(OPTIONAL_CSV_COLUMNS)}), in any order."
    )
  has_ref = "ref_image" in columns
  rows = []
  for row in reader:
    # Line numbers count the header as line 1, as editors show them.
    line = reader.line_num
    rows.append(
      Row(
        # An optional `iid` column (written by RefVIE-mini, ignored by the
        # reference loader) gives stable keys; else the file and line.
        key=(row.get("iid") or "").strip() or f"{csv_path.name}:{line}",
        origin=f"{csv_path}:{line}",
        prompt=(row["prompt"] or "").strip(),
        src_video=(row["src_video"] or "").strip(),
        tgt_video=(row["tgt_video"] or "").strip(),
        ref_image=(row["ref_image"] or "").strip() if has_ref else None,
      )
    )
  return rows


def check_parquet_chunks(paths: Sequence[str | epath.Path]) -> None:
  """Checks that every chunk exists, is parquet and has `PARQUET_COLUMNS`
  (reads only the footers).

  Raises:
    FileNotFoundError: a chunk does not exist.
    ValueError: a chunk is not parquet or lacks a column (all named).
  """
  # pylint: disable-next=g-import-not-at-top
  import pyarrow.parquet as pq

  for path in paths:
    path = epath.Path(path)
    if not path.exists():
      raise FileNotFoundError(f"{path}: no such parquet file")
    try:
      with path.open("rb") as f:
        names = pq.ParquetFile(f).schema_arrow.names
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is both
      raise ValueError(f"{path}: not a readable parquet file ({e})") from e
    missing = [c for c in PARQUET_COLUMNS if c not in names]
    if missing:
      raise ValueError(
        f"{path}: missing column(s) {missing}; columns are {names}. "
        f"RefVIE chunks have {', '.join(PARQUET_COLUMNS)}."
      )


def read_parquet_rows(
  paths: Sequence[str | epath.Path], batch_size: int = 256
) -> Iterator[Row]:
  """Streams rows from RefVIE parquet chunks (`chunk_*.parquet`).

  Every chunk is checked (`check_parquet_chunks`) when this is called,
  before the first row is read.

  Raises:
    FileNotFoundError, ValueError: as `check_parquet_chunks`.
  """
  paths = [epath.Path(p) for p in paths]
  check_parquet_chunks(paths)
  return _parquet_rows(paths, batch_size)


def _parquet_rows(
  paths: Sequence[epath.Path], batch_size: int
) -> Iterator[Row]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  for path in paths:
    with path.open("rb") as f:
      parquet = pq.ParquetFile(f)
      offset = 0
      for batch in parquet.iter_batches(
        batch_size=batch_size, columns=list(PARQUET_COLUMNS)
      ):
        for i, item in enumerate(batch.to_pylist()):
          yield Row(
            key=str(item["iid"]),
            origin=f"{path}[row {offset + i}, iid {item['iid']}]",
            prompt=(item["prompt"] or "").strip(),
            src_video=(item["src_video"] or "").strip(),
            tgt_video=(item["tgt_video"] or "").strip(),
            ref_image_bytes=_inline_bytes(item["ref_image_bytes"]),
          )
        offset += batch.num_rows


def record_shards(pattern: str | epath.Path) -> list[str]:
  """Shards of a record directory, a single shard, or a glob (sorted).

  Raises:
    FileNotFoundError: nothing matches.
  """
  # pylint: disable-next=g-import-not-at-top
  from kiwi_jax.data import records

  if glob.has_magic(str(pattern)):
    pattern = epath.Path(pattern)
    paths = sorted(str(p) for p in pattern.parent.glob(pattern.name))
    if not paths:
      raise FileNotFoundError(f"no record shard matches {pattern}")
    return paths
  return records.shard_paths(pattern)


def read_record_rows(paths: Sequence[str | epath.Path]) -> Iterator[Row]:
  """Streams rows with inline media from ArrayRecord shards written by
  `kiwi_jax.data.record_builder` (fields in `check_row`).

  A stored reference image is not carried (`ref_image_bytes` stays None).

  Raises:
    ValueError: a record is not in the record format or lacks one of
      `RECORD_FIELDS` (the shard and index are named).
  """
  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module

  from kiwi_jax.data import records

  # pylint: enable=g-import-not-at-top
  for path in paths:
    reader = array_record_module.ArrayRecordReader(str(path))
    try:
      for index in range(reader.num_records()):
        where = f"{path}[{index}]"
        try:
          record = records.deserialize(reader.read())
        except records.RecordFormatError as e:
          raise ValueError(f"{where}: {e}") from e
        missing = [f for f in RECORD_FIELDS if f not in record]
        if missing:
          raise ValueError(
            f"{where}: missing field(s) {missing}; fields are {sorted(record)}"
          )
        yield Row(
          key=str(record["key"]),
          origin=f"{where} (from {record['origin']})",
          prompt=record["prompt"].strip(),
          src_video=f"{where}:src",
          tgt_video=f"{where}:tgt",
          src_bytes=record["src"],
          tgt_bytes=record["tgt"],
          src_kind=record["src_kind"],
          tgt_kind=record["tgt_kind"],
        )
    finally:
      reader.close()


def _inline_bytes(value) -> bytes:
  # HF `Image` features store {"bytes": ..., "path": ...}; plain binary
  # columns store the bytes themselves. Every RefVIE row has a reference, so
  # a null becomes b"" and the row check reports it.
  if isinstance(value, dict):
    value = value.get("bytes")
  return b"" if value is None else bytes(value)
