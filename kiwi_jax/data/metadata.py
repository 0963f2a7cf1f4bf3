"""Reading the reference's metadata: the three CSV formats and RefVIE parquet.

CSV (spec 6.1, `DATASET.md`): columns `src_video, tgt_video, prompt` (image
and video stages; image paths sit in the "video" columns) plus `ref_image`
(reference stage), in any order, paths relative to a base directory.

Parquet (spec 6.2, HF `linyq/kiwi_edit_training_data`): chunks with columns
`iid, prompt, src_video, tgt_video, ref_image_bytes`; the reference image is
stored inline, so it is carried as bytes instead of being exported to disk.
"""

import csv
import dataclasses
import io
from typing import Iterator, Sequence

from etils import epath

REQUIRED_CSV_COLUMNS = ("src_video", "tgt_video", "prompt")
PARQUET_COLUMNS = ("iid", "prompt", "src_video", "tgt_video", "ref_image_bytes")


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
  """

  key: str
  origin: str
  prompt: str
  src_video: str
  tgt_video: str
  ref_image: str | None = None
  ref_image_bytes: bytes | None = None

  @property
  def has_ref(self) -> bool:
    return self.ref_image is not None or self.ref_image_bytes is not None


def read_csv_rows(csv_path: str | epath.Path) -> list[Row]:
  """Reads a reference-format CSV (header required, columns in any order).

  Raises:
    ValueError: a required column is missing from the header.
  """
  csv_path = epath.Path(csv_path)
  reader = csv.DictReader(io.StringIO(csv_path.read_text()))
  columns = reader.fieldnames or []
  missing = [c for c in REQUIRED_CSV_COLUMNS if c not in columns]
  if missing:
    raise ValueError(
        f"{csv_path}: missing column(s) {missing}; header is {columns}"
    )
  has_ref = "ref_image" in columns
  rows = []
  for row in reader:
    # Line numbers count the header as line 1, as editors show them.
    line = reader.line_num
    rows.append(Row(
        # An optional `iid` column (written by RefVIE-mini, ignored by the
        # reference loader) gives stable keys; else the file and line.
        key=(row.get("iid") or "").strip() or f"{csv_path.name}:{line}",
        origin=f"{csv_path}:{line}",
        prompt=(row["prompt"] or "").strip(),
        src_video=(row["src_video"] or "").strip(),
        tgt_video=(row["tgt_video"] or "").strip(),
        ref_image=(row["ref_image"] or "").strip() if has_ref else None,
    ))
  return rows


def read_parquet_rows(
    paths: Sequence[str | epath.Path], batch_size: int = 256
) -> Iterator[Row]:
  """Streams rows from RefVIE parquet chunks (`chunk_*.parquet`).

  Raises:
    ValueError: a chunk lacks one of `PARQUET_COLUMNS`.
  """
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  for path in paths:
    path = epath.Path(path)
    with path.open("rb") as f:
      parquet = pq.ParquetFile(f)
      names = parquet.schema_arrow.names
      missing = [c for c in PARQUET_COLUMNS if c not in names]
      if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; columns are {names}"
        )
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


def _inline_bytes(value) -> bytes:
  # HF `Image` features store {"bytes": ..., "path": ...}; plain binary
  # columns store the bytes themselves. Every RefVIE row has a reference, so
  # a null becomes b"" and the row check reports it.
  if isinstance(value, dict):
    value = value.get("bytes")
  return b"" if value is None else bytes(value)
