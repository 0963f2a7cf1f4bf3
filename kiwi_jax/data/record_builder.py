"""Checks metadata rows and turns them into ArrayRecord shards.

Every row is checked before it is written: files exist, videos decode and
hold enough frames, images decode, the prompt is not empty, and source and
target agree in size (the reference retries such samples at random, reference §6.3;
here they are reported instead). A `ProblemReport` counts each kind of
problem; the policy either skips bad rows or fails the build, in which case
no shard is left behind. A key seen twice (the parquet `iid`, the CSV `iid`
column) is a problem too: the later rows are reported and not written.

`build_array_records` owns its output folder (`build_folder`): a complete
build replaces the previous one whole, an unfinished one leaves it untouched,
and the report's `status` says which ("complete", "failed", "interrupted").

Records hold the encoded media bytes plus metadata (see `check_row`), never
decoded frames: a 720p x 81 clip is ~1-10 MB encoded but 224 MB decoded.
"""

import collections
import concurrent.futures
import dataclasses
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from etils import epath

from kiwi_jax.data import build_folder, records
from kiwi_jax.data.metadata import Row
from kiwi_jax.media import transforms, video_io

Policy = Literal["skip", "fail"]

PROBLEM_KINDS = (
  "missing_file",
  "unreadable_video",
  "too_few_frames",
  "unreadable_image",
  "empty_prompt",
  "size_mismatch",
)
DUPLICATE_KEY = "duplicate_key"
_MAX_EXAMPLES_PER_KIND = 20


@dataclasses.dataclass(frozen=True)
class CheckOptions:
  """What a row must satisfy.

  Attributes:
    min_frames: fewest decodable frames a video must have (5 = one 4k+1
      clip longer than a single frame).
    max_frames: frames decoded per video during the check; training reads
      only the first frames (reference §6.3), so later ones need not be proven.
    require_same_size: source and target must agree in height, width and
      clip length (first 4k+1 frames up to `max_frames`).
  """

  min_frames: int = 5
  max_frames: int = 81
  require_same_size: bool = True


@dataclasses.dataclass(frozen=True)
class Problem:
  kind: str
  origin: str
  detail: str


@dataclasses.dataclass
class ProblemReport:
  """Counts of each problem kind, with the first few occurrences.

  Attributes:
    rows_seen: rows read so far.
    rows_written: rows that passed every check (written once the build is
      complete; an unfinished build writes none).
    duplicate_keys: rows whose key an earlier row already had (not written;
      examples under "duplicate_key").
    status: "running", then "complete", "failed" (the "fail" policy fired)
      or "interrupted" (stopped before the end; `error` says why).
  """

  rows_seen: int = 0
  rows_written: int = 0
  duplicate_keys: int = 0
  status: str = "running"
  error: str = ""
  counts: dict[str, int] = dataclasses.field(
    default_factory=lambda: {k: 0 for k in PROBLEM_KINDS}
  )
  examples: dict[str, list[str]] = dataclasses.field(
    default_factory=lambda: collections.defaultdict(list)
  )

  @property
  def rows_with_problems(self) -> int:
    return self.rows_seen - self.rows_written

  def add(self, problem: Problem) -> None:
    if problem.kind == DUPLICATE_KEY:
      self.duplicate_keys += 1
    else:
      self.counts[problem.kind] += 1
    if len(self.examples[problem.kind]) < _MAX_EXAMPLES_PER_KIND:
      self.examples[problem.kind].append(f"{problem.origin}: {problem.detail}")

  def to_dict(self) -> dict[str, Any]:
    complete = self.status == "complete"
    return {
      "status": self.status,
      **({"error": self.error} if self.error else {}),
      "rows_seen": self.rows_seen,
      "rows_passed": self.rows_written,
      "rows_written": self.rows_written if complete else 0,
      "rows_with_problems": self.rows_with_problems,
      "duplicate_keys": self.duplicate_keys,
      "counts": dict(self.counts),
      "examples": dict(self.examples),
    }

  def summary(self) -> str:
    counts = (
      f"{self.rows_seen} rows checked, {self.rows_written} written, "
      f"{self.rows_with_problems} with problems"
    )
    if self.status == "failed":
      counts = (
        f"{self.rows_seen} rows checked, {self.rows_written} "
        f"passed, {self.rows_with_problems} with problems; "
        "no shard written"
      )
    elif self.status == "interrupted":
      counts = (
        f"interrupted after {self.rows_seen} rows checked "
        f"({self.rows_written} passed, {self.rows_with_problems} "
        "with problems); no shard written"
        + (f" ({self.error})" if self.error else "")
      )
    lines = [counts]
    kinds = [(k, self.counts[k]) for k in PROBLEM_KINDS]
    for kind, count in kinds + [(DUPLICATE_KEY, self.duplicate_keys)]:
      if count:
        lines.append(f"  {kind}: {count}")
        lines.extend(f"    {e}" for e in self.examples[kind][:3])
    return "\n".join(lines)


def _reason(error: Exception) -> str:
  """The error's message without the in-memory buffer Pillow or PyAV name
  (``<_io.BytesIO object at 0x...>``), which tells the user nothing."""
  return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(error))


class RecordBuildError(RuntimeError):
  """Raised under the "fail" policy; `report` counts every problem."""

  def __init__(self, report: ProblemReport):
    super().__init__("record build failed:\n" + report.summary())
    self.report = report


def _read(
  base_dir: epath.Path,
  relative: str,
  what: str,
  row: Row,
  problems: list[Problem],
) -> bytes | None:
  path = base_dir / relative if relative else None
  if path is None or not path.exists():
    problems.append(Problem("missing_file", row.origin, f"{what} {path}"))
    return None
  return path.read_bytes()


def _check_media(data, path, what, row, options, problems):
  """Returns (kind, frames, height, width) or None; appends problems."""
  kind = video_io.media_kind(path)
  try:
    if kind == "image":
      image = video_io.decode_image(data)
      return kind, 1, image.shape[0], image.shape[1]
    first = video_io.decode_video(data, max_frames=1)
    count = video_io.count_video_frames(data, options.max_frames)
  except video_io.MediaError as e:
    problem = "unreadable_image" if kind == "image" else "unreadable_video"
    problems.append(
      Problem(problem, row.origin, f"{what} {path}: {_reason(e)}")
    )
    return None
  if count < options.min_frames:
    problems.append(
      Problem(
        "too_few_frames",
        row.origin,
        f"{what} {path}: {count} frames < min_frames {options.min_frames}",
      )
    )
    return None
  return kind, count, first.shape[1], first.shape[2]


def check_row(
  row: Row, base_dir: str | epath.Path, options: CheckOptions
) -> tuple[dict[str, Any] | None, list[Problem]]:
  """Checks one row; returns (record fields, []) or (None, problems).

  The record fields: key, origin, prompt, src/tgt (encoded bytes), src_kind/
  tgt_kind ("image" | "video"), ref_image (bytes, b"" when absent), has_ref,
  num_frames (decodable frames shared by source and target, capped at
  `options.max_frames`), height, width (of the source).
  """
  base_dir = epath.Path(base_dir)
  problems: list[Problem] = []
  if not row.prompt:
    problems.append(Problem("empty_prompt", row.origin, "prompt is empty"))
  media = {}
  for what, relative in (
    ("src_video", row.src_video),
    ("tgt_video", row.tgt_video),
  ):
    try:
      video_io.media_kind(relative)
    except video_io.MediaError as e:
      problems.append(
        Problem("unreadable_video", row.origin, f"{what}: {_reason(e)}")
      )
      continue
    data = _read(base_dir, relative, what, row, problems)
    if data is not None:
      info = _check_media(data, relative, what, row, options, problems)
      if info is not None:
        media[what] = (data, *info)
  ref = b""
  if row.ref_image_bytes is not None:
    ref = row.ref_image_bytes
  elif row.ref_image is not None:
    ref = _read(base_dir, row.ref_image, "ref_image", row, problems) or b""
  if ref:
    try:
      video_io.decode_image(ref)
    except video_io.MediaError as e:
      where = (
        f"ref_image_bytes of row {row.key} ({len(ref)} bytes)"
        if row.ref_image_bytes is not None
        else f"ref_image {row.ref_image}"
      )
      problems.append(
        Problem("unreadable_image", row.origin, f"{where}: {_reason(e)}")
      )
  elif row.ref_image_bytes is not None:
    problems.append(
      Problem("unreadable_image", row.origin, "ref_image_bytes is empty")
    )
  if len(media) == 2 and options.require_same_size:
    (_, _, src_t, src_h, src_w), (_, _, tgt_t, tgt_h, tgt_w) = (
      media["src_video"],
      media["tgt_video"],
    )
    # The reference loads the first 4k+1 frames of each and retries the
    # sample when frame counts or sizes differ (reference §6.3).
    src_t = transforms.clip_length(src_t, options.max_frames)
    tgt_t = transforms.clip_length(tgt_t, options.max_frames)
    if (src_t, src_h, src_w) != (tgt_t, tgt_h, tgt_w):
      problems.append(
        Problem(
          "size_mismatch",
          row.origin,
          f"source {src_t}x{src_h}x{src_w} vs target {tgt_t}x{tgt_h}x{tgt_w}"
          " (frames x height x width)",
        )
      )
  if problems:
    return None, problems
  src, src_kind, src_frames, height, width = media["src_video"]
  tgt, tgt_kind, tgt_frames, _, _ = media["tgt_video"]
  return {
    "key": row.key,
    "origin": row.origin,
    "prompt": row.prompt,
    "src": src,
    "src_kind": src_kind,
    "tgt": tgt,
    "tgt_kind": tgt_kind,
    "ref_image": ref,
    "has_ref": row.has_ref,
    "num_frames": min(src_frames, tgt_frames),
    "height": height,
    "width": width,
  }, []


def checked_records(
  rows: Iterable[Row],
  base_dir: str | epath.Path,
  report: ProblemReport,
  *,
  options: CheckOptions = CheckOptions(),
  policy: Policy = "skip",
  num_workers: int = 1,
) -> Iterator[dict[str, Any]]:
  """Yields the record fields of good rows in input order, filling `report`.

  Under the "fail" policy every row is still checked (so the report is
  complete) and `RecordBuildError` is raised at the end if any failed. A
  row whose key an earlier row had is reported ("duplicate_key") and not
  checked.
  """
  if policy not in ("skip", "fail"):
    raise ValueError(f"policy must be 'skip' or 'fail', got {policy!r}")
  check = lambda row: check_row(row, base_dir, options)
  num_workers = max(1, num_workers)
  rows = iter(rows)
  first_seen: dict[str, str] = {}
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    # PyAV and Pillow release the GIL while decoding, so threads overlap.
    # Rows go in bounded chunks: results hold encoded media in memory.
    while chunk := list(itertools.islice(rows, 4 * num_workers)):
      fresh = []
      for row in chunk:
        if row.key in first_seen:
          report.rows_seen += 1
          report.add(
            Problem(
              DUPLICATE_KEY,
              row.origin,
              f"key {row.key} already used by {first_seen[row.key]}",
            )
          )
        else:
          first_seen[row.key] = row.origin
          fresh.append(row)
      for fields, problems in pool.map(check, fresh):
        report.rows_seen += 1
        for problem in problems:
          report.add(problem)
        if fields is not None:
          report.rows_written += 1
          yield fields
  if policy == "fail" and report.rows_with_problems:
    report.status = "failed"
    raise RecordBuildError(report)


def build_array_records(
  rows: Iterable[Row],
  base_dir: str | epath.Path,
  out_dir: str | epath.Path,
  *,
  options: CheckOptions = CheckOptions(),
  policy: Policy = "skip",
  num_shards: int = 1,
  prefix: str = "refvie",
  num_workers: int = 1,
) -> ProblemReport:
  """Checks rows and writes the good ones as ArrayRecord shards.

  `out_dir` holds one build (`build_folder`): a complete build replaces
  the previous one whole, with its report as `<out_dir>/<prefix>.report.json`.
  A build that does not finish (the "fail" policy fired, an interrupt, an
  error) writes no shard, leaves a previous build untouched, writes its
  report (status "failed" or "interrupted") and re-raises.

  Raises:
    build_folder.OutputFolderError: `out_dir` holds files that are not a
      record build (checked before any row is read).
    RecordBuildError: under "fail" with any problem.
  """
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  out_dir = build_folder.resolve(out_dir)
  build_folder.check_output_folder(out_dir)
  build_folder.remove_leftovers(out_dir)
  report = ProblemReport()
  serialized = (
    records.serialize(fields)
    for fields in checked_records(
      rows,
      base_dir,
      report,
      options=options,
      policy=policy,
      num_workers=num_workers,
    )
  )
  try:
    with build_folder.staging(out_dir) as stage:
      records.write_shards(
        serialized, stage, prefix=prefix, num_shards=num_shards
      )
      report.status = "complete"
      (stage / f"{prefix}{build_folder.REPORT_SUFFIX}").write_text(
        json.dumps(report.to_dict(), indent=2)
      )
  except BaseException as e:
    if report.status != "failed":
      report.status = "interrupted"
      report.error = (
        type(e).__name__
        if isinstance(e, KeyboardInterrupt)
        else f"{type(e).__name__}: {e}"
      )
    build_folder.write_unfinished_report(
      out_dir, prefix, json.dumps(report.to_dict(), indent=2)
    )
    raise
  return report
