"""Runs an editor over a benchmark: resumable, sharded, with progress.

The editor is any callable `edit_fn(item) -> frames` (see `EditFn`); the
model-backed one comes from `eval.load_editor`, tests pass fakes. Outputs go
to `<save_dir>/<item.output_name>` with the reference's names, plus the
side-by-side `concat_<output_name>` the reference also writes.

Resuming: every file is written under a temporary name and renamed when
complete, and the edited video is written last, so an existing output means
a finished item; a rerun skips those (the reference skips existing outputs
too). A run killed mid-write can leave a hidden `.<name>.*` temporary file
behind, never a truncated output.
"""

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import tqdm

from kiwi_jax.evaluators import benchmarks
from kiwi_jax.media import compare, pixels, video_io

# Returns uint8[T, H, W, 3] or float[T, H, W, 3] in [-1, 1] (a leading batch
# axis of 1 is allowed).
EditFn = Callable[[benchmarks.BenchmarkItem], Any]


@dataclasses.dataclass
class RunSummary:
  """What one process did: output names edited now and found done."""

  edited: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)


def side_by_side_name(output_name: str) -> str:
  return f"concat_{output_name}"


def run_benchmark(
  items: Sequence[benchmarks.BenchmarkItem],
  edit_fn: EditFn,
  save_dir: str,
  *,
  process_index: int = 0,
  process_count: int = 1,
  write_side_by_side: bool = True,
  fps: int = video_io.REFERENCE_FPS,
  show_progress: bool = True,
) -> RunSummary:
  """Edits this process's share of `items` and writes the videos.

  Args:
    items: benchmark items (`benchmarks.read_benchmark`).
    edit_fn: the editor; called once per unfinished item.
    save_dir: output directory (created if missing).
    process_index: this process's index, in [0, process_count).
    process_count: number of processes sharing the benchmark; item `i`
      goes to process `i % process_count`.
    write_side_by_side: also write `concat_<name>` ([source | edited]).
    fps: frame rate of the written videos (the reference uses 15).
    show_progress: show a progress bar.

  Returns:
    The summary of this process's work.
  """
  mine = benchmarks.shard(list(items), process_index, process_count)
  os.makedirs(save_dir, exist_ok=True)
  summary = RunSummary()
  progress = tqdm.tqdm(
    mine,
    desc=f"edit [{process_index + 1}/{process_count}]",
    unit="video",
    disable=not show_progress,
  )
  for item in progress:
    out_path = os.path.join(save_dir, item.output_name)
    if os.path.exists(out_path):
      summary.skipped.append(item.output_name)
      progress.set_postfix(
        edited=len(summary.edited), skipped=len(summary.skipped)
      )
      continue
    frames = pixels.as_uint8_frames(
      edit_fn(item),
      where=f"editor output for item {item.index} ({item.output_name})",
    )
    if write_side_by_side:
      source = video_io.read_video(item.source_video, max_frames=len(frames))
      video_io.write_video(
        os.path.join(save_dir, side_by_side_name(item.output_name)),
        compare.side_by_side_fitted(source, frames),
        fps=fps,
      )
    video_io.write_video(out_path, frames, fps=fps)
    summary.edited.append(item.output_name)
    progress.set_postfix(
      edited=len(summary.edited), skipped=len(summary.skipped)
    )
  logging.info(
    "process %d/%d: %d edited, %d already done, in %s",
    process_index,
    process_count,
    len(summary.edited),
    len(summary.skipped),
    save_dir,
  )
  return summary
