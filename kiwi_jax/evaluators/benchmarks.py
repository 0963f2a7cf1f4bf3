"""Readers for OpenVE-Bench and RefVIE-Bench, with the reference's names.

`test_benchmark.py` of the reference reads the benchmark files and names its
outputs so that `eval_openve_gemini.py` / `eval_refvie_gemini.py` find them;
the readers here produce the same output names so that either scorer can be
pointed at our outputs.

* OpenVE-Bench: a CSV with columns `original_video`, `prompt`,
  `edited_type`; rows of the skipped categories are left out; the output of
  row `original_video=a/b/x.mp4` is `x_edited.mp4`.
* RefVIE-Bench: a YAML list of `{src_video, instruction, ref_img,
  edit_type}`; the output of item `idx` is
  `f"{idx}_{instruction[:10]}_{basename(src_video)}"`.

Both keep the row index of the file (skipped rows included), because the
reference shards work across processes by that index.

An optional `tgt_video` column (CSV) or key (YAML), named like the training
CSVs, gives a ground-truth video for the offline metrics (RefVIE-mini).
"""

import csv
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from kiwi_jax.evaluators import rubrics

OPENVE_COLUMNS = ("original_video", "prompt", "edited_type")
REFVIE_KEYS = ("src_video", "instruction", "ref_img", "edit_type")


@dataclasses.dataclass(frozen=True)
class BenchmarkItem:
  """One benchmark sample.

  Attributes:
    index: row index in the benchmark file (skipped rows counted).
    output_name: file name of the edited video inside the save directory.
    source_video: path of the source video.
    instruction: the edit instruction.
    edit_type: `edited_type` (OpenVE) or `edit_type` (RefVIE).
    reference_image: path of the reference image; None for OpenVE and in
      prompt-only mode.
    target_video: path of a ground-truth edited video, if the file has one.
    raw: the row or item as read from the file.
  """

  index: int
  output_name: str
  source_video: str
  instruction: str
  edit_type: str
  reference_image: str | None = None
  target_video: str | None = None
  raw: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _join(data_root: str, path: str) -> str:
  # The reference concatenates strings (`data_root + path`); os.path.join
  # gives the same path for a root ending in '/' or an empty root, and a
  # sensible one for a root given without the trailing slash.
  return os.path.join(data_root, path) if data_root else path


def openve_output_name(original_video: str) -> str:
  """`x.mp4` -> `x_edited.mp4`, as `test_benchmark.test_openvebench`."""
  return original_video.split("/")[-1].replace(".mp4", "_edited.mp4")


def refvie_output_name(index: int, instruction: str, src_video: str) -> str:
  """Output name of RefVIE item `index`, as `test_refvie_bench`.

  The first ten characters of the instruction are used as they are; one
  holding a '/' names a subdirectory, as it would in the reference.
  """
  return f"{index}_{instruction[:10]}_{src_video.split('/')[-1]}"


def read_openve(
  csv_path: str,
  data_root: str = "",
  skipped_types: Sequence[str] = rubrics.OPENVE_SKIPPED_TYPES,
) -> list[BenchmarkItem]:
  """Reads the OpenVE-Bench CSV, skipping the reference's skipped types.

  Args:
    csv_path: path of `benchmark_videos.csv`.
    data_root: directory that `original_video` paths are relative to (the
      reference uses `./benchmark/`).
    skipped_types: `edited_type` values left out (default: the three that
      Kiwi-Edit skips; the benchmark's own scorer skips none).

  Returns:
    The kept rows, in file order.

  Raises:
    ValueError: a required column is missing.
  """
  with open(csv_path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [c for c in OPENVE_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(
        f"{csv_path}: missing column(s) {missing}; found "
        f"{reader.fieldnames}; OpenVE-Bench needs {list(OPENVE_COLUMNS)}"
      )
    items = []
    for index, row in enumerate(reader):
      if row["edited_type"] in skipped_types:
        continue
      target = row.get("tgt_video") or None
      items.append(
        BenchmarkItem(
          index=index,
          output_name=openve_output_name(row["original_video"]),
          source_video=_join(data_root, row["original_video"]),
          instruction=row["prompt"],
          edit_type=row["edited_type"],
          target_video=_join(data_root, target) if target else None,
          raw=dict(row),
        )
      )
  return items


def read_refvie(
  yaml_path: str, data_root: str = "", prompt_only: bool = False
) -> list[BenchmarkItem]:
  """Reads the RefVIE-Bench YAML list.

  Args:
    yaml_path: path of `refvie_bench.yaml`.
    data_root: directory the item paths are relative to (the reference uses
      `./benchmark/RefVIE-Bench/`).
    prompt_only: drop the reference image (`--prompt_only` of the
      reference); the output names do not change.

  Returns:
    All items, in file order.

  Raises:
    ValueError: the file is not a list of mappings with the required keys.
  """
  with open(yaml_path, encoding="utf-8") as f:
    data = yaml.safe_load(f)
  if not isinstance(data, list):
    raise ValueError(
      f"{yaml_path}: expected a YAML list of items, got {type(data).__name__}"
    )
  items = []
  for index, entry in enumerate(data):
    if not isinstance(entry, Mapping):
      raise ValueError(
        f"{yaml_path}: item {index} is a "
        f"{type(entry).__name__}, expected a mapping"
      )
    missing = [k for k in REFVIE_KEYS if k not in entry]
    if missing:
      raise ValueError(
        f"{yaml_path}: item {index} lacks key(s) {missing}; "
        f"RefVIE-Bench items need {list(REFVIE_KEYS)}"
      )
    instruction = str(entry["instruction"])
    target = entry.get("tgt_video")
    items.append(
      BenchmarkItem(
        index=index,
        output_name=refvie_output_name(
          index, instruction, str(entry["src_video"])
        ),
        source_video=_join(data_root, str(entry["src_video"])),
        instruction=instruction,
        edit_type=str(entry["edit_type"]),
        reference_image=(
          None if prompt_only else _join(data_root, str(entry["ref_img"]))
        ),
        target_video=_join(data_root, str(target)) if target else None,
        raw=dict(entry),
      )
    )
  return items


def read_benchmark(
  bench: str,
  dataset_file: str,
  data_root: str = "",
  prompt_only: bool = False,
  openve_skipped: Sequence[str] = rubrics.OPENVE_SKIPPED_TYPES,
) -> list[BenchmarkItem]:
  """Reads `bench` ('openve' or 'refvie') from `dataset_file`.

  `openve_skipped` names the OpenVE categories left out (see
  `read_openve`).
  """
  if bench == "openve":
    if prompt_only:
      raise ValueError("prompt_only applies to refvie only")
    return read_openve(dataset_file, data_root, openve_skipped)
  if bench == "refvie":
    return read_refvie(dataset_file, data_root, prompt_only)
  raise ValueError(
    f"unknown benchmark {bench!r}; expected 'openve' or 'refvie'"
  )


def shard(
  items: list[BenchmarkItem], process_index: int, process_count: int
) -> list[BenchmarkItem]:
  """The items of one process: `index % process_count == process_index`.

  The split is by file row index, as `test_benchmark.py` does it, so the
  same process count gives the same split as the reference.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f"process_index={process_index} must be in "
      f"[0, process_count={process_count})"
    )
  return [it for it in items if it.index % process_count == process_index]
